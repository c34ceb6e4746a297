"""The llama.cpp toolchain: matched source, cache hits, and failures that say what to install."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import time

import pytest

from haqa.config import load_target
from haqa.errors import UserError
from haqa.runner import LocalRunner
from haqa.toolchain import LLAMA_CPP_PYTHON_VERSION, TOOLS, ensure_toolchain, llama_cpp_source
from haqa.toolchain.build import NO_AMX_FLAGS, _diagnose, amx_workaround, cmake_options, compiler_cache, gcc_major
from tests.support.files import REPO


def test_pin_is_the_same_everywhere():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"' in pyproject
    assert importlib.metadata.version("llama-cpp-python") == LLAMA_CPP_PYTHON_VERSION


def test_cmake_options_follow_the_target():
    class FakeSource:  # only commit is read; no download needed
        commit = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

    orin = cmake_options(load_target("jetson-orin-nano-8gb"), FakeSource())
    assert orin["GGML_CUDA"] == "ON" and orin["CMAKE_CUDA_ARCHITECTURES"] == "87"
    assert orin["LLAMA_BUILD_COMMIT"] == "0c1e5709" and orin["LLAMA_USE_PREBUILT_UI"] == "OFF"
    mac = cmake_options(load_target("apple-m1-8gb"), FakeSource())
    assert mac["GGML_METAL"] == "ON" and "GGML_CUDA" not in mac


FSF = "\nCopyright (C) 2022 Free Software Foundation, Inc.\n"


@pytest.mark.parametrize("text,major", [
    ("g++ (Debian 12.2.0-14+deb12u1) 12.2.0" + FSF, 12),
    ("c++ (Ubuntu 13.3.0-6ubuntu2~24.04) 13.3.0" + FSF, 13),
    ("c++ (GCC) 11.4.1 20231218 (Red Hat 11.4.1-3)" + FSF, 11),
    ("Apple clang version 15.0.0 (clang-1500.3.9.4)\nTarget: arm64-apple-darwin23", None),
    ("Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu", None),
    ("", None),
])
def test_gcc_major_version_is_read_from_cxx_version(text, major):
    assert gcc_major(text) == major


def test_amx_is_left_out_only_for_native_gcc_before_13_on_an_amx_cpu():
    base = {"GGML_NATIVE": "ON", "CMAKE_BUILD_TYPE": "Release"}
    amx = {"avx512f", "amx_tile", "amx_int8"}
    out, why = amx_workaround(base, 12, amx)
    assert out["CMAKE_C_FLAGS"] == out["CMAKE_CXX_FLAGS"] == NO_AMX_FLAGS and "GCC 12" in why
    assert amx_workaround({**base, "CMAKE_CXX_FLAGS": "-O3"}, 12, amx)[0]["CMAKE_CXX_FLAGS"] == f"-O3 {NO_AMX_FLAGS}"
    for unchanged in [(base, 13, amx), (base, None, amx), (base, 12, {"avx512f"}),
                      ({**base, "GGML_NATIVE": "OFF"}, 12, amx)]:
        assert amx_workaround(*unchanged) == (unchanged[0], None)


@pytest.mark.skipif(not shutil.which("ccache"), reason="ccache is not installed (apt-get install ccache)")
def test_a_device_with_ccache_builds_through_it_with_paths_relative_to_its_home(tmp_path):
    flags, env = compiler_cache(LocalRunner(tmp_path), {"GGML_NATIVE": "ON"})
    assert flags == ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    assert env["CCACHE_BASEDIR"] == str(tmp_path) and env["CCACHE_NOHASHDIR"] == "1"
    assert env["LANG"] == env["LC_ALL"] == env["LC_CTYPE"] == env["LC_MESSAGES"] == "C"
    cuda, _ = compiler_cache(LocalRunner(tmp_path), {"GGML_CUDA": "ON"})
    assert "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache" in cuda


def test_a_device_without_ccache_builds_without_a_launcher(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert compiler_cache(LocalRunner(tmp_path / "home"), {"GGML_CUDA": "ON"}) == ([], {})


@pytest.mark.parametrize("log,advice", [
    ("-- No CMAKE_CXX_COMPILER could be found.", "build-essential"),
    ("CMake 3.14 or higher is required.  You are running version 3.10.2", "CMake is too old"),
    ("No CMAKE_CUDA_COMPILER could be found.", "CUDA toolkit"),
    ("c++: fatal error: Killed signal terminated program cc1plus", "--jobs 1"),
])
def test_build_failures_name_what_is_missing(log, advice):
    assert advice in _diagnose(log)


@pytest.mark.slow
def test_source_is_the_vendored_tree_of_the_pinned_release():
    src = llama_cpp_source()
    assert re.fullmatch(r"[0-9a-f]{40}", src.commit)
    assert len(src.sha256) == 64


@pytest.mark.slow
def test_second_build_is_a_cache_hit():
    runner, target = LocalRunner(), load_target("local")
    first = ensure_toolchain(runner, target)  # builds on a fresh machine, else already cached
    for tool in TOOLS:
        assert first.bin(tool).is_file()
    log_mtime = (first.root / "build.log").stat().st_mtime_ns
    start = time.monotonic()
    second = ensure_toolchain(runner, target)
    assert second.cached and second.key == first.key
    assert time.monotonic() - start < 10
    assert (first.root / "build.log").stat().st_mtime_ns == log_mtime  # nothing was rebuilt


@pytest.mark.slow
def test_the_bindings_library_is_linked_from_this_machines_build_and_loads():
    """libllama.so from the toolchain's own archives: it loads, answers llama.cpp's C API with this build's
    CPU features, and is linked once."""
    import ctypes

    from haqa.toolchain.bindings import bindings_library

    toolchain = ensure_toolchain(LocalRunner(), load_target("local"))
    library = bindings_library(toolchain)
    assert library.parent.parent == toolchain.root / "build" and library.is_file()
    lib = ctypes.CDLL(str(library))
    lib.llama_print_system_info.restype = ctypes.c_char_p
    assert b"CPU" in lib.llama_print_system_info()
    mtime = library.stat().st_mtime_ns
    assert bindings_library(toolchain) == library and library.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_failed_build_shows_log_tail_and_advice(tmp_path, monkeypatch):
    """A real CMake run that cannot find its compiler: the error carries the log and what to install.
    (A target file may not name a compiler, issue 14; the device's environment can, as CXX.)"""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(UserError) as e:
        ensure_toolchain(LocalRunner(tmp_path), load_target("local"), source=llama_cpp_source())
    msg = str(e.value)
    assert "building llama.cpp failed" in msg and "/nonexistent/c++" in msg
    assert "compiler" in msg


def test_a_second_build_of_the_same_toolchain_waits_for_the_first(tmp_path):
    """Two cmake runs in one build folder corrupt each other's objects: the lock makes the second wait."""
    import threading

    from haqa.toolchain.build import _build_lock

    lock = tmp_path / "build.lock"
    order: list[str] = []
    inside = threading.Event()

    def first():
        with _build_lock(lock):
            inside.set()
            time.sleep(0.5)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with _build_lock(lock):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
