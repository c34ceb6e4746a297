"""Faults a tuning run on a real device must survive, each made real against the loopback OpenSSH
device (tests/support/sshd.py): connections cut while a file uploads, while llama.cpp builds and while
llama-bench runs; sshd restarting in the middle of a run; the connection lost for good; a full disk
(a small tmpfs as the device's work folder); a configuration that runs out of memory (a memory-limited
cgroup holding the device's sshd and everything it starts); a benchmark that hangs (a SIGSTOP'd
llama-bench); and Ctrl-C at each stage.

Every test runs real haqa commands (`python -m haqa ...` in a subprocess, or the Python API where a
constant must be made smaller) and checks the trial store (SQLite), the device's processes (over SSH)
and its files. The device is this machine behind its own sshd; it shares the session's device folder
(tests/conftest.py: device_home) with tests/runner/test_ssh_device.py, so the remote llama.cpp build made
(and interrupted) here is the one that module then finds in its cache. That build compiles for real
(CCACHE_RECACHE: whatever ccache holds) until its faults have landed; its resumed run takes the rest
from ccache (objects of this machine's own build), so a session compiles llama.cpp about once. The
model is synthetic (random weights in an 8-layer shape, 132 MiB as Q8_0): big enough that an upload
takes a while and that a repacked Q4_0 needs far more memory than a memory-mapped Q8_0, with no
quality measurement to wait for.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from haqa.config import load_target
from haqa.paths import cache_home
from haqa.runner.ssh import SshRunner
from haqa.toolchain import ensure_toolchain
from tests.support.faults import (
    FROZEN,
    SHAPE,
    FaultProject,
    SmallDisk,
)
from tests.support.homes import shared_home
from tests.support.sshd import SSHD, device_env, start_server


@pytest.fixture(scope="package")
def dev(tmp_path_factory):
    """An sshd of these tests' own: these tests cut, stop and restart it."""
    if not Path(SSHD).exists():
        if os.environ.get("CI"):
            pytest.fail("sshd is missing: .ci/run installs openssh-server before the tests")
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    directory = tmp_path_factory.mktemp("faults-sshd")
    server = start_server(directory, env=device_env(directory))
    yield server
    server.stop()


@pytest.fixture(scope="package")
def project(tmp_path_factory, dev, device_home) -> FaultProject:
    """targets/faulty.toml written by `haqa targets probe` (so the memory model knows this CPU's
    features), a haqa home that shares the llama.cpp source with the user's cache, and the shape."""
    root = tmp_path_factory.mktemp("faults-project")
    (root / "recipes").mkdir()
    (root / "shape.json").write_text(json.dumps(SHAPE))
    p = FaultProject(root, dev, device_home)
    shared_home(p.home, cache_home(), ("sources",))
    proc = p.run("targets", "probe", f"ssh://{dev.user}@127.0.0.1:{dev.port}", "--name", "faulty",
                 "--key", str(dev.client_key), "--known-hosts", str(dev.known_hosts), "--workdir", str(device_home))
    assert proc.returncode == 0, proc.stderr
    text = (root / "targets" / "faulty.toml").read_text()
    if not re.search(r"(?m)^reconnects = ", text):
        text = text.replace("[connect]\n", "[connect]\nreconnects = 3\nconnect_timeout_s = 5\n", 1)
    (root / "targets" / "faulty.toml").write_text(text)
    made = subprocess.run([sys.executable, "-c", "import sys; from haqa.model.synth import synthetic_q8_0; "
                           "from haqa.hashing import cached_sha256; "
                           "p = synthetic_q8_0(sys.argv[1]); print(cached_sha256(p))",
                           str(root / "shape.json")],
                          capture_output=True, text=True, env={**os.environ, "HAQA_HOME": str(p.home)})
    assert made.returncode == 0, made.stderr
    p.model_sha = made.stdout.split()[-1]
    return p


@pytest.fixture(scope="package")
def toolchain(project):
    """The device's llama.cpp build (made by the first test, with its faults; built here otherwise)."""
    os.environ["HAQA_HOME"], old = str(project.home), os.environ.get("HAQA_HOME")
    try:
        target = load_target(str(project.root / "targets" / "faulty.toml"))
        runner = SshRunner(target.connect, label="faulty")
        try:
            return ensure_toolchain(runner, target)
        finally:
            runner.close()
    finally:
        if old is None:
            os.environ.pop("HAQA_HOME")
        else:
            os.environ["HAQA_HOME"] = old


@pytest.fixture(autouse=True)
def _no_frozen_leftovers():
    yield
    while FROZEN:
        try:
            os.killpg(FROZEN.pop(), signal.SIGKILL)
        except ProcessLookupError:
            pass




@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def make(mib: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", mib))
        return disks[-1]

    yield make
    for d in disks:
        d.unmount()


