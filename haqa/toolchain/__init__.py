"""The llama.cpp toolchain: the matched source, CMake flags per target, and a build cache keyed by hash."""

from haqa.toolchain.build import TOOLS, Toolchain, ensure_toolchain
from haqa.toolchain.source import LLAMA_CPP_PYTHON_VERSION, LlamaCppSource, llama_cpp_source

__all__ = ["LLAMA_CPP_PYTHON_VERSION", "TOOLS", "LlamaCppSource", "Toolchain", "ensure_toolchain", "llama_cpp_source"]
