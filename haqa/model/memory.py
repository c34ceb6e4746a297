"""Predicted peak memory of a llama.cpp configuration, from the GGUF's own metadata.

    peak = weights touched + KV cache touched + compute buffers touched + runtime overhead

- weights: the tensor bytes in the file (the gguf package's tables give each type's block size);
  with untied embeddings only the rows of token_embd that are looked up are ever read, so that
  tensor counts for the tokens used, not its size. Repacked tensors move to another buffer but are
  not counted twice (llama.cpp unmaps what it copied), and the load mode does not change the total.
- KV cache: per layer `row(type_k, head_dim_k * n_head_kv) + row(type_v, head_dim_v * n_head_kv)` per
  cell (grouped-query attention); the allocation is padded to 256 cells, but only cells that hold
  tokens are touched.
- compute: llama.cpp reserves buffers for a whole ubatch; what is touched grows with the ubatch and
  the model's widths. Its coefficients, and the fixed runtime overhead, are fitted to measured peaks
  (haqa/data/memory_calibration.json, made by `make bench`), not guessed.
- GPU layers: offloaded layers' weights and KV move to the GPU's memory; on unified-memory devices
  both count against the same RAM.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import gguf

from haqa.hashing import memo_beside
from haqa.model.gguf_facts import open_gguf

CALIBRATION = Path(__file__).resolve().parent.parent / "data" / "memory_calibration.json"
KV_PAD = 256
MIB = 2**20


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs from a GGUF."""

    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    tensor_bytes: int
    token_embd_bytes: int
    tied_embeddings: bool
    layer_bytes: int  # bytes of the repeating blocks (what -ngl moves to a GPU)
    matrices: tuple[tuple[str, str, int, int], ...] = ()  # (name, ggml type, bytes, rows) of 2-D weights

    @classmethod
    def from_gguf(cls, path: Path) -> ModelShape:
        d = memo_beside(Path(path), ".shape-v2.json", lambda p: asdict(_read_shape(p)))
        return cls(**{**d, "matrices": tuple(tuple(m) for m in d["matrices"])})

    def repacked_bytes(self, arch: str, cpu_features: list[str] | tuple[str, ...]) -> int:
        """Bytes llama.cpp copies into its CPU_REPACK buffer at load (repack on), for this CPU.

        The mapped originals were read during the copy and stay resident, so they count twice.
        Rules from ggml-cpu/repack.cpp (first match wins per tensor; token_embd is never repacked)."""
        types = repackable_types(arch, cpu_features)
        total = 0
        for name, type_name, nbytes, rows in self.matrices:
            if name == "token_embd.weight" or type_name not in types:
                continue
            if type_name == "Q4_0" and arch == "x86_64" and rows % 8:
                continue
            total += nbytes
        return total


def repackable_types(arch: str, cpu_features) -> set[str]:
    f = set(cpu_features)
    if arch == "x86_64" and "avx2" in f:
        return {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"} | ({"Q2_K"} if "avx512f" in f else set())
    if arch == "aarch64" and ({"dotprod", "i8mm"} & f):
        return {"Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "MXFP4", "Q8_0", "Q1_0"}
    return set()


def _read_shape(path: Path) -> ModelShape:
    r = open_gguf(path)

    def f(key, default=None):
        field = r.fields.get(key)
        return field.contents() if field is not None else default

    arch = f("general.architecture")
    n_head = int(f(f"{arch}.attention.head_count"))
    n_embd = int(f(f"{arch}.embedding_length"))
    names = {t.name: int(t.n_bytes) for t in r.tensors}
    matrices = tuple((t.name, t.tensor_type.name, int(t.n_bytes), int(t.shape[1]))
                     for t in r.tensors if len(t.shape) >= 2 and int(t.shape[1]) > 1)
    tok = next(t for t in r.tensors if t.name == "token_embd.weight")
    n_vocab = int(f(f"{arch}.vocab_size") or tok.shape[-1] if len(tok.shape) > 1 else tok.shape[0])
    head_k = int(f(f"{arch}.attention.key_length") or n_embd // n_head)
    return ModelShape(
        architecture=str(arch), n_layer=int(f(f"{arch}.block_count")), n_embd=n_embd,
        n_ff=int(f(f"{arch}.feed_forward_length")), n_head=n_head,
        n_head_kv=int(f(f"{arch}.attention.head_count_kv") or n_head), head_dim_k=head_k,
        head_dim_v=int(f(f"{arch}.attention.value_length") or head_k), n_vocab=n_vocab,
        tensor_bytes=sum(names.values()), token_embd_bytes=names["token_embd.weight"],
        tied_embeddings="output.weight" not in names,
        layer_bytes=sum(v for k, v in names.items() if k.startswith("blk.")),
        matrices=matrices,
    )


def row_bytes(type_name: str, n: int) -> float:
    """Bytes of n values of a ggml type (from the gguf package's block tables)."""
    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return n / block * size


def kv_bytes(shape: ModelShape, cells: int, type_k: str = "f16", type_v: str = "f16",
             layers: int | None = None) -> float:
    layers = shape.n_layer if layers is None else layers
    per_cell = (row_bytes(type_k, shape.head_dim_k * shape.n_head_kv)
                + row_bytes(type_v, shape.head_dim_v * shape.n_head_kv))
    return layers * cells * per_cell


def padded(n_ctx: int) -> int:
    return max(KV_PAD, math.ceil(n_ctx / KV_PAD) * KV_PAD)


@dataclass(frozen=True)
class Calibration:
    overhead_bytes: float  # runtime, code, thread pools
    per_ubatch_ff: float  # compute bytes touched per (ubatch token x n_ff): the FFN's f32 intermediates
    fitted_on: str = "uncalibrated"

    @classmethod
    def load(cls) -> Calibration:
        return _load_calibration()


@lru_cache(maxsize=1)
def _load_calibration() -> Calibration:
    if CALIBRATION.exists():
        d = json.loads(CALIBRATION.read_text())
        return Calibration(**{k: d[k] for k in Calibration.__dataclass_fields__})
    return Calibration(overhead_bytes=30 * MIB, per_ubatch_ff=16.0)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    kv: float
    compute: float
    overhead: float
    gpu: float  # on the GPU (offloaded layers and their KV)
    host: float  # in RAM
    basis: str

    @property
    def total(self) -> float:
        return self.host + self.gpu

    def as_dict(self) -> dict:
        return {"weights_bytes": round(self.weights), "kv_bytes": round(self.kv), "compute_bytes": round(self.compute),
                "overhead_bytes": round(self.overhead), "host_bytes": round(self.host), "gpu_bytes": round(self.gpu),
                "total_bytes": round(self.total), "basis": self.basis}


MAPPED_LOAD_MODES = ("auto", "mmap", "mmap+mlock")


def features(shape: ModelShape, *, tokens: int, ubatch: int, n_ctx: int, batch: int = 2048, repack: bool = True,
             arch: str = "x86_64", cpu_features=(), load_mode: str = "auto") -> dict[str, float]:
    """The terms of the model for `tokens` processed in a context of n_ctx (llama-bench: p + n + d)."""
    n_ctx_p = padded(n_ctx)
    u = min(ubatch, batch, n_ctx_p, max(tokens, 1))
    if shape.tied_embeddings:
        weights = shape.tensor_bytes
    else:  # only looked-up rows of the input embedding are read
        rows = min(tokens, shape.n_vocab)
        weights = shape.tensor_bytes - shape.token_embd_bytes + shape.token_embd_bytes * rows / shape.n_vocab
    # Read through a mapping, repacked tensors stay resident twice; read with plain I/O (-lm none/dio) they do not.
    repacked = shape.repacked_bytes(arch, cpu_features) if repack and load_mode in MAPPED_LOAD_MODES else 0
    return {"weights": weights + repacked, "repacked": repacked, "ubatch_ff": u * shape.n_ff}


def predict(shape: ModelShape, *, n_ctx: int, tokens: int | None = None, ubatch: int = 512, batch: int = 2048,
            type_k: str = "f16", type_v: str = "f16", n_gpu_layers: int = 0, unified_memory: bool = False,
            repack: bool = True, arch: str = "x86_64", cpu_features=(), load_mode: str = "auto",
            bench_depth: int = 0, calibration: Calibration | None = None) -> MemoryEstimate:
    """Peak memory when `tokens` (default: the whole context) have been processed.

    `bench_depth`: llama-bench keeps a copy of the KV state of its `-d` prefill; pass d to predict a
    llama-bench run (a server has no such copy)."""
    cal = calibration or Calibration.load()
    tokens = n_ctx if tokens is None else tokens
    x = features(shape, tokens=tokens, ubatch=ubatch, n_ctx=n_ctx, batch=batch, repack=repack, arch=arch,
                 cpu_features=cpu_features, load_mode=load_mode)
    cells = min(tokens, padded(n_ctx))
    kv = kv_bytes(shape, cells, type_k, type_v) + kv_bytes(shape, bench_depth, type_k, type_v)
    compute = cal.per_ubatch_ff * x["ubatch_ff"]
    offloaded = min(max(n_gpu_layers, 0), shape.n_layer)
    frac = offloaded / shape.n_layer if shape.n_layer else 0
    gpu = shape.layer_bytes * frac + kv * frac
    host = x["weights"] - shape.layer_bytes * frac + kv * (1 - frac) + compute + cal.overhead_bytes
    if unified_memory:
        host, gpu = host + gpu, 0.0
    return MemoryEstimate(weights=x["weights"], kv=kv, compute=compute, overhead=cal.overhead_bytes, gpu=gpu,
                          host=host, basis=f"predicted (haqa memory model, calibration: {cal.fitted_on})")


def roofline_decode_tps(shape: ModelShape, bandwidth_gbs: float, *, n_ctx: int, type_k: str = "f16",
                        type_v: str = "f16") -> float:
    """Upper bound on decode tok/s: memory bandwidth / bytes read per token (all weights but the
    embedding table, plus the KV cache at n_ctx)."""
    weights = shape.tensor_bytes - (0 if shape.tied_embeddings else shape.token_embd_bytes)
    per_token = weights + kv_bytes(shape, n_ctx, type_k, type_v)
    return bandwidth_gbs * 1e9 / per_token


def _default_tensor_type(file_type: str) -> str:
    """The main tensor type of a file type (Q4_K_M -> Q4_K), as in llama_ftype_get_default_type."""
    for suffix in ("_S", "_M", "_L"):
        if file_type.endswith(suffix) and file_type[:-2] in gguf.GGMLQuantizationType.__members__:
            return file_type[:-2]
    if file_type == "MXFP4_MOE":
        return "MXFP4"
    return file_type


def estimate_quantized(source: Path, file_type: str) -> ModelShape:
    """The shape of `source` quantized to `file_type`, without quantizing: every 2-D weight at the
    type's block size (K-quant mixes keep a few tensors at higher precision, so their files are a few
    per cent larger than this), 1-D tensors as they are."""
    base = ModelShape.from_gguf(source)
    qtype = gguf.GGMLQuantizationType[_default_tensor_type(file_type)]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    r = open_gguf(source)
    names: dict[str, int] = {}
    matrices = []
    for t in r.tensors:
        n = int(t.n_elements)
        if len(t.shape) >= 2 and int(t.shape[1]) > 1 and int(t.shape[0]) % block == 0:
            nbytes = n // block * size
            matrices.append((t.name, qtype.name, nbytes, int(t.shape[1])))
        else:
            nbytes = int(t.n_bytes)
        names[t.name] = nbytes
    return ModelShape(**{**asdict(base), "tensor_bytes": sum(names.values()),
                         "token_embd_bytes": names["token_embd.weight"],
                         "layer_bytes": sum(v for k, v in names.items() if k.startswith("blk.")),
                         "matrices": tuple(matrices)})
