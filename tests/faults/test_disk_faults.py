"""A full disk on the device: during an upload, before sending a model too big for it, and while quantizing."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path, PurePosixPath

import pytest

from haqa.runner.base import DiskFull
from haqa.runner.ssh import SshRunner
from tests.support.faults import (
    MIB,
    Watcher,
    assert_store_consistent,
    procs,
    stop_group,
)
from tests.support.sshd import connect_for


def test_upload_to_a_disk_that_fills_up_stops_with_the_path_and_sizes_and_no_partial_file(dev, device_home,
                                                                                          small_disk, tmp_path):
    """Another program fills the device's disk while haqa uploads (the free-space check before the
    upload passed): SFTP's write fails, and haqa reports DiskFull with the device path, the free space
    and the size, and removes the partial upload, instead of taking it for a dropped connection."""
    disk = small_disk(48)
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(32 * MIB))
    runner = SshRunner(connect_for(dev, disk.path), label="small-disk")
    remote = PurePosixPath(disk.path) / "models" / "blob.bin"
    filled = []

    def hook(done: int) -> None:
        if not filled and done > 8 * MIB:
            filled.append(disk.fill())

    runner.transfer.on_chunk = hook
    try:
        with pytest.raises(DiskFull) as e:
            runner.put(src, remote)
    finally:
        runner.close()
    message = str(e.value)
    assert filled and f"{remote} needs about 32.0 MiB" in message and "MiB free there" in message, message
    assert "free space on the device" in message
    assert not (disk.path / "models" / "blob.bin.part").exists() and not (disk.path / "models" / "blob.bin").exists()


@pytest.mark.slow
def test_deploy_onto_a_disk_too_small_for_the_model_is_refused_before_sending(project, dev, toolchain, small_disk):
    """A 64 MiB device disk and a 132 MiB model: haqa refuses before sending a byte, naming the path
    and both sizes (exit 2, no traceback), and leaves nothing on the device."""
    disk = small_disk(64)
    (disk.path / "toolchains").mkdir()
    (disk.path / "toolchains" / toolchain.key).symlink_to(Path(toolchain.root))
    target = project.target("faulty-tiny-disk", workdir=disk.path)
    recipe = project.recipe("tiny-disk", ["Q8_0"], trials=1)
    proc = project.run("deploy", "--target", target, "--recipe", recipe, "--agent", "heuristic")
    assert proc.returncode == 2, proc.stderr
    size = project.synthetic_size() / MIB
    assert re.search(rf"not enough disk space on faulty-tiny-disk for the upload of shape-\S+\.gguf: "
                     rf"{re.escape(str(disk.path))}/models/src/\w+\.gguf "
                     rf"needs about {size:.1f} MiB, 6\d\.\d MiB free there",
                     proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((disk.path / "models").rglob("*.gguf*")) if (disk.path / "models").exists() else True


@pytest.mark.slow
def test_quantize_running_out_of_disk_records_the_trial_failed_with_cause_disk(project, dev, toolchain, small_disk):
    """The device's disk holds the model and, by the free-space check, the predicted candidate; then
    it fills up while llama-quantize writes (frozen until the disk is full). llama-quantize fails
    (an iostream error, not a word about space); haqa sees the full filesystem, removes the partial
    output, records the trial as failed (disk) and stops with the path, the free and the needed space.
    Nothing half-written is in place. With space freed, the next run measures the candidate again."""
    disk = small_disk(240)  # the 132 MiB model + about 105 MiB: room for the predicted 68 MiB Q4_K_M
    (disk.path / "toolchains").mkdir()
    (disk.path / "toolchains" / toolchain.key).symlink_to(Path(toolchain.root))
    target = project.target("faulty-full-disk", workdir=disk.path)
    recipe = project.recipe("full-disk", ["Q4_K_M"], trials=1)
    args = ("deploy", "--target", target, "--recipe", recipe, "--out", str(project.root / "full-disk"),
            "--agent", "heuristic")
    filler: list[Path] = []

    def fill(match) -> None:
        pid, pgid, _ = match
        stop_group(pgid)
        filler.append(disk.fill())
        os.killpg(pgid, signal.SIGCONT)

    run = project.start(*args)
    watcher = Watcher([("fill", lambda: next(iter(procs(str(disk.path), program="llama-quantize")), None), fill)])
    watcher.start()
    code, err = run.wait()
    assert watcher.finish() == ["fill"], err
    assert code == 2, err
    assert re.search(rf"not enough disk space on faulty-full-disk for the Q4_K_M candidate \(llama-quantize\): "
                     rf"{re.escape(str(disk.path))}/models/\w+/Q4_K_M-\w+\.gguf needs about \d+\.\d MiB, "
                     rf"\d+\.\d MiB free there", err), err
    rows = project.store(recipe, target)
    assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [("Q4_K_M", "failed", "disk")]
    assert not list((disk.path / "models").rglob("Q4_K_M*")), "a partial candidate was left on the device"

    filler[0].unlink()
    again = project.run(*args)
    assert again.returncode == 0, again.stderr
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"]) for r in rows] == [("Q4_K_M", "discarded"), ("Q4_K_M", "ok")]
