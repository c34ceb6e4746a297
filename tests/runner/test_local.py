"""The local runner: argv lists, captured output, timeouts that leave no process behind."""

from __future__ import annotations

import os
import sys
import time

import pytest

from haqa.errors import UserError
from haqa.runner import LocalRunner
from tests.support.logs import line_logged_while_running


def test_stdout_captured_stderr_streamed_and_logged(tmp_path):
    log = tmp_path / "cmd.log"
    lines: list[str] = []
    r = LocalRunner(tmp_path).run(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
        log_path=log, on_line=lines.append,
    )
    assert r.returncode == 3 and not r.ok
    assert r.stdout == "out\n"
    assert r.stderr_tail == "err"
    assert "out" in log.read_text() and "err" in log.read_text()
    assert sorted(lines) == ["err", "out"]


def test_the_log_shows_each_line_while_the_command_runs(tmp_path):
    assert line_logged_while_running(LocalRunner(tmp_path), tmp_path)


def test_arguments_are_never_interpreted_by_a_shell(tmp_path):
    evil = "$(touch pwned); `touch pwned2` ; rm -rf /"
    r = LocalRunner(tmp_path).run([sys.executable, "-c", "import sys; print(sys.argv[1])", evil], cwd=tmp_path)
    assert r.stdout.strip() == evil
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    )
    start = time.monotonic()
    r = LocalRunner(tmp_path).run([sys.executable, "-c", script], timeout=2)
    assert r.timed_out and not r.ok and r.returncode is None
    assert time.monotonic() - start < 30
    child = int(pidfile.read_text())
    for _ in range(50):  # the grandchild must be gone too
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"grandchild {child} survived the timeout")


def test_missing_program_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not installed or not on PATH"):
        LocalRunner(tmp_path).run(["haqa-no-such-program-xyz"])


def test_the_local_device_is_this_machine(tmp_path):
    """Capabilities, not the runner's name: the files, processors and Python of this machine."""
    r = LocalRunner(tmp_path)
    assert r.shares_filesystem and r.shares_cpu and r.known_python == sys.executable
    model = tmp_path / "models" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    assert r.fetch(model) == model  # the device file itself, not a copy
