"""haqa: an edge-deployment build system for llama.cpp, tuned by measurement on the device."""

__version__ = "0.1.0"
