"""The SSH runner against a real OpenSSH server on 127.0.0.1 (tests/support/sshd.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest

from haqa.config.schema import Connect
from haqa.errors import UserError
from haqa.runner.ssh import SshRunner, command_line
from tests.support.logs import line_logged_while_running
from tests.support.sshd import connect_for


@pytest.fixture
def runner(sshd, device_home):
    r = SshRunner(connect_for(sshd, device_home), label="loopback-test")
    yield r
    r.close()


def _alive(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [p for p in out.split() if int(p) != os.getpid()]


def test_run_returns_exit_code_stdout_and_stderr(runner, tmp_path):
    log = tmp_path / "remote.log"
    r = runner.run([sys.executable, "-c", "import sys; print('to out'); print('to err', file=sys.stderr); sys.exit(4)"],
                   log_path=log)
    assert r.returncode == 4 and r.stdout == "to out\n" and r.stderr_tail == "to err"
    assert "to out" in log.read_text() and "HAQA-PGID" not in log.read_text()


def test_the_log_shows_each_line_while_the_command_runs(runner, tmp_path):
    """A remote build's log grows as it compiles (it was written in 8 KiB blocks: minutes of nothing)."""
    assert line_logged_while_running(runner, tmp_path)


def test_arguments_reach_the_program_unchanged(runner, tmp_path):
    evil = ["$(touch pwned)", "`touch pwned2`", "a b; rm -rf /", "it's", '"quoted"', "*", "\\n", ""]
    r = runner.run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *evil], cwd=tmp_path)
    import json

    assert json.loads(r.stdout) == evil
    assert not list(tmp_path.glob("pwned*"))


def test_cwd_and_env(runner, tmp_path):
    r = runner.run([sys.executable, "-c", "import os; print(os.getcwd()); print(os.environ['HAQA_TEST'])"],
                   cwd=tmp_path, env={"HAQA_TEST": "x y $HOME"})
    assert r.stdout.splitlines() == [str(tmp_path), "x y $HOME"]


def test_command_line_quotes_every_element():
    line = command_line(["llama-bench", "-m", "/m/a b.gguf", "$(reboot)"], cwd=PurePosixPath("/w d"))
    assert line.startswith("cd '/w d' && exec sh -c ")
    assert "'/m/a b.gguf'" in line and "'$(reboot)'" in line
    with pytest.raises(ValueError):
        command_line(["x"], env={"A;B": "1"})


def test_hanging_command_times_out_and_leaves_no_process(runner):
    marker = "sleep 371.5"
    start = time.monotonic()
    r = runner.run(["sh", "-c", f"{marker} & {marker}; wait"], timeout=2)
    assert r.timed_out and r.returncode is None and not r.ok
    assert time.monotonic() - start < 20
    for _ in range(50):
        if not _alive(marker):
            break
        time.sleep(0.2)
    assert not _alive(marker), "the remote process group survived the timeout"


def test_ctrl_c_stops_the_remote_process_group(runner):
    marker = "sleep 372.5"

    def interrupt(line: str) -> None:
        if line == "started":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run(["sh", "-c", f"{marker} & echo started; wait"], on_line=interrupt, timeout=60)
    for _ in range(50):
        if not _alive(marker):
            break
        time.sleep(0.2)
    assert not _alive(marker)


def test_changed_host_key_is_refused(sshd, device_home, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, data = (tmp_path / "other_key.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {data}\n")
    for tofu in (False, True):  # trust on first use never covers a changed key
        r = SshRunner(connect_for(sshd, device_home, known_hosts=str(known), trust_on_first_use=tofu))
        with pytest.raises(UserError, match="CHANGED") as e:
            r.run(["true"])
        assert "ssh-keygen" in str(e.value)


def test_unknown_host_is_refused_unless_trust_on_first_use(sshd, device_home, tmp_path):
    known = tmp_path / "known_hosts"
    with pytest.raises(UserError, match="not in .*known_hosts"):
        SshRunner(connect_for(sshd, device_home, known_hosts=str(known))).run(["true"])
    r = SshRunner(connect_for(sshd, device_home, known_hosts=str(known), trust_on_first_use=True))
    assert r.run(["true"]).ok
    r.close()
    assert f"[127.0.0.1]:{sshd.port}" in known.read_text()
    r = SshRunner(connect_for(sshd, device_home, known_hosts=str(known)))  # now known: no TOFU needed
    assert r.run(["true"]).ok
    r.close()


def _random_file(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return path


def test_folders_haqa_makes_on_the_device_are_private(sshd, tmp_path):
    """The work directory and what haqa creates in it are the owner's alone (0700), whatever the umask."""
    home = tmp_path / "fresh" / "haqa-home"
    r = SshRunner(connect_for(sshd, home), label="loopback-test")
    try:
        r.mkdir(r.dir("models", "src"))
        r.write_text(r.dir("toolchains", "k", "toolchain.json"), "{}")
    finally:
        r.close()
    for d in (tmp_path / "fresh", home, home / "models", home / "models" / "src", home / "toolchains" / "k"):
        assert oct(d.stat().st_mode & 0o777) == oct(0o700), d


def test_an_encrypted_key_works_and_its_passphrase_is_written_nowhere(sshd, tmp_path, monkeypatch, capfd):
    """HAQA_SSH_KEY_PASSPHRASE unlocks an encrypted key; neither it nor a wrong one shows up in an error,
    the output, the device's logs and files on this machine, or the files on the device."""
    canary = "canary-passphrase-7f3a9c"
    key = tmp_path / "encrypted_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", canary, "-C", "haqa-enc", "-f", str(key)], check=True)
    authorized = sshd.dir / "authorized_keys"
    before = authorized.read_text()
    authorized.write_text(before + (tmp_path / "encrypted_key.pub").read_text())
    home, local = tmp_path / "device-home", tmp_path / "local"
    try:
        monkeypatch.setenv("HAQA_SSH_KEY_PASSPHRASE", canary)
        r = SshRunner(connect_for(sshd, home, key=str(key)), label="loopback-test", local_root=local)
        try:
            out = r.run([sys.executable, "-c", "print('unlocked')"], log_path=r.local_dir("logs") / "cmd.log")
            r.write_text(r.dir("results", "x.json"), "{}")
        finally:
            r.close()
        assert out.stdout == "unlocked\n"
        monkeypatch.setenv("HAQA_SSH_KEY_PASSPHRASE", "wrong-" + canary)
        with pytest.raises(UserError) as err:
            SshRunner(connect_for(sshd, home, key=str(key), reconnects=0), label="loopback-test",
                      local_root=local).run(["true"])
        assert canary not in str(err.value) + (err.value.hint or "")
    finally:
        authorized.write_text(before)
    captured = capfd.readouterr()
    assert canary not in captured.out + captured.err
    for f in [p for root in (home, local) for p in root.rglob("*") if p.is_file()]:
        assert canary.encode() not in f.read_bytes(), f


def test_upload_is_verified_and_not_repeated(runner, tmp_path):
    src = _random_file(tmp_path / "blob.bin", 4)
    remote = runner.dir("models", "test", "blob.bin")
    assert runner.put(src, remote) is True
    sent = runner.transfer.bytes_sent
    assert sent == src.stat().st_size
    assert runner.sha256(remote) == hashlib.sha256(src.read_bytes()).hexdigest()
    assert runner.put(src, remote) is False  # same hash already there: nothing sent
    assert runner.transfer.bytes_sent == sent
    back = tmp_path / "back.bin"
    runner.get(remote, back)
    assert back.read_bytes() == src.read_bytes()


def test_upload_cut_mid_transfer_resumes_and_verifies(sshd, runner, tmp_path):
    src = _random_file(tmp_path / "big.bin", 24)
    size = src.stat().st_size
    remote = runner.dir("models", "test", "big.bin")
    cut = []

    def hook(done: int) -> None:
        if not cut and done > 0.4 * size:
            cut.append(done)
            sshd.cut_connections()

    runner.transfer.on_chunk = hook
    assert runner.put(src, remote) is True
    assert cut, "the connection was never cut"
    assert runner.transfer.bytes_sent < 1.25 * size, (
        f"sent {runner.transfer.bytes_sent} bytes for {size}: it restarted instead of resuming")
    assert runner.sha256(remote) == hashlib.sha256(src.read_bytes()).hexdigest()
    assert not runner.exists(PurePosixPath(f"{remote}.part"))


def test_unreachable_device_gives_up_after_bounded_retries(device_home):
    r = SshRunner(Connect(kind="ssh", host="127.0.0.1", port=1, reconnects=1, connect_timeout_s=2,
                          workdir=str(device_home)))
    start = time.monotonic()
    with pytest.raises(UserError, match=r"cannot reach .*\(after 2 attempts\)"):
        r.run(["true"])
    assert time.monotonic() - start < 30


def test_jump_host(sshd, device_home):
    """Through a jump host (the same sshd, forwarding to itself), as `ssh -J` would."""
    r = SshRunner(connect_for(sshd, device_home, jump=f"{sshd.user}@127.0.0.1:{sshd.port}"))
    try:
        assert r.run(["echo", "via jump"]).stdout == "via jump\n"
        assert r.connection.jump is not None
    finally:
        r.close()


def test_dropped_connection_between_commands_reconnects(sshd, runner):
    assert runner.run(["true"]).ok
    sshd.cut_connections()  # the client has not noticed yet when the next command starts
    assert runner.run(["echo", "back"]).stdout == "back\n"


def test_an_ssh_device_shares_nothing_with_this_machine_and_fetch_copies(runner):
    """Even on the loopback device: an SSH runner uploads, fetches copies and asks for its Python."""
    assert not runner.shares_filesystem and not runner.shares_cpu and runner.known_python is None
    remote = runner.dir("results", "fetched.txt")
    runner.write_text(remote, "from the device\n")
    local = runner.fetch(remote)
    assert local != Path(remote) and local.is_relative_to(runner.local_dir())
    assert local.read_text() == "from the device\n"


# -- the reconnect policy (no sshd: the rule itself) -----------------------------------------------


def test_reconnect_policy_attempts_and_backoff():
    from haqa.runner.ssh.reconnect import ReconnectPolicy

    policy = ReconnectPolicy.of(3)
    assert policy.attempts == 4 and policy.idle_restarts == 1
    assert [policy.backoff_s(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]


def test_what_counts_as_a_dropped_connection():
    import errno

    import paramiko

    from haqa.errors import ConnectionLost
    from haqa.runner.ssh.reconnect import Dropped, is_drop

    assert is_drop(Dropped("cut"), connected=True)
    for e in (EOFError(), paramiko.SSHException("gone"), ConnectionResetError(), TimeoutError()):
        assert is_drop(e, connected=True), e
    # the device answered: the operation's own error, even if it looks like one of the connection
    for e in (FileNotFoundError(), PermissionError(), OSError(errno.ENOSPC, "No space left on device"),
              OSError(2, "x")):
        assert not is_drop(e, connected=True), e
    assert is_drop(OSError(errno.ENOSPC, "x"), connected=False)  # no connection left to have answered
    for e in (UserError("bad key"), ConnectionLost("gone for good"), ValueError("a bug")):
        assert not is_drop(e, connected=False), e


def test_reconnect_policy_tries_again_only_after_a_drop_and_gives_up_after_its_attempts():
    from haqa.runner.ssh.reconnect import ReconnectPolicy

    policy = ReconnectPolicy.of(2)
    calls, retries = [], []

    def flaky(errors):
        def fn():
            calls.append(1)
            if errors:
                raise errors.pop(0)
            return "done"
        return fn

    def run(fn, **kw):
        return policy.run(fn, connected=lambda: True, retry=lambda e, n: retries.append(n),
                          give_up=lambda e: UserError(f"gave up after {e!r}"), **kw)

    assert run(flaky([EOFError(), EOFError()])) == "done" and len(calls) == 3 and retries == [0, 1]
    calls.clear(), retries.clear()
    with pytest.raises(UserError, match="gave up after EOFError"):
        run(flaky([EOFError()] * 5))
    assert len(calls) == 3 and retries == [0, 1]
    calls.clear()
    with pytest.raises(FileNotFoundError):  # not a drop: raised at once
        run(flaky([FileNotFoundError()]))
    assert len(calls) == 1
    with pytest.raises(UserError, match="gave up"):  # another count for one call (idle restarts)
        run(flaky([EOFError()] * 5), attempts=1)

    def interrupted():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise EOFError("paramiko failing while it cleans up") from None

    with pytest.raises(KeyboardInterrupt):  # a Ctrl-C behind a drop-like error is the Ctrl-C
        run(interrupted)


def test_orphaned_process_groups_are_remembered_across_runs_until_stopped(tmp_path):
    """The file that carries a cut-off command's process group to the next connection (of this run or
    the next): written when a group is added, read by a new runner, removed once none is left."""
    from haqa.runner.ssh.process import Orphans

    path = tmp_path / "device" / "stale-process-groups.json"
    first = Orphans(path)
    assert first.groups == [] and not path.exists()
    first.add(4242, None, 4243, 4242)  # None: a command cut off before its wrapper named its group
    assert Orphans(path).groups == [4242, 4243]
    first.discard([4242])
    assert Orphans(path).groups == [4243]
    first.discard([4243])
    assert not path.exists()
    path.write_text("not json")
    assert Orphans(path).groups == []
