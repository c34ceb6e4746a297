"""The checkout the tests run in, and small files they write (a valid GGUF without real weights)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def write_tiny_gguf(path: Path, arch: str = "llama", file_type: int = 1) -> Path:
    """A small, valid GGUF (metadata and two F32 tensors): enough for the parsers, not for inference."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_file_type(file_type)
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
