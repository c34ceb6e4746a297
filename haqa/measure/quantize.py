"""Quantize a source GGUF into a candidate type on the device, cached by (source hash, type, llama.cpp commit)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from haqa import ui
from haqa.errors import ToolFailed
from haqa.model.gguf_facts import read_facts
from haqa.runner.base import Runner
from haqa.toolchain.build import Toolchain

QUANTIZE_TIMEOUT_S = 6 * 3600


def quantized_path(runner: Runner, source_sha256: str, quant: str, toolchain: Toolchain) -> Path:
    key = hashlib.sha256(f"{source_sha256}:{quant}:{toolchain.commit}".encode()).hexdigest()[:16]
    return runner.dir("models", source_sha256[:16], f"{quant}-{key}.gguf")


def quantize(runner: Runner, toolchain: Toolchain, source: Path, source_sha256: str, quant: str) -> tuple[Path, bool]:
    """The candidate GGUF and whether it came from the cache. The source's own type is used as it is."""
    if read_facts(source).file_type == quant:
        return source, True
    out = quantized_path(runner, source_sha256, quant, toolchain)
    if runner.exists(out):
        return out, True
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    ui.note(f"quantizing to {quant}")
    argv = [str(toolchain.bin("llama-quantize")), "--allow-requantize", str(source), str(part), quant,
            str(runner.cpu_count())]
    result = runner.run(argv, timeout=QUANTIZE_TIMEOUT_S, log_path=out.with_suffix(".log"))
    if not result.ok:
        raise ToolFailed(argv, result.returncode, result.stderr_tail, timed_out=result.timed_out)
    runner.move(part, out)
    return out, False
