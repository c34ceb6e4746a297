"""GGUF quant type names, taken from the gguf package's own table (never a hand-kept list)."""

from __future__ import annotations

import gguf

# llama-quantize in the pinned tree does not offer NVFP4 (tools/quantize/quantize.cpp QUANT_OPTIONS).
_NOT_OFFERED = {"NVFP4"}

# Types whose tensors need an importance matrix (src/llama-quant.cpp tensor_requires_imatrix);
# haqa does not compute imatrices yet, so these are refused with a clear reason.
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"}


def _name(member: gguf.LlamaFileType) -> str | None:
    if member.name == "ALL_F32":
        return "F32"
    if member.name.startswith("MOSTLY_"):
        return member.name.removeprefix("MOSTLY_")
    return None


FILE_TYPES: dict[str, int] = {
    n: int(m) for m in gguf.LlamaFileType if (n := _name(m)) and n not in _NOT_OFFERED
}
QUANT_NAMES: list[str] = sorted(FILE_TYPES)
USABLE_QUANTS: list[str] = [q for q in QUANT_NAMES if q not in NEEDS_IMATRIX]


def file_type_name(file_type: int) -> str:
    """Name of a GGUF `general.file_type` value (e.g. 15 -> 'Q4_K_M')."""
    for name, value in FILE_TYPES.items():
        if value == file_type:
            return name
    try:
        return gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"unknown({file_type})"
