"""A configuration that runs out of memory (a memory-limited cgroup) is recorded, and the memory
model skips what needs as much."""

from __future__ import annotations

import json
import os
import re

import pytest

from haqa.config import load_target
from haqa.runner.ssh import SshRunner
from tests.support.faults import (
    MIB,
    assert_store_consistent,
)
from tests.support.sshd import MemoryLimit, start_server


@pytest.mark.slow
def test_out_of_memory_is_recorded_and_the_memory_model_skips_what_needs_as_much(project, device_home, toolchain,
                                                                                   tmp_path_factory, monkeypatch):
    """The device's sshd, and so everything haqa starts there, runs in a cgroup limited to 48 MiB.
    A repacked Q4_0 (the memory model counts its weights twice, mapped and repacked: about 65 MiB of
    anonymous memory that a memory-mapped Q8_0 does not need; measured: 83 against 17 MiB for the
    whole cgroup) is killed by the kernel's OOM killer; the trial
    is recorded failed (oom); the memory model learns that its predicted peak does not fit, so Q4_K_M
    (predicted as high) is skipped without being run; Q8_0 (predicted lower) is measured and chosen.
    A second run learns the same from the store."""
    reason = MemoryLimit.unavailable()
    if reason:
        pytest.skip(reason)
    server = start_server(tmp_path_factory.mktemp("oom-sshd"))
    limit = None
    try:
        target = project.target("faulty-oom", server=server)
        recipe = project.recipe("oom", ["Q4_0", "Q4_K_M", "Q8_0"], trials=2)
        # The model and the Q4_0 candidate are put on the device before the limit (a small device would
        # get them from elsewhere): the limit is for running them. Their pages stay charged outside it.
        monkeypatch.setenv("HAQA_HOME", str(project.home))
        from types import SimpleNamespace

        from haqa.measure.quantize import quantize
        from haqa.model.synth import synthetic_q8_0
        from haqa.pipeline import prepare_device

        loaded = load_target(str(project.root / "targets" / f"{target}.toml"))
        runner = SshRunner(loaded.connect, label=target)
        try:
            model = SimpleNamespace(path=synthetic_q8_0(str(project.root / "shape.json")), sha256=project.model_sha)
            tc, device_source = prepare_device(runner, loaded, model, None)
            q4_0, _ = quantize(runner, tc, device_source, project.model_sha, "Q8_0", "Q4_0")
        finally:
            runner.close()
        for f in (device_source, q4_0):  # in the page cache, charged outside the limit: a limit below the
            with open(f, "rb") as fh:     # mapped file would have it read from disk again and again instead
                while fh.read(1 << 24):
                    pass
        limit = MemoryLimit(f"haqa-test-oom-{os.getpid()}", 48 * MIB)
        limit.add(server.proc.pid)

        out = project.root / "oom-bundle"
        proc = project.run("deploy", "--target", target, "--recipe", recipe, "--out", str(out), "--agent", "heuristic")
        assert proc.returncode == 0, proc.stderr
        assert limit.oom_kills() >= 1, "the kernel's OOM killer never fired"
        rows = project.store(recipe, target)
        assert_store_consistent(rows)
        assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [
            ("Q4_0", "failed", "oom"),
            ("Q8_0", "ok", None),
        ]
        assert "Q4_0: failed (oom)" in proc.stderr
        assert re.search(r"memory model: Q4_0 .* ran out of memory on the device just now", proc.stderr), proc.stderr
        assert re.search(r"memory model: skipping Q4_K_M .*which ran out of memory on the device",
                         proc.stderr), proc.stderr
        assert json.loads((out / "haqa.lock.json").read_text())["model"]["file_type"] == "Q8_0"

        again = project.run("deploy", "--target", target, "--recipe", recipe, "--out", str(out), "--agent", "heuristic")
        assert again.returncode == 0, again.stderr
        assert "ran out of memory on the device in an earlier run" in again.stderr
        assert len(project.store(recipe, target)) == 2
    finally:
        server.stop()
        if limit is not None:
            limit.remove()
