"""The llama.cpp library that llama-cpp-python's bindings load in-process (`--agent embedded`).

`make install-test` installs llama-cpp-python's Python code without its own llama.cpp (compiling that took
5 to 10 minutes of every fresh install); the bindings then load `libllama.so` linked from the static
archives of this machine's own haqa build (`haqa toolchain build --target local`), which are compiled
position-independent for this. So the bindings and the tools run one build of one commit, with the same
CPU flags (the AMX workaround included). Bindings installed with a library of their own (a plain
`pip install llama-cpp-python`) keep using it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

from haqa import ui
from haqa.errors import UserError
from haqa.toolchain.build import Toolchain

LIBRARY = "libllama.so"
LIB_PATH_VARIABLE = "LLAMA_CPP_LIB_PATH"  # where llama_cpp/llama_cpp.py looks for the library, when set
GPU_OPTIONS = ("GGML_CUDA", "GGML_METAL", "GGML_VULKAN", "GGML_HIP", "GGML_SYCL", "GGML_OPENCL")
INSTALL_HINT = ("install the embedded extra (`make install-test` in the checkout), or llama-cpp-python with a "
                "llama.cpp of its own: `pip install 'llama-cpp-python==0.3.36'`")


def llama_class():
    """llama_cpp.Llama, loading this machine's haqa-built library when the installed bindings carry none."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise UserError("llama-cpp-python (the embedded extra) is not installed", hint=INSTALL_HINT)
    if not _own_library(Path(spec.origin).parent) and not os.environ.get(LIB_PATH_VARIABLE):
        from haqa.config import load_target
        from haqa.runner import LocalRunner
        from haqa.toolchain.build import ensure_toolchain

        toolchain = ensure_toolchain(LocalRunner(), load_target("local"))
        os.environ[LIB_PATH_VARIABLE] = str(bindings_library(toolchain).parent)
    from llama_cpp import Llama

    return Llama


def _own_library(package: Path) -> bool:
    return any((package / "lib").glob("libllama.*"))


def bindings_library(toolchain: Toolchain) -> Path:
    """`libllama.so` of this machine's build, linked from its static archives on first use."""
    build = Path(toolchain.root) / "build"
    out = build / "bindings" / LIBRARY
    if out.exists():
        return out
    if platform.system() != "Linux" or any(toolchain.cmake_options.get(o, "OFF").upper() == "ON" for o in GPU_OPTIONS):
        raise UserError(f"haqa links the bindings' library only from a CPU build on Linux; this build is "
                        f"{platform.system()} with {toolchain.cmake_options}", hint=INSTALL_HINT)
    archives = sorted({*build.glob("src/libllama.a"), *build.glob("ggml/src/**/libggml*.a")})
    if not any(a.name == "libllama.a" for a in archives):
        raise UserError(f"no llama.cpp archives in {build}", hint="rebuild: haqa toolchain build --target local")
    out.parent.mkdir(exist_ok=True)
    part = out.with_name(out.name + ".part")
    argv = ["c++", "-shared", "-o", str(part), "-Wl,--whole-archive", *map(str, archives), "-Wl,--no-whole-archive",
            "-fopenmp", "-lpthread", "-ldl", "-lm"]
    ui.note(f"linking the bindings' llama.cpp library from this machine's build: {out}")
    from haqa.runner import LocalRunner

    result = LocalRunner().run(argv, timeout=600)
    if not result.ok:
        raise UserError(f"linking {LIBRARY} failed (exit {result.returncode}): {result.stderr_tail[-1500:]}",
                        hint="a build made before haqa compiled position-independent code cannot be linked: "
                             f"remove {toolchain.root} and run `haqa toolchain build --target local`")
    os.replace(part, out)
    return out
