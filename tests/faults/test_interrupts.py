"""Ctrl-C at each stage of a deploy stops the device's processes; the next run resumes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.faults import (
    Watcher,
    assert_store_consistent,
    device_procs,
    part_at_least,
    procs,
    stop_group,
    trial_bench,
)


@pytest.mark.slow
def test_ctrl_c_at_each_stage_stops_the_device_and_the_next_run_resumes(project, dev, device_home, toolchain,
                                                                        tmp_path):
    """Ctrl-C during the model's upload, during llama-quantize and during a trial's llama-bench, each
    in its own run on a fresh work folder: every time haqa exits 130, nothing of it runs on the
    device, nothing half-made is in place and the store holds only finished trials; each next run
    resumes (the upload from where it stopped, the search from the store) and the last one finishes."""
    workdir = tmp_path / "device"
    (workdir / "toolchains").mkdir(parents=True)
    (workdir / "toolchains" / toolchain.key).symlink_to(Path(toolchain.root))  # the build is not under test here
    target = project.target("faulty-ctrlc", workdir=workdir)
    recipe = project.recipe("ctrlc", ["Q4_K_M"], trials=2)  # at the defaults, then with one knob changed
    src_dir, models = workdir / "models" / "src", workdir / "models"
    args = ("deploy", "--target", target, "--recipe", recipe, "--out", str(tmp_path / "bundle"), "--agent", "heuristic")

    def interrupted(steps) -> str:
        run = project.start(*args)
        for i, (name, cond, act) in enumerate(steps):
            steps[i] = (name, cond, (lambda a: (lambda v: (a(v), run.ctrl_c())))(act))
        watcher = Watcher(steps)
        watcher.start()
        code, err = run.wait()
        assert watcher.finish() == [s[0] for s in steps], err
        assert code == 130 and "interrupted" in err, err
        time.sleep(3)  # TERM, then KILL 2 s later
        left = device_procs(dev, workdir, str(workdir))
        assert not left, f"Ctrl-C left these running on the device: {left}"
        assert_store_consistent(project.store(recipe, target))
        return err

    # 1. during the upload: the partial upload stays for the next run; nothing is in place
    interrupted([("upload", part_at_least(src_dir, 0.2, lambda: project.synthetic_size()), lambda _: None)])
    assert list(src_dir.glob("*.gguf.part")) and not list(src_dir.glob("*.gguf"))

    # 2. during llama-quantize (frozen, so it cannot finish first): no candidate is left as if made
    err = interrupted([("quantize", lambda: next(iter(procs(str(workdir), program="llama-quantize")), None),
                        lambda m: stop_group(m[1]))])
    assert "resuming the upload" in err, err
    assert not [p for p in models.rglob("Q4_K_M-*.gguf")], "a half-quantized candidate was moved into place"

    # 3. during the second trial's llama-bench, once the first trial is in the store
    interrupted([("bench", trial_bench(workdir, "/Q4_K_M-", when=lambda: len(project.store(recipe, target)) == 1),
                  lambda m: stop_group(m[1]))])
    assert [(r["quant"], r["status"]) for r in project.store(recipe, target)] == [("Q4_K_M", "ok")]

    # 4. the next run resumes and finishes
    last = project.run(*args)
    assert last.returncode == 0, last.stderr
    assert "resuming: 1 trial(s)" in last.stderr and "1 new trial(s)" in last.stderr
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"]) for r in rows] == [("Q4_K_M", "ok"), ("Q4_K_M", "ok")]
    assert not list(models.rglob("*.part"))
