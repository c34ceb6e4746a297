"""Read a device's hardware facts from the texts it exposes (/proc/cpuinfo, /proc/meminfo, nvidia-smi).

The parsers take text, not files, so the same code reads the local machine and (through a runner)
a remote one.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

_X86_FLAGS = {
    "sse4_2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi2": "bmi2",
    "avx_vnni": "avx_vnni", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16", "avx512vbmi": "avx512_vbmi",
    "amx_tile": "amx_tile", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
}
_ARM_FLAGS = {
    "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "sve2": "sve2", "sme": "sme",
    "asimdhp": "fp16", "bf16": "bf16",
}


def normalise_arch(machine: str) -> str:
    m = machine.strip().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def parse_cpuinfo(text: str) -> dict:
    """CPU model, physical core count and llama.cpp-relevant features from /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    processors = 0
    block: dict[str, str] = {}

    def flush() -> None:
        if "physical id" in block and "core id" in block:
            cores.add((block["physical id"], block["core id"]))

    for line in text.splitlines():
        if not line.strip():
            flush()
            block = {}
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        block[key] = value
        if key == "processor":
            processors += 1
        elif key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
    flush()
    features = sorted({v for k, v in {**_X86_FLAGS, **_ARM_FLAGS}.items() if k in flags})
    return {"cpu_model": model, "cores": len(cores) or processors or None, "cpu_features": features}


def parse_meminfo(text: str) -> float | None:
    """Total RAM in GiB from /proc/meminfo."""
    m = re.search(r"^MemTotal:\s+(\d+)\s+kB", text, re.M)
    return round(int(m.group(1)) / 1024**2, 2) if m else None


def parse_nvidia_smi(text: str) -> dict | None:
    """First GPU from `nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits`."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[1].replace(".", "").isdigit():
            return {
                "kind": "cuda",
                "name": parts[0],
                "memory_gib": round(float(parts[1]) / 1024, 2),
                "cuda_arch": parts[2].replace(".", ""),
            }
    return None


def local_facts() -> dict:
    """Hardware facts of this machine, in the shape of a target's [hardware] table, plus `os`."""
    facts: dict = {"arch": normalise_arch(platform.machine())}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        facts.update({k: v for k, v in parse_cpuinfo(cpuinfo.read_text()).items() if v})
    meminfo = Path("/proc/meminfo")
    if meminfo.exists() and (ram := parse_meminfo(meminfo.read_text())):
        facts["ram_gib"] = ram
    facts.setdefault("cores", os.cpu_count() or 1)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        facts["cores"] = min(facts["cores"], affinity)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20,
            ).stdout
            if gpu := parse_nvidia_smi(out):
                facts["gpu"] = gpu
        except (OSError, subprocess.TimeoutExpired):
            pass
    return facts


def local_os() -> str:
    return "macos" if platform.system() == "Darwin" else "linux"
