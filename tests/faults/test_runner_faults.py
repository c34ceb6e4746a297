"""The SSH runner alone against faults (fast): a command cut off by a drop, death by a signal, the
device gone for good, and Ctrl-C during an upload."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from haqa.errors import ConnectionLost
from haqa.runner.ssh import SshRunner
from tests.support.faults import (
    MIB,
    procs,
    wait_for,
)
from tests.support.sshd import connect_for, start_server


def test_command_cut_off_by_a_drop_is_stopped_on_the_device_and_run_again(dev, device_home, tmp_path):
    """A command is running when the connection drops: the runner reconnects, stops what the cut-off
    command left running (its process group, found by the wrapper's pid) and runs it again, once."""
    runner = SshRunner(connect_for(dev, device_home), label="faults-rerun")
    marker = tmp_path / "first-run"
    sleeper = "sleep 373.5"
    script = f'if [ -e {marker} ]; then echo again; exit 0; fi; touch {marker}; echo started; {sleeper}; echo finished'
    log = tmp_path / "cmd.log"

    def on_line(line: str) -> None:
        if line == "started":
            dev.cut_connections()

    try:
        r = runner.run(["sh", "-c", script], timeout=120, log_path=log, on_line=on_line)
        assert r.ok and r.stdout == "again\n", r
        assert not procs(sleeper, str(marker)), "the cut-off command's process group was left running"
        assert "the connection dropped" in log.read_text()
        assert not (runner._local_root / "stale-process-groups.json").exists()
    finally:
        runner.close()


def test_death_by_signal_is_reported_as_a_negative_code(dev, device_home):
    """sshd reports a death by signal as exit-signal, which paramiko drops; haqa's wrapper reports it, so
    an OOM kill (SIGKILL) over SSH reads -9, as it does on this machine."""
    runner = SshRunner(connect_for(dev, device_home), label="faults-signal")
    try:
        assert runner.run(["sh", "-c", "kill -KILL $$"]).returncode == -9
        assert runner.run(["sh", "-c", "exit 3"]).returncode == 3
    finally:
        runner.close()


def test_device_gone_for_good_raises_connection_lost_and_the_orphan_is_stopped_by_the_next_connection(
        tmp_path_factory, device_home, tmp_path):
    """sshd goes away while a command runs and does not come back within the reconnect budget:
    ConnectionLost (a clear error, exit 2 from the CLI). The command's process group is remembered on
    this machine, and the next runner for that device (a later haqa run) stops it on connecting."""
    server = start_server(tmp_path_factory.mktemp("gone-sshd"))
    local = tmp_path / "local"
    sleeper = "sleep 374.5"
    try:
        runner = SshRunner(connect_for(server, device_home, reconnects=1), label="faults-gone", local_root=local)

        def on_line(line: str) -> None:
            if line == "started":
                server.stop()

        with pytest.raises(ConnectionLost, match="cannot reach"):
            runner.run(["sh", "-c", f"echo started; {sleeper}"], timeout=120, on_line=on_line)
        runner.close()
        assert procs(sleeper), "expected the command to be orphaned while the device is unreachable"
        assert (local / "stale-process-groups.json").exists()
        server.start()
        later = SshRunner(connect_for(server, device_home), label="faults-gone", local_root=local)
        assert later.run(["true"]).ok
        later.close()
        wait_for("the orphan to be stopped", lambda: not procs(sleeper), timeout=20)
        assert not (local / "stale-process-groups.json").exists()
    finally:
        server.stop()
        for pid, _, _ in procs(sleeper):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_during_an_upload_stops_it_at_once_and_the_next_upload_resumes(dev, device_home, tmp_path):
    """A real SIGINT to this process while SFTP writes: it is taken between two blocks (a
    KeyboardInterrupt inside paramiko can cut an SFTP packet in half, and closing the file then waits
    for an answer that never comes: without the fix this hung 8 times in 12), the partial upload stays
    on the device, and the next upload sends only the rest."""
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(24 * MIB))
    remote = PurePosixPath(device_home) / "models" / "ctrl-c" / "blob.bin"
    runner = SshRunner(connect_for(dev, device_home), label="faults-upload-ctrl-c")

    started = threading.Event()

    def press() -> None:  # from another thread: the signal lands wherever the upload happens to be
        started.wait(60)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    def hook(done: int) -> None:
        if done > 6 * MIB:
            runner.transfer.on_chunk = None
            started.set()

    runner.transfer.on_chunk = hook
    threading.Thread(target=press, daemon=True).start()
    faulthandler.dump_traceback_later(120, exit=True)  # a regression hangs for ever: end it, with the stacks
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.put(src, remote)
        faulthandler.cancel_dump_traceback_later()
        part = Path(f"{remote}.part")
        assert part.exists() and part.stat().st_size < src.stat().st_size and not Path(remote).exists()
        sent = runner.transfer.bytes_sent
        assert runner.put(src, remote) is True
        assert runner.transfer.bytes_sent - sent <= src.stat().st_size - 6 * MIB, "the upload started over"
        assert Path(remote).read_bytes() == src.read_bytes()
    finally:
        faulthandler.cancel_dump_traceback_later()
        runner.close()
