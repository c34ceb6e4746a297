"""A deploy survives dropped connections and an sshd restart, and records a connection lost for good."""

from __future__ import annotations

import json

import pytest

from tests.support.faults import (
    Watcher,
    assert_store_consistent,
    device_procs,
    group_alive,
    part_at_least,
    procs,
    stop_group,
    trial_bench,
)


@pytest.mark.slow
def test_deploy_survives_drops_and_an_sshd_restart_and_records_a_connection_lost_for_good(project, dev, device_home,
                                                                                         toolchain):
    """One deploy meets: a cut during the model's upload (resumed), sshd restarting while the drift
    anchor runs (reconnected, run again), a cut while a trial's llama-bench is frozen (the orphan is
    stopped on reconnecting, the bench run again, the trial completes), then sshd going away for good
    during the next trial (recorded failed with cause 'connection', exit 2). The next run stops the
    frozen orphan left by that, measures the lost trial again and finishes; no trial is in the store
    twice and none is lost."""
    recipe = project.recipe("drops", ["Q4_0"], trials=2)  # Q4_0 at the defaults, then with one knob changed
    target = project.target("faulty-drops", reconnects=3)
    src_dir = device_home / "models" / "src"
    project.forget_upload(device_home)
    events: dict[str, object] = {}

    def restart(_) -> None:
        dev.restart(down_s=2)

    def cut_frozen(match) -> None:
        pid, pgid, _ = match
        events["orphan"] = pgid
        stop_group(pgid)
        dev.cut_connections()

    def lose(match) -> None:
        pid, pgid, _ = match
        events["lost"] = pgid
        stop_group(pgid)
        dev.stop()

    run = project.start("deploy", "--target", target, "--recipe", recipe, "--out", str(project.root / "drops-bundle"),
                        "--agent", "heuristic")
    watcher = Watcher([
        ("cut-upload", part_at_least(src_dir, 0.3, lambda: project.synthetic_size()), lambda _: dev.cut_connections()),
        ("restart-anchor", lambda: next(iter(procs(f"{device_home}/toolchains/", "-p 0 -n 32", program="llama-bench")),
                                        None), restart),
        ("cut-bench", trial_bench(device_home, "/Q4_0-"), cut_frozen),
        ("lose", trial_bench(device_home, "/Q4_0-", when=lambda: len(project.store(recipe, target)) == 1), lose),
    ])
    watcher.start()
    try:
        code, err = run.wait()
    finally:
        if dev.proc.poll() is not None:
            dev.start()
    assert watcher.finish() == ["cut-upload", "restart-anchor", "cut-bench", "lose"], err
    assert code == 2, err
    assert "resuming the upload" in err, err
    assert "lost while running llama-bench" in err and "run it again from the start" in err, err
    assert "left by the dropped connection" in err, err
    assert not group_alive(events["orphan"]), "the llama-bench cut off by the drop was left running"
    assert "error: cannot reach faulty-drops" in err and "Q4_0: failed (connection)" in err, err
    rows = project.store(recipe, target)
    assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [
        ("Q4_0", "ok", None),
        ("Q4_0", "failed", "connection"),
    ]
    assert group_alive(events["lost"]), "expected the frozen llama-bench of the lost connection to be left behind"

    again = project.run("deploy", "--target", target, "--recipe", recipe, "--out", str(project.root / "drops-bundle"),
                        "--agent", "heuristic")
    assert again.returncode == 0, again.stderr
    assert "resuming: 1 trial(s)" in again.stderr
    assert "left by the dropped connection" in again.stderr  # remembered across runs
    assert not group_alive(events["lost"]), "the next run did not stop the orphan of the lost connection"
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"]) for r in rows] == [("Q4_0", "ok"), ("Q4_0", "discarded"), ("Q4_0", "ok")]
    assert rows[1]["cause"].startswith("connection:") and rows[2]["key"] == rows[1]["key"]
    lock = json.loads((project.root / "drops-bundle" / "haqa.lock.json").read_text())
    assert lock["selection"]["trials"] == 2
    assert not device_procs(dev, device_home, f"{device_home}/toolchains/", "/llama-bench ")
    assert not list((device_home / "models").rglob("*.part"))
