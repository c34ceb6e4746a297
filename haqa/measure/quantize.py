"""Quantize a source GGUF into a candidate type on the device, cached by (source hash, type, llama.cpp commit).

The sha256 of each candidate is recorded when it is made (`<candidate>.made.json`) and checked when it
is reused: a candidate changed in the cache is quantized again."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath

from haqa import ui
from haqa.errors import ToolFailed
from haqa.runner.base import DiskFull, Runner
from haqa.toolchain.build import Toolchain

QUANTIZE_TIMEOUT_S = 6 * 3600


def quantized_path(runner: Runner, source_sha256: str, quant: str, toolchain: Toolchain) -> PurePath:
    key = hashlib.sha256(f"{source_sha256}:{quant}:{toolchain.commit}".encode()).hexdigest()[:16]
    return runner.dir("models", source_sha256[:16], f"{quant}-{key}.gguf")


def quantize(runner: Runner, toolchain: Toolchain, source: PurePath, source_sha256: str, source_type: str,
             quant: str, *, expected_bytes: int | None = None) -> tuple[PurePath, bool]:
    """The candidate GGUF on the device and whether it came from the cache.

    `source` is the source GGUF on the device; a candidate of the source's own type is the source.
    `expected_bytes`, the predicted size of the output, is checked against the device's free space
    first. llama-quantize writes `<out>.part`, moved into place only when it succeeded; a run that
    ran out of disk leaves nothing behind and raises DiskFull."""
    if source_type == quant:
        return source, True
    out = quantized_path(runner, source_sha256, quant, toolchain)
    if runner.exists(out) and _unchanged(runner, out, quant):
        return out, True
    runner.mkdir(out.parent)
    part = out.with_name(out.name + ".part")
    what = f"the {quant} candidate (llama-quantize)"
    if expected_bytes:
        runner.check_space(out, expected_bytes, what)
    ui.note(f"quantizing to {quant}")
    argv = [str(toolchain.bin("llama-quantize")), "--allow-requantize", str(source), str(part), quant,
            str(runner.cpu_count())]
    log = runner.local_dir("logs") / f"quantize-{out.stem}.log"
    result = runner.run(argv, timeout=QUANTIZE_TIMEOUT_S, log_path=log)
    if not result.ok:
        _raise_if_out_of_disk(runner, result.stderr_tail, out, part, expected_bytes, what)
        raise ToolFailed(argv, result.returncode, result.stderr_tail, timed_out=result.timed_out)
    runner.move(part, out)
    runner.write_text(made_record(out), json.dumps({"sha256": runner.sha256(out), "quant": quant}))
    return out, False


def made_record(out: PurePath) -> PurePath:
    return out.with_name(out.name + ".made.json")


def _unchanged(runner: Runner, out: PurePath, quant: str) -> bool:
    """Whether a cached candidate still has the sha256 recorded when it was made (read again only when its
    size or mtime changed, as an edit in place does). Without a record (made by an older haqa), it is
    recorded as it is now. A changed one is removed, to be quantized again."""
    actual = runner.sha256(out)
    record = made_record(out)
    recorded = None
    if runner.exists(record):
        try:
            recorded = json.loads(runner.read_text(record))["sha256"]
        except (ValueError, KeyError, TypeError):
            pass
    else:
        runner.write_text(record, json.dumps({"sha256": actual, "quant": quant, "recorded": "on reuse"}))
        return True
    if recorded == actual:
        return True
    ui.note(f"the cached {quant} candidate {out} changed since it was made (sha256 {actual[:12]}, made as "
            f"{str(recorded)[:12]}): quantizing it again")
    runner.remove(out)
    return False


LOW_SPACE = 16 << 20  # a write that failed with less than this left is taken to have filled the disk


def _raise_if_out_of_disk(runner: Runner, output: str, out: PurePath, part: PurePath, expected: int | None,
                          what: str) -> None:
    """llama-quantize reports a full disk as an iostream error (its writes throw on failure), not as
    ENOSPC: a failure that left the output's filesystem (nearly) full is a full disk. The partial
    output is removed either way, and DiskFull names the path, the free space and the space needed."""
    free = runner.free_bytes(out)
    written = runner.size(part) or 0
    full = "no space left" in output.lower() or "quota" in output.lower() or (
        free is not None and (free < LOW_SPACE or (expected is not None and free + written < expected)))
    runner.remove(part)
    if full:
        freed = runner.free_bytes(out)
        raise DiskFull(runner.label_for_errors, out, needed=expected or None, free=freed if freed is not None else free,
                       what=what)
