"""Fixtures of the `haqa ship` tests: the loopback device (this machine behind the session's real
OpenSSH server, with a work folder of the test's own) and a server left running there stopped afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bundles import LABEL
from tests.support.ship import stop_process


@pytest.fixture
def device(project, sshd, tmp_path, monkeypatch, request) -> Path:
    """targets/loop.toml: this machine through the test sshd, with a work folder of its own. Returns
    the folder the bundle is installed in there; a server left running there is stopped afterwards."""
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "haqa-home"))
    workdir = tmp_path / "device"
    project.write("targets/loop.toml", sshd.target_toml("loop", workdir))
    install = workdir / "bundles" / LABEL

    def stop_server() -> None:
        pidfile = install / "server.pid"
        if pidfile.exists():
            stop_process(int(pidfile.read_text()))

    request.addfinalizer(stop_server)
    return install
