"""Measurements on the device: quantize (cached), llama-bench speed, and parsers of llama.cpp's output."""
