"""A benchmark that hangs is timed out, its process tree killed, and the search goes on."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.faults import (
    FROZEN,
    Watcher,
    assert_store_consistent,
    device_procs,
    group_alive,
    trial_bench,
)


@pytest.mark.slow
def test_hung_benchmark_times_out_its_process_tree_is_killed_and_the_search_goes_on(project, dev, device_home,
                                                                                    toolchain, monkeypatch, capfd):
    """A trial's llama-bench stops making progress (SIGSTOP: alive, holding its memory, never exiting).
    With the benchmark timeout made short, the timeout fires, haqa kills the process group on the
    device (the peak-RSS wrapper and llama-bench), records the trial as failed (timeout) and the search
    goes on to the next candidate."""
    from haqa import pipeline
    from haqa.measure import bench

    monkeypatch.setattr(bench, "BENCH_TIMEOUT_S", 30)  # the other candidate's runs must fit, on a busy machine too
    monkeypatch.setenv("HAQA_HOME", str(project.home))
    monkeypatch.chdir(project.root)
    recipe = project.recipe("hang", ["Q4_0", "Q8_0"], trials=2)
    target = project.target("faulty-hang")
    hung: dict[str, int] = {}

    def freeze(match) -> None:
        pid, pgid, _ = match
        hung.update(pid=pid, pgid=pgid)
        FROZEN.append(pgid)
        os.kill(pid, signal.SIGSTOP)  # llama-bench alone: its parent (the peak-RSS wrapper) waits on

    watcher = Watcher([("freeze", trial_bench(device_home, "/Q4_0-"), freeze)])
    watcher.start()
    start = time.monotonic()
    result = pipeline.deploy(target, recipe, project.root / "hang-bundle", agent="heuristic")
    assert watcher.finish() == ["freeze"]
    err = capfd.readouterr().err
    assert time.monotonic() - start < 600
    assert not group_alive(hung["pgid"]), "the hung benchmark's process group survived its timeout"
    assert not device_procs(dev, device_home, f"{device_home}/toolchains/", "/llama-bench ")
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [
        ("Q4_0", "failed", "timeout"),
        ("Q8_0", "ok", None),
    ]
    assert "Q4_0: failed (timeout)" in err
    assert result.winner.quant == "Q8_0"
