"""GGUF facts through the gguf package, and refusal of files that are not GGUFs."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest

from haqa.errors import UserError
from haqa.model.gguf_facts import LONG_ARRAY, open_gguf, read_facts
from tests.support.files import write_tiny_gguf


def test_reads_architecture_type_and_shape(tiny_gguf):
    facts = read_facts(tiny_gguf)
    assert facts.architecture == "llama"
    assert facts.file_type == "F16"
    assert facts.context_length == 256 and facts.n_layers == 1
    assert facts.n_params == 16 * 8 + 8
    assert facts.size_bytes == tiny_gguf.stat().st_size


def test_facts_are_remembered_per_content(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", file_type=7)
    assert read_facts(path).file_type == "Q8_0"
    before = path.stat().st_mtime_ns
    write_tiny_gguf(path, file_type=2)  # rewritten in place: same size, a later mtime
    os.utime(path, ns=(before + 10**9, before + 10**9))  # coarse filesystem clocks could hide the rewrite
    assert read_facts(path).file_type == "Q4_0"


def test_not_a_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(UserError, match="not a GGUF file"):
        read_facts(p)


def test_truncated_gguf(tmp_path, tiny_gguf):
    p = tmp_path / "cut.gguf"
    p.write_bytes(tiny_gguf.read_bytes()[:40])
    with pytest.raises(UserError, match="truncated or corrupt"):
        read_facts(p)


def test_metadata_and_tensors_read_as_gguf_reads_them_without_the_tokenizers_long_arrays(tmp_path):
    """The vocabulary, its token types and merges (long arrays) are skipped, not parsed element by element;
    every other field, the short per-layer arrays and the tensor table read exactly as gguf's reader reads them."""
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    n = LONG_ARRAY + 5000
    w.add_token_list([f"tok{i}-\u00e9" for i in range(n)])
    w.add_token_types([1] * n)
    w.add_array("llama.attention.sliding_window_pattern", [True, False, True])
    w.add_block_count(3)
    w.add_name("after the long arrays")
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    fast, full = open_gguf(path), gguf.GGUFReader(str(path))
    assert list(fast.fields) == list(full.fields)
    assert fast.fields["tokenizer.ggml.tokens"].contents() == []
    assert fast.fields["tokenizer.ggml.token_type"].contents() == []
    assert len(full.fields["tokenizer.ggml.tokens"].contents()) == n
    for key in ("llama.attention.sliding_window_pattern", "llama.block_count", "general.name"):
        assert fast.fields[key].contents() == full.fields[key].contents(), key
    assert [(t.name, t.tensor_type, t.n_bytes, t.data_offset) for t in fast.tensors] == \
           [(t.name, t.tensor_type, t.n_bytes, t.data_offset) for t in full.tensors]
    assert np.array_equal(fast.tensors[1].data, full.tensors[1].data)
