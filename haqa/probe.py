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


MAX_TEXT = 200


def device_text(value: str, limit: int = MAX_TEXT) -> str:
    """A string a device printed, made fit for files and messages a person reads: printable characters
    only (no control characters, no lone surrogates), at most `limit` of them."""
    clean = "".join(ch for ch in value if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF)
    return clean[:limit].strip()


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
            model = device_text(value)
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
                "name": device_text(parts[0]),
                "memory_gib": round(float(parts[1]) / 1024, 2),
                "cuda_arch": parts[2].replace(".", ""),
            }
    return None


def parse_tegra_release(text: str) -> dict | None:
    """Jetson GPU facts from /etc/nv_tegra_release (L4T R35/R36 = Orin, sm_87; R32 = Xavier/Nano)."""
    m = re.search(r"#\s*R(\d+)", text)
    if not m:
        return None
    release = int(m.group(1))
    arch = "87" if release >= 34 else "72"
    return {"kind": "cuda", "name": f"Jetson (L4T R{release})", "unified_memory": True, "cuda_arch": arch}


def facts_from(*, system: str, machine: str, cpuinfo: str = "", meminfo: str = "", nvidia_smi: str = "",
               tegra_release: str = "", sysctl: dict[str, str] | None = None) -> dict:
    """A target's [hardware] table (plus `os`) from what the device printed."""
    facts: dict = {"arch": normalise_arch(machine)}
    if system.strip() == "Darwin":
        facts["os"] = "macos"
        sc = sysctl or {}
        if sc.get("hw.memsize", "").isdigit():
            facts["ram_gib"] = round(int(sc["hw.memsize"]) / 1024**3, 2)
        cores = sc.get("hw.perflevel0.physicalcpu") or sc.get("hw.physicalcpu")
        if cores and cores.isdigit():
            facts["cores"] = int(cores)
        if sc.get("machdep.cpu.brand_string"):
            facts["cpu_model"] = device_text(sc["machdep.cpu.brand_string"])
        features = ["neon"] if facts["arch"] == "aarch64" else []
        for key, name in (("hw.optional.arm.FEAT_DotProd", "dotprod"), ("hw.optional.arm.FEAT_FP16", "fp16"),
                          ("hw.optional.arm.FEAT_I8MM", "i8mm"), ("hw.optional.arm.FEAT_BF16", "bf16")):
            if sc.get(key) == "1":
                features.append(name)
        facts["cpu_features"] = features
        if facts["arch"] == "aarch64":
            facts["gpu"] = {"kind": "metal", "unified_memory": True, "memory_gib": facts.get("ram_gib")}
        return facts
    facts["os"] = "linux"
    if cpuinfo:
        facts.update({k: v for k, v in parse_cpuinfo(cpuinfo).items() if v})
    if meminfo and (ram := parse_meminfo(meminfo)):
        facts["ram_gib"] = ram
    if gpu := parse_nvidia_smi(nvidia_smi):
        facts["gpu"] = gpu
    elif tegra := parse_tegra_release(tegra_release):
        facts["gpu"] = {**tegra, "memory_gib": facts.get("ram_gib")}
    return facts


def local_facts() -> dict:
    """Hardware facts of this machine, in the shape of a target's [hardware] table, plus `os`."""
    def read(path: str) -> str:
        p = Path(path)
        return p.read_text(errors="replace") if p.exists() else ""

    smi = ""
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            pass
    sysctl = None
    if platform.system() == "Darwin":
        sysctl = {}
        for key in SYSCTL_KEYS:
            r = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True)
            if r.returncode == 0:
                sysctl[key] = r.stdout.strip()
    facts = facts_from(system=platform.system(), machine=platform.machine(), cpuinfo=read("/proc/cpuinfo"),
                       meminfo=read("/proc/meminfo"), nvidia_smi=smi, tegra_release=read("/etc/nv_tegra_release"),
                       sysctl=sysctl)
    facts.setdefault("cores", os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        facts["cores"] = min(facts["cores"], len(os.sched_getaffinity(0)))
    return facts


SYSCTL_KEYS = ["hw.memsize", "hw.physicalcpu", "hw.perflevel0.physicalcpu", "machdep.cpu.brand_string",
               "hw.optional.arm.FEAT_DotProd", "hw.optional.arm.FEAT_FP16", "hw.optional.arm.FEAT_I8MM",
               "hw.optional.arm.FEAT_BF16"]
_SMI = ("command -v nvidia-smi >/dev/null 2>&1 && "
        "nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits || true")
TOOLS_SCRIPT = ("for t in cc c++ cmake make nvcc; do printf '%s: ' \"$t\"; "
                "if command -v \"$t\" >/dev/null 2>&1; then "
                "\"$t\" --version 2>&1 | grep -m1 -iE 'version|[0-9]+\\.[0-9]+' || echo present; "
                "else echo missing; fi; done")


def remote_facts(runner) -> tuple[dict, dict]:
    """(hardware facts, {"hostname", "tools": {name: version line or "missing"}}) of a device, read
    through a runner with commands haqa writes itself."""
    def out(argv: list[str]) -> str:
        r = runner.run(argv, timeout=120)
        return r.stdout if r.ok else ""

    system = out(["uname", "-s"]).strip()
    machine = out(["uname", "-m"]).strip()
    info: dict = {"hostname": device_text(out(["uname", "-n"])), "system": system}
    if system == "Darwin":
        sysctl = {}
        for key in SYSCTL_KEYS:
            if (v := out(["sysctl", "-n", key]).strip()):
                sysctl[key] = v
        facts = facts_from(system=system, machine=machine, sysctl=sysctl)
    else:
        facts = facts_from(system=system, machine=machine, cpuinfo=out(["cat", "/proc/cpuinfo"]),
                           meminfo=out(["cat", "/proc/meminfo"]), nvidia_smi=out(["sh", "-c", _SMI]),
                           tegra_release=out(["sh", "-c", "cat /etc/nv_tegra_release 2>/dev/null || true"]))
        if "cores" not in facts and (n := out(["nproc"]).strip()).isdigit():
            facts["cores"] = int(n)
    tools = {}
    for line in out(["sh", "-c", TOOLS_SCRIPT]).splitlines():
        name, _, version = line.partition(": ")
        tools[name.strip()] = version.strip()
    info["tools"] = tools
    return facts, info
