"""`haqa doctor`: is a device ready for haqa? Reachability, work folder, disk, memory, build tools."""

from __future__ import annotations

import re
from dataclasses import dataclass

from haqa.config.schema import Target
from haqa.errors import UserError
from haqa.probe import remote_facts
from haqa.runner.base import Runner

MIN_FREE_GIB = 2.0
MIN_CMAKE = (3, 14)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in m.groups() if x is not None) if m else None


def run_checks(runner: Runner, target: Target) -> list[Check]:
    checks: list[Check] = []
    try:
        r = runner.run(["true"], timeout=60)
        checks.append(Check("reachable", r.ok, f"{runner.describe().get('host', 'this machine')} answers"))
    except UserError as e:
        return [Check("reachable", False, e.message, e.hint or "check the [connect] table of the target")]

    try:
        runner.mkdir(runner.home)
        runner.write_text(runner.dir(".haqa-doctor"), "ok\n")
        checks.append(Check("work folder", True, f"{runner.home} is writable"))
    except (OSError, UserError) as e:
        checks.append(Check("work folder", False, f"{runner.home}: {e}", "set [connect].workdir to a writable folder"))

    r = runner.run(["df", "-Pk", str(runner.home)], timeout=60)
    lines = r.stdout.strip().splitlines()
    if r.ok and len(lines) >= 2 and len(fields := lines[-1].split()) >= 4 and fields[3].isdigit():
        free = int(fields[3]) / 1024**2
        checks.append(Check("disk", free >= MIN_FREE_GIB, f"{free:.1f} GiB free in {runner.home}",
                            f"free at least {MIN_FREE_GIB} GiB (the build takes ~1 GiB; models need their size twice)"))
    else:
        checks.append(Check("disk", False, f"`df` failed: {r.stderr_tail[-200:]}", "check the work folder"))

    facts, info = remote_facts(runner)
    ram = facts.get("ram_gib")
    if ram:
        close = abs(ram - target.hardware.ram_gib) <= max(0.15 * target.hardware.ram_gib, 0.5)
        checks.append(Check("memory", close,
                            f"{ram:g} GiB on the device, {target.hardware.ram_gib:g} GiB in the target",
                            "fix [hardware].ram_gib in the target (or re-probe it)"))
    if facts.get("arch") and facts["arch"] != target.hardware.arch:
        checks.append(Check("arch", False, f"device is {facts['arch']}, target says {target.hardware.arch}",
                            "fix [hardware].arch or re-probe the device"))

    tools = info.get("tools", {})
    install = ("xcode-select --install; brew install cmake" if info.get("system") == "Darwin"
               else "apt-get install build-essential cmake")
    for tool in ("cc", "c++", "make"):
        v = tools.get(tool, "missing")
        checks.append(Check(tool, v != "missing", v, f"install a C/C++ toolchain ({install})"))
    cm = tools.get("cmake", "missing")
    ver = _version(cm) if cm != "missing" else None
    checks.append(Check("cmake", bool(ver and ver >= MIN_CMAKE), cm,
                        f"install cmake >= {'.'.join(map(str, MIN_CMAKE))} ({install}, or pip install cmake)"))
    from haqa.toolchain.build import AMX_FIXED_IN_GCC, amx_workaround, device_compiler_facts

    _, why = amx_workaround(dict(target.build.cmake), *device_compiler_facts(runner))
    if why:  # not a failure: the build works around it, at the cost of AMX's faster prompt processing
        checks.append(Check("AMX", True, why, f"install GCC {AMX_FIXED_IN_GCC}+ (or make `c++` clang++) to keep AMX"))
    if target.hardware.gpu.kind == "cuda":
        nv = tools.get("nvcc", "missing")
        checks.append(Check("nvcc", nv != "missing", nv,
                            "install the CUDA toolkit (Jetson: apt-get install nvidia-jetpack) and put nvcc on PATH"))
    return checks
