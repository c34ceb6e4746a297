"""Build llama.cpp's tools (TOOLS) on the device, cached by (source hash, CMake options): a second build
with the same inputs is a cache hit."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath

from haqa import ui
from haqa.config.schema import Target
from haqa.errors import UserError
from haqa.runner.base import Runner
from haqa.toolchain.source import LLAMA_CPP_PYTHON_VERSION, LlamaCppSource, llama_cpp_source

# Speed (one stream, and parallel sequences: server slots), quantization, quality (KLD) and the importance
# matrix it can use, and the server a bundle ships.
TOOLS = ("llama-bench", "llama-batched-bench", "llama-quantize", "llama-imatrix", "llama-perplexity", "llama-server")

# Options every build gets; the target's [build.cmake] table is laid over them.
BASE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "OFF",          # static tools: the bundle can carry llama-server as one file
    "CMAKE_POSITION_INDEPENDENT_CODE": "ON",  # so the same archives also link the bindings' library (bindings.py)
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",      # the prebuilt web UI is a download; devices may be offline
    "LLAMA_OPENSSL": "OFF",              # haqa never asks llama.cpp to fetch anything
}
MARKER = "toolchain.json"
BUILD_TIMEOUT_S = 4 * 3600  # a Pi 4 takes most of an hour; leave room
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")

# GCC before 13 miscompiles _tile_loadconfig: the inline asm in its amxtileintrin.h names an 8-byte
# operand, so the stores that fill in the tile shapes are dropped as dead, and the first AMX
# instruction of llama.cpp's AMX kernels dies with SIGILL (seen with GCC 12.2 on a Xeon with AMX:
# llama-bench and llama-cpp-python crash in prompt processing whenever weights are repacked). A
# native build with such a compiler on a CPU with AMX leaves AMX out; GCC 13+ or clang keep it.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
AMX_FIXED_IN_GCC = 13

# What a failed build's log says -> what to install or change.
_DIAGNOSES = [
    (re.compile(r"No CMAKE_(C|CXX)_COMPILER could be found|CMAKE_(C|CXX)_COMPILER not set|"
                r"not a full path to an existing compiler tool", re.I),
     "no C/C++ compiler: install one (Debian/Ubuntu: apt-get install build-essential; macOS: xcode-select --install)"),
    (re.compile(r"CMake (\d+\.\d+(\.\d+)?) or higher is required", re.I),
     "CMake is too old for this llama.cpp: install a newer cmake (pip install cmake, or your package manager)"),
    (re.compile(r"No CMAKE_CUDA_COMPILER could be found|Could NOT find CUDAToolkit|nvcc.*not found", re.I),
     "GGML_CUDA is on but no CUDA toolkit was found: install it (Jetson: JetPack's cuda-toolkit) and put nvcc on PATH"),
    (re.compile(r"Unsupported gpu architecture|nvcc fatal", re.I),
     "nvcc rejected the CUDA architecture: check [hardware.gpu].cuda_arch / CMAKE_CUDA_ARCHITECTURES"),
    (re.compile(r"(virtual memory exhausted|Killed signal terminated program|out of memory)", re.I),
     "the compiler ran out of memory: build with fewer jobs (haqa toolchain build --jobs 1)"),
]


@dataclass(frozen=True)
class Toolchain:
    key: str
    root: PurePath
    commit: str
    source_sha256: str
    llama_cpp_python: str
    cmake_options: dict[str, str]
    cached: bool = False

    def bin(self, tool: str) -> PurePath:
        return self.root / "build" / "bin" / tool

    def describe(self) -> dict:
        d = asdict(self)
        d.pop("cached")
        d["root"] = str(self.root)
        return d


def cmake_options(target: Target, source: LlamaCppSource) -> dict[str, str]:
    options = {**BASE_OPTIONS, **target.build.cmake}
    gpu = target.hardware.gpu
    if gpu.kind == "cuda":
        options.setdefault("GGML_CUDA", "ON")
        if gpu.cuda_arch:
            options.setdefault("CMAKE_CUDA_ARCHITECTURES", gpu.cuda_arch)
    options["LLAMA_BUILD_COMMIT"] = source.commit[:8]
    return dict(sorted(options.items()))


def gcc_major(version_text: str) -> int | None:
    """GCC's major version from `c++ --version` output ("g++ (Debian 12.2.0-14) 12.2.0" ... "Free Software
    Foundation"); None for clang or anything else."""
    if "Free Software Foundation" not in version_text or "clang" in version_text.lower():
        return None
    m = re.search(r"\)\s+(\d+)\.\d+", version_text.strip().splitlines()[0])
    return int(m.group(1)) if m else None


def amx_workaround(options: dict[str, str], gcc: int | None, cpu_flags: set[str]) -> tuple[dict[str, str], str | None]:
    """The options with AMX left out when a native GCC<13 build would enable it, and why (None: unchanged)."""
    native = options.get("GGML_NATIVE", "ON").upper() not in ("OFF", "0", "FALSE", "NO")
    if not native or gcc is None or gcc >= AMX_FIXED_IN_GCC or not cpu_flags & {"amx_tile", "amx_int8"}:
        return options, None
    out = dict(options)
    for var in ("CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS"):
        out[var] = f"{out[var]} {NO_AMX_FLAGS}" if out.get(var) else NO_AMX_FLAGS
    return out, (f"the device's compiler is GCC {gcc}, whose _tile_loadconfig drops the AMX tile shapes (fixed in "
                 f"GCC {AMX_FIXED_IN_GCC}): llama.cpp is built without AMX ({NO_AMX_FLAGS}) "
                 f"so its kernels cannot die with SIGILL")


def device_compiler_facts(runner: Runner) -> tuple[int | None, set[str]]:
    """GCC's major version of the device's `c++` (None: clang, or no compiler) and its x86 CPU flags."""
    try:
        version = runner.run(["c++", "--version"], timeout=60)
    except UserError:
        return None, set()
    if not version.ok:
        return None, set()
    flags: set[str] = set()
    cpuinfo = runner.run(["cat", "/proc/cpuinfo"], timeout=60)  # none on macOS: no x86 flags to read
    for line in cpuinfo.stdout.splitlines() if cpuinfo.ok else []:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            break
    return gcc_major(version.stdout), flags


def compiler_cache(runner: Runner, options: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """ccache, when the device has it: the CMake launcher flags, and the environment under which the
    builds of two haqa homes on one machine share its hits (paths under the home are rewritten
    relative to the build folder, the build folder is not hashed, and the locale, which ccache
    hashes, is C whatever the session's: an SSH session often has none). haqa chooses this launcher;
    a target file never can (haqa/config/cmake_options.py refuses launchers). It is left out of the
    toolchain's key and options: the tools it builds are the same."""
    try:
        found = runner.run(["ccache", "--version"], timeout=60)
    except UserError:
        return [], {}
    if not found.ok:
        return [], {}
    languages = ["C", "CXX"] + (["CUDA"] if options.get("GGML_CUDA", "").upper() == "ON" else [])
    flags = [f"-DCMAKE_{language}_COMPILER_LAUNCHER=ccache" for language in languages]
    locale = {name: "C" for name in ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES")}
    return flags, {"CCACHE_BASEDIR": str(runner.home), "CCACHE_NOHASHDIR": "1", **locale}


def toolchain_key(source: LlamaCppSource, options: dict[str, str]) -> str:
    blob = json.dumps({"source": source.sha256, "options": options, "tools": TOOLS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _diagnose(log_tail: str) -> str:
    for pattern, advice in _DIAGNOSES:
        if pattern.search(log_tail):
            return advice
    return "read the log above; on a fresh machine install cmake, make and a C++17 compiler"


def ensure_toolchain(runner: Runner, target: Target, *, jobs: int | None = None,
                     source: LlamaCppSource | None = None) -> Toolchain:
    """The built tools for this target, building them on the device only when the cache misses."""
    source = source or llama_cpp_source()
    options, why = amx_workaround(cmake_options(target, source), *device_compiler_facts(runner))
    key = toolchain_key(source, options)
    root = runner.dir("toolchains", key)
    tc = Toolchain(key=key, root=root, commit=source.commit, source_sha256=source.sha256,
                   llama_cpp_python=LLAMA_CPP_PYTHON_VERSION, cmake_options=options)
    def built() -> bool:
        return runner.exists(root / MARKER) and all(runner.exists(tc.bin(t)) for t in TOOLS)

    if built():
        return Toolchain(**{**tc.__dict__, "cached": True})
    with _build_lock(runner.local_dir("toolchains", key) / "build.lock"):
        if built():  # another haqa process built it while this one waited
            return Toolchain(**{**tc.__dict__, "cached": True})
        return _build(runner, target, source, tc, options, why, jobs)


@contextlib.contextmanager
def _build_lock(path: Path):
    """One build of a toolchain at a time from this machine: two cmake runs in one build folder
    corrupt each other's objects. A second `haqa` waits for the first (and then finds it built)."""
    import fcntl

    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.note(f"another haqa process is building this toolchain; waiting for it ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build(runner: Runner, target: Target, source: LlamaCppSource, tc: Toolchain, options: dict[str, str],
           why: str | None, jobs: int | None) -> Toolchain:
    key, root = tc.key, tc.root
    src = ensure_source_on_device(runner, source)
    build = root / "build"
    runner.mkdir(build)
    log_path = runner.local_dir("toolchains", key) / "build.log"
    log_path.write_text("")
    jobs = jobs or runner.cpu_count()
    launcher, env = compiler_cache(runner, options)
    ui.step(f"building llama.cpp {source.commit[:8]} for target '{target.name}' "
            f"({', '.join(TOOLS)}; {jobs} jobs{'; through ccache' if launcher else ''}; log: {log_path})")
    if why:
        ui.note(why)

    configure = ["cmake", "-S", str(src), "-B", str(build), *[f"-D{k}={v}" for k, v in options.items()], *launcher]
    compile_ = ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TOOLS]
    with ui.progress("compiling llama.cpp") as bar:
        def on_line(line: str) -> None:
            if m := _PERCENT.match(line):
                bar.update(int(m.group(1)))

        for argv in (configure, compile_):
            try:
                result = runner.run(argv, timeout=BUILD_TIMEOUT_S, env=env, log_path=log_path, on_line=on_line)
            except UserError as e:
                raise UserError(f"cannot build llama.cpp: {e.message}",
                                hint="install cmake and make "
                                "(Debian/Ubuntu: apt-get install cmake build-essential)") from None
            if not result.ok:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
                if result.timed_out:
                    tail += f"\n(stopped after {BUILD_TIMEOUT_S} s)"
                raise UserError(
                    f"building llama.cpp failed at `{' '.join(argv[:2])}` (exit {result.returncode}); "
                    f"last lines of {log_path}:\n{tail}",
                    hint=_diagnose(tail),
                )
    runner.write_text(root / MARKER, json.dumps(tc.describe(), indent=2) + "\n")
    return tc


def ensure_source_on_device(runner: Runner, source: LlamaCppSource) -> PurePath:
    """The trimmed llama.cpp tree on the device: extracted in place locally, uploaded once (by hash)
    and unpacked there for a remote device."""
    src = runner.dir("src", source.sha256[:16])
    if runner.shares_filesystem:
        return source.extract(Path(src))
    if runner.exists(src / ".haqa-complete"):
        return src
    tarball = source.trimmed_tarball()
    remote_tar = runner.dir("src", tarball.name)
    runner.put(tarball, remote_tar)
    tmp = runner.dir("src", f".{source.sha256[:16]}.tmp")
    for argv in (
        ["rm", "-rf", str(tmp), str(src)],
        ["mkdir", "-p", str(tmp)],
        ["tar", "-xzf", str(remote_tar), "-C", str(tmp)],
    ):
        r = runner.run(argv, timeout=1800)
        if not r.ok:
            raise UserError(f"unpacking the llama.cpp source on the device failed at `{argv[0]}`: "
                            f"{r.stderr_tail[-800:]}",
                            hint="check free disk space on the device (`haqa doctor`)")
    runner.write_text(tmp / ".haqa-complete", f"{source.commit}\n")
    runner.move(tmp, src)
    return src
