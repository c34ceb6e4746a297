"""Which CMake options a target's [build.cmake] table may set.

A target file is data: nothing in it may make CMake run a command or read a script. So the table
takes the boolean llama.cpp and ggml options of the vendored source (ON or OFF), the few string
options of theirs whose values are names or numbers, and the CMake variables a device build needs
(build type, CUDA architectures, macOS architectures). Options that make CMake include a project
file, use a toolchain file, wrap the compiler in a launcher, replace the compiler or pass it flags
are refused by name; any other name is refused as unknown.
"""

from __future__ import annotations

import re

from haqa.errors import did_you_mean

# option(...) in CMakeLists.txt and ggml/CMakeLists.txt of llama.cpp 0c1e5709 (llama-cpp-python 0.3.36);
# tests/catalog/test_catalog.py checks this list against the vendored source.
BOOLEAN_OPTIONS = frozenset("""
BUILD_SHARED_LIBS GGML_ACCELERATE GGML_ALL_WARNINGS GGML_ALL_WARNINGS_3RD_PARTY GGML_AMX_BF16 GGML_AMX_INT8
GGML_AMX_TILE GGML_AVX GGML_AVX2 GGML_AVX512 GGML_AVX512_BF16 GGML_AVX512_VBMI GGML_AVX512_VNNI GGML_AVX_VNNI
GGML_BACKEND_DL GGML_BLAS GGML_BMI2 GGML_BUILD_EXAMPLES GGML_BUILD_TESTS GGML_CCACHE GGML_CPU
GGML_CPU_ALL_VARIANTS GGML_CPU_HBM GGML_CPU_KLEIDIAI GGML_CPU_REPACK GGML_CUDA GGML_CUDA_FA
GGML_CUDA_FA_ALL_QUANTS GGML_CUDA_FORCE_CUBLAS GGML_CUDA_FORCE_MMQ GGML_CUDA_GRAPHS GGML_CUDA_NCCL
GGML_CUDA_NO_PEER_COPY GGML_CUDA_NO_VMM GGML_ET GGML_ET_SYSEMU GGML_F16C GGML_FATAL_WARNINGS GGML_FMA
GGML_GPROF GGML_HEXAGON GGML_HIP GGML_HIP_EXPORT_METRICS GGML_HIP_GRAPHS GGML_HIP_MMQ_MFMA GGML_HIP_NO_VMM
GGML_HIP_RCCL GGML_LASX GGML_LLAMAFILE GGML_LSX GGML_LTO GGML_METAL GGML_METAL_EMBED_LIBRARY
GGML_METAL_NDEBUG GGML_METAL_SHADER_DEBUG GGML_MUSA GGML_MUSA_GRAPHS GGML_MUSA_MUDNN_COPY GGML_NATIVE
GGML_OPENCL GGML_OPENCL_EMBED_KERNELS GGML_OPENCL_PROFILING GGML_OPENCL_USE_ADRENO_KERNELS GGML_OPENMP
GGML_OPENMP_FETCH GGML_OPENVINO GGML_RPC GGML_RVV GGML_RV_ZFH GGML_RV_ZICBOP GGML_RV_ZIHINTPAUSE
GGML_RV_ZVFBFWMA GGML_RV_ZVFH GGML_SANITIZE_ADDRESS GGML_SANITIZE_THREAD GGML_SANITIZE_UNDEFINED
GGML_SCHED_NO_REALLOC GGML_SSE42 GGML_STATIC GGML_SYCL GGML_SYCL_DNN GGML_SYCL_F16 GGML_SYCL_GRAPH
GGML_SYCL_HOST_MEM_FALLBACK GGML_SYCL_SUPPORT_LEVEL_ZERO_API GGML_VIRTGPU GGML_VIRTGPU_BACKEND GGML_VULKAN
GGML_VULKAN_CHECK_RESULTS GGML_VULKAN_DEBUG GGML_VULKAN_MEMORY_DEBUG GGML_VULKAN_RUN_TESTS
GGML_VULKAN_SHADER_DEBUG_INFO GGML_VULKAN_VALIDATE GGML_VXE GGML_WASM_SINGLE_FILE GGML_WEBGPU
GGML_WEBGPU_CPU_PROFILE GGML_WEBGPU_DEBUG GGML_WEBGPU_GPU_PROFILE GGML_WEBGPU_JSPI GGML_XTHEADVECTOR GGML_ZDNN
GGML_ZENDNN LLAMA_ALL_WARNINGS LLAMA_ALL_WARNINGS_3RD_PARTY LLAMA_BUILD_APP LLAMA_BUILD_COMMON
LLAMA_BUILD_EXAMPLES LLAMA_BUILD_HTML LLAMA_BUILD_IS_DEV LLAMA_BUILD_MTMD LLAMA_BUILD_SERVER LLAMA_BUILD_TESTS
LLAMA_BUILD_TOOLS LLAMA_BUILD_UI LLAMA_FATAL_WARNINGS LLAMA_LLGUIDANCE LLAMA_OPENSSL LLAMA_SANITIZE_ADDRESS
LLAMA_SANITIZE_THREAD LLAMA_SANITIZE_UNDEFINED LLAMA_SUBPROCESS LLAMA_TESTS_INSTALL LLAMA_TOOLS_INSTALL
LLAMA_USE_PREBUILT_UI LLAMA_USE_SYSTEM_GGML LLAMA_WASM_MEM64 LLAMA_WASM_SINGLE_FILE ZENDNN_ROOT
""".split())
BOOLEAN_VALUES = ("ON", "OFF")

_WORD = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
_CUDA_ARCH = r"(?:native|all|all-major|\d{2,3}[a-z]?(?:-real|-virtual)?)"
# String options: the value must match the pattern (names and numbers only, never a path).
STRING_OPTIONS: dict[str, tuple[str, str]] = {
    "CMAKE_BUILD_TYPE": (r"Release|RelWithDebInfo|MinSizeRel|Debug", "Release, RelWithDebInfo, MinSizeRel or Debug"),
    "CMAKE_CUDA_ARCHITECTURES": (rf"{_CUDA_ARCH}(?:;{_CUDA_ARCH})*", "sm numbers like '87' or '86;90a', or native"),
    "CMAKE_OSX_ARCHITECTURES": (r"(?:arm64|x86_64)(?:;(?:arm64|x86_64))*", "arm64, x86_64 or both"),
    "CMAKE_OSX_DEPLOYMENT_TARGET": (r"\d+(?:\.\d+){0,2}", "a macOS version like '13.3'"),
    "GGML_CPU_ARM_ARCH": (r"[a-z0-9][a-z0-9.+_-]*", "an -march value like 'armv8.2-a+dotprod'"),
    "GGML_CPU_POWERPC_CPUTYPE": (_WORD, "a CPU type like 'power9'"),
    "GGML_SCHED_MAX_COPIES": (r"\d{1,3}", "a number"),
    "GGML_BLAS_VENDOR": (_WORD, "a vendor name like 'OpenBLAS'"),
    "GGML_CUDA_FA_QUANTS": (r"all|[a-z0-9_]+-[a-z0-9_]+(?:;[a-z0-9_]+-[a-z0-9_]+)*",
                            "'all' or a list like 'q8_0-q8_0;f16-f16'"),
    "GGML_CUDA_COMPRESSION_MODE": (r"none|speed|balance|size", "none, speed, balance or size"),
    "GGML_METAL_MACOSX_VERSION_MIN": (r"\d+(?:\.\d+){0,2}", "a macOS version like '13.3'"),
    "GGML_METAL_STD": (_WORD, "a Metal standard like 'metal3.1'"),
    "GGML_METAL_TARGET_OS": (r"macos|ios|xros|tvos", "macos, ios, xros or tvos"),
    "GGML_SYCL_TARGET": (r"[A-Z]+", "INTEL, NVIDIA or AMD"),
    "GGML_SYCL_DEVICE_ARCH": (_WORD, "a device architecture name"),
    "GGML_OPENCL_TARGET_VERSION": (r"\d{3}", "a version like '300'"),
}

# Options that make CMake run commands or read files of the target's choosing: refused by name.
_RUNS_CODE = [
    (r"CMAKE_PROJECT_INCLUDE(_BEFORE)?|CMAKE_PROJECT_\w+_INCLUDE(_BEFORE)?",
     "includes a CMake script into the project"),
    (r"CMAKE_TOOLCHAIN_FILE|GGML_VULKAN_SHADERS_GEN_TOOLCHAIN|CMAKE_USER_MAKE_RULES_OVERRIDE\w*",
     "makes CMake read a script file"),
    (r"CMAKE_\w+_(COMPILER|LINKER)_LAUNCHER", "runs a program around every compile or link"),
    (r"CMAKE_\w+_COMPILER(_\w+)?|CMAKE_LINKER\w*|CMAKE_AR|CMAKE_RANLIB|CMAKE_MAKE_PROGRAM", "replaces a build tool"),
    (r"CMAKE_\w*FLAGS\w*", "passes flags to the compiler or linker (which can load plugins)"),
    (r"CMAKE_MODULE_PATH|CMAKE_PREFIX_PATH|\w+_DIR|\w+_ROOT|\w+_INSTALL_\w+|CMAKE_INSTALL_\w+",
     "points CMake at files outside the llama.cpp source"),
]


def _allowed_summary() -> str:
    return ("the llama.cpp and ggml options of the vendored source (GGML_* and LLAMA_* booleans, ON or OFF, "
            "and " + ", ".join(n for n in STRING_OPTIONS if not n.startswith("CMAKE_")) + "), and "
            + ", ".join(n for n in STRING_OPTIONS if n.startswith("CMAKE_")))


def problem(name: str, value: str) -> str | None:
    """Why [build.cmake] may not set `name = value`; None when it may."""
    if name in BOOLEAN_OPTIONS:
        if value.upper() not in BOOLEAN_VALUES:
            return f"CMake option {name} is ON or OFF, got {value!r}"
        return None
    if name in STRING_OPTIONS:
        pattern, valid = STRING_OPTIONS[name]
        if not re.fullmatch(pattern, value):
            return f"CMake option {name} must be {valid}, got {value!r}"
        return None
    for pattern, why in _RUNS_CODE:
        if re.fullmatch(pattern, name):
            return (f"CMake option {name} is refused: it {why}, and a target file is data that must not run code; "
                    f"allowed: {_allowed_summary()}")
    known = sorted(BOOLEAN_OPTIONS | set(STRING_OPTIONS))
    return f"unknown CMake option {name!r}{did_you_mean(name, known)}; allowed: {_allowed_summary()}"
