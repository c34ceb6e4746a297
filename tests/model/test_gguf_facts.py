"""GGUF facts through the gguf package, and refusal of files that are not GGUFs."""

from __future__ import annotations

import os

import pytest

from haqa.errors import UserError
from haqa.model.gguf_facts import read_facts
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
