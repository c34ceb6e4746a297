"""Detached processes on a device (haqa/runner/detached.py), on this machine through the local runner:
started in a session of their own, seen running, stopped only while their command line names their
folder (a pid file naming another process leaves that process alone)."""

from __future__ import annotations

import os
import time

from haqa.runner import LocalRunner, detached


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False


def test_a_detached_process_outlives_its_command_and_is_stopped(tmp_path):
    runner, folder = LocalRunner(tmp_path / "home"), tmp_path / "app"
    folder.mkdir()
    pidfile, log = folder / "p.pid", folder / "p.log"
    started = detached.start(runner, folder, pidfile, log, ["sh", "-c", "echo up; sleep 60", f"{folder}/marker"])
    assert started.ok, started.stderr_tail
    pid = int(pidfile.read_text())
    time.sleep(0.3)
    assert detached.running(runner, pidfile) and _alive(pid)
    assert os.getsid(pid) == pid  # a session of its own: the runner's clean-up of its command cannot reach it
    assert "up" in log.read_text()
    assert "stopped" in detached.stop(runner, pidfile, folder).stdout
    time.sleep(0.2)
    assert not _alive(pid) and not pidfile.exists() and not detached.running(runner, pidfile)


def test_a_pid_file_naming_another_process_does_not_get_it_signalled(tmp_path):
    runner, folder = LocalRunner(tmp_path / "home"), tmp_path / "app"
    folder.mkdir()
    pidfile = folder / "p.pid"
    pidfile.write_text(str(os.getpid()))  # this test's own process: its command line does not name the folder
    assert detached.running(runner, pidfile)
    assert "stopped" not in detached.stop(runner, pidfile, folder).stdout
    assert _alive(os.getpid()) and not pidfile.exists()
