"""Facts a GGUF file states about itself, read with the gguf package (header and metadata only)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from haqa.config.quants import file_type_name
from haqa.errors import UserError
from haqa.hashing import memo_beside

GGUF_MAGIC = b"GGUF"
# Arrays longer than this are the tokenizer's (vocabulary, merges, token types); per-layer arrays are shorter.
LONG_ARRAY = 4096


class _MetadataReader(gguf.GGUFReader):
    """gguf's reader, leaving the contents of long arrays unread: it parses each element into a numpy view of
    its own (seconds for a 49k-token vocabulary, tens of seconds for Llama 3's 128k tokens and 280k merges),
    and haqa reads none of them. Short arrays (per-layer head counts or window patterns) read as before."""

    def _get_field_parts(self, orig_offs: int, raw_type: int):
        if raw_type != gguf.GGUFValueType.ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype, alen = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        count, item = int(alen[0]), gguf.GGUFValueType(int(raw_itype[0]))
        if count <= LONG_ARRAY or item == gguf.GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        offs = orig_offs + 12
        if item == gguf.GGUFValueType.STRING:
            for _ in range(count):  # each string: a little-endian uint64 length, then its bytes
                offs += 8 + struct.unpack_from("<Q", self.data, offs)[0]
        else:
            offs += count * np.dtype(self.gguf_scalar_to_np[item]).itemsize
        return offs - orig_offs, [raw_itype, alen], [], [gguf.GGUFValueType.ARRAY, item]


def open_gguf(path: Path) -> gguf.GGUFReader:
    """A GGUF's metadata and tensor table (not the tokenizer's long arrays), with gguf's reader."""
    return _MetadataReader(str(path))


def check_gguf(path: Path) -> None:
    """Refuse, with a clear message, a file that is not a GGUF before anything is built or uploaded."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    if head != GGUF_MAGIC:
        raise UserError(f"{path}: not a GGUF file (starts with {head!r}, expected b'GGUF')",
                        hint="point the recipe at a .gguf file; "
                             "convert other formats with llama.cpp's convert_hf_to_gguf.py")


@dataclass(frozen=True)
class GgufFacts:
    architecture: str
    name: str
    file_type: str
    context_length: int | None
    n_layers: int | None
    n_params: int
    size_bytes: int
    synthetic: bool = False  # random weights in a real shape (haqa synth): never report quality for it

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_facts(path: Path) -> GgufFacts:
    """Facts of a GGUF; parsed once per content change (the tokenizer arrays make parsing slow)."""
    check_gguf(path)
    return GgufFacts(**memo_beside(path, ".facts-v2.json", lambda p: _parse(p).as_dict()))


def _parse(path: Path) -> GgufFacts:
    try:
        reader = open_gguf(path)
    except Exception as e:
        raise UserError(f"{path}: the GGUF cannot be parsed ({type(e).__name__}: {e}); "
                        "the file is truncated or corrupt") from None

    def field(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = field("general.architecture") or "unknown"
    ftype = field("general.file_type")
    return GgufFacts(
        architecture=str(arch),
        name=str(field("general.name") or ""),
        file_type=file_type_name(int(ftype)) if ftype is not None else "unknown",
        context_length=_int_or_none(field(f"{arch}.context_length")),
        n_layers=_int_or_none(field(f"{arch}.block_count")),
        n_params=int(sum(int(t.n_elements) for t in reader.tensors)),
        size_bytes=path.stat().st_size,
        synthetic=bool(field("haqa.synthetic")),
    )


def _int_or_none(v) -> int | None:
    return int(v) if v is not None else None
