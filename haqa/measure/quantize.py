"""Quantize a source GGUF into a candidate type on the device, cached by (source hash, type, llama.cpp commit)."""

from __future__ import annotations

import hashlib
from pathlib import PurePath

from haqa import ui
from haqa.errors import ToolFailed
from haqa.runner.base import Runner
from haqa.toolchain.build import Toolchain

QUANTIZE_TIMEOUT_S = 6 * 3600


def quantized_path(runner: Runner, source_sha256: str, quant: str, toolchain: Toolchain) -> PurePath:
    key = hashlib.sha256(f"{source_sha256}:{quant}:{toolchain.commit}".encode()).hexdigest()[:16]
    return runner.dir("models", source_sha256[:16], f"{quant}-{key}.gguf")


def quantize(runner: Runner, toolchain: Toolchain, source: PurePath, source_sha256: str, source_type: str,
             quant: str) -> tuple[PurePath, bool]:
    """The candidate GGUF on the device and whether it came from the cache.

    `source` is the source GGUF on the device; a candidate of the source's own type is the source."""
    if source_type == quant:
        return source, True
    out = quantized_path(runner, source_sha256, quant, toolchain)
    if runner.exists(out):
        return out, True
    runner.mkdir(out.parent)
    part = out.with_name(out.name + ".part")
    ui.note(f"quantizing to {quant}")
    argv = [str(toolchain.bin("llama-quantize")), "--allow-requantize", str(source), str(part), quant,
            str(runner.cpu_count())]
    log = runner.local_dir("logs") / f"quantize-{out.stem}.log"
    result = runner.run(argv, timeout=QUANTIZE_TIMEOUT_S, log_path=log)
    if not result.ok:
        raise ToolFailed(argv, result.returncode, result.stderr_tail, timed_out=result.timed_out)
    runner.move(part, out)
    return out, False
