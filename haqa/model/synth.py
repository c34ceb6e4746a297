"""Synthetic models: random weights in a real architecture's shapes, for measuring speed and memory
of models too large to download here. Quality is never reported for them (haqa.synthetic = true).

Tensors are written as valid Q8_0 blocks (a constant fp16 scale, random int8 values) straight to the
GGUF, one tensor at a time, so even an 8B shape needs no float copy in memory; other quant types are
made from that file by llama-quantize on the device, as for any model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import gguf
import numpy as np

from haqa.errors import UserError, did_you_mean

SYNTHETIC_KEY = "haqa.synthetic"
Q8_BLOCK = 32


@dataclass(frozen=True)
class Shape:
    arch: str  # GGUF architecture: llama | qwen2
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    head_dim: int
    n_ctx_train: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    qkv_bias: bool = False

    def n_params(self) -> int:
        attn = self.n_embd * self.head_dim * (2 * self.n_head + 2 * self.n_head_kv)
        ffn = 3 * self.n_embd * self.n_ff
        out = 0 if self.tied_embeddings else self.n_vocab * self.n_embd
        return self.n_layer * (attn + ffn + 2 * self.n_embd) + self.n_vocab * self.n_embd + out + self.n_embd


# Shapes from each model's published config.json on the Hugging Face hub.
PRESETS: dict[str, Shape] = {
    "llama-3.2-1b": Shape("llama", 16, 2048, 8192, 32, 8, 128256, 64, 131072, 500000.0, 1e-5, True),
    "llama-3.2-3b": Shape("llama", 28, 3072, 8192, 24, 8, 128256, 128, 131072, 500000.0, 1e-5, True),
    "llama-3.1-8b": Shape("llama", 32, 4096, 14336, 32, 8, 128256, 128, 131072, 500000.0, 1e-5, False),
    "qwen2.5-1.5b": Shape("qwen2", 28, 1536, 8960, 12, 2, 151936, 128, 32768, 1000000.0, 1e-6, True, qkv_bias=True),
}


def shape_from_hf_config(path: Path) -> Shape:
    """A Shape from a Hugging Face config.json (llama and qwen2 model types)."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read a config.json: {e}") from None
    model_type = cfg.get("model_type")
    if model_type not in ("llama", "qwen2"):
        raise UserError(f"{path}: model_type {model_type!r} is not supported by haqa synth; supported: llama, qwen2")
    try:
        n_head = int(cfg["num_attention_heads"])
        return Shape(
            arch=model_type, n_layer=int(cfg["num_hidden_layers"]), n_embd=int(cfg["hidden_size"]),
            n_ff=int(cfg["intermediate_size"]), n_head=n_head, n_head_kv=int(cfg.get("num_key_value_heads", n_head)),
            n_vocab=int(cfg["vocab_size"]), head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // n_head),
            n_ctx_train=int(cfg.get("max_position_embeddings", 4096)), rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rms_eps=float(cfg.get("rms_norm_eps", 1e-5)), tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2",
        )
    except KeyError as e:
        raise UserError(f"{path}: config.json lacks {e}") from None


def resolve_shape(like: str, layers: int | None = None) -> Shape:
    if like in PRESETS:
        shape = PRESETS[like]
    elif like.endswith(".json") or Path(like).is_file():
        shape = shape_from_hf_config(Path(like))
    else:
        raise UserError(f"unknown model shape '{like}'{did_you_mean(like, PRESETS)}; "
                        f"presets: {', '.join(PRESETS)}, or a path to a Hugging Face config.json")
    return replace(shape, n_layer=layers) if layers else shape


def _tensors(s: Shape) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape (rows, cols), quantized?) in file order."""
    q, kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    out = [("token_embd.weight", (s.n_vocab, s.n_embd), True)]
    for i in range(s.n_layer):
        b = f"blk.{i}"
        out += [(f"{b}.attn_norm.weight", (s.n_embd,), False),
                (f"{b}.attn_q.weight", (q, s.n_embd), True),
                (f"{b}.attn_k.weight", (kv, s.n_embd), True),
                (f"{b}.attn_v.weight", (kv, s.n_embd), True)]
        if s.qkv_bias:
            out += [(f"{b}.attn_q.bias", (q,), False), (f"{b}.attn_k.bias", (kv,), False),
                    (f"{b}.attn_v.bias", (kv,), False)]
        out += [(f"{b}.attn_output.weight", (s.n_embd, q), True),
                (f"{b}.ffn_norm.weight", (s.n_embd,), False),
                (f"{b}.ffn_gate.weight", (s.n_ff, s.n_embd), True),
                (f"{b}.ffn_up.weight", (s.n_ff, s.n_embd), True),
                (f"{b}.ffn_down.weight", (s.n_embd, s.n_ff), True)]
    out.append(("output_norm.weight", (s.n_embd,), False))
    if not s.tied_embeddings:
        out.append(("output.weight", (s.n_vocab, s.n_embd), True))
    return out


def _q8_0(rows: int, cols: int, rng: np.random.Generator, fan_in: int) -> np.ndarray:
    """Random but valid Q8_0 blocks whose values have a std of about 1/sqrt(fan_in)."""
    blocks = cols // Q8_BLOCK
    out = np.empty((rows, blocks, 2 + Q8_BLOCK), dtype=np.uint8)
    scale = np.float16((1.0 / np.sqrt(fan_in)) / 73.0)  # uniform int8 in [-127, 127] has std ~73
    out[:, :, :2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    out[:, :, 2:] = rng.integers(-127, 128, size=(rows, blocks, Q8_BLOCK), dtype=np.int8).view(np.uint8)
    return out.reshape(rows, blocks * (2 + Q8_BLOCK))


def _vocab(n: int) -> tuple[list[bytes], list[float], list[int]]:
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    tokens += [f"\u2581t{i}".encode() for i in range(n - len(tokens))]
    types += [gguf.TokenType.NORMAL] * (n - len(types))
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(n - 259)]
    return tokens, scores, [int(t) for t in types]


def write_synthetic(shape: Shape, out: Path, *, name: str, seed: int = 0) -> Path:
    """Write a Q8_0 GGUF of `shape` with random weights to `out` (atomically)."""
    if shape.n_embd % Q8_BLOCK or shape.n_ff % Q8_BLOCK:
        raise UserError("synthetic shapes need n_embd and n_ff divisible by 32 (Q8_0 blocks)")
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(part), shape.arch)
    a = shape.arch
    w.add_name(f"synthetic {name}")
    w.add_bool(SYNTHETIC_KEY, True)
    w.add_string("haqa.synthetic.shape", json.dumps(asdict(shape)))
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_key_length(shape.head_dim)
    w.add_value_length(shape.head_dim)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(shape.rms_eps)
    w.add_vocab_size(shape.n_vocab)
    tokens, scores, types = _vocab(shape.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    del a
    plan = _tensors(shape)
    for tname, tshape, quantized in plan:
        if quantized:
            rows, cols = tshape
            w.add_tensor_info(tname, (rows, cols // Q8_BLOCK * (2 + Q8_BLOCK)), np.dtype(np.uint8),
                              rows * cols // Q8_BLOCK * (2 + Q8_BLOCK), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor_info(tname, tshape, np.dtype(np.float32), int(np.prod(tshape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for tname, tshape, quantized in plan:
        if quantized:
            rows, cols = tshape
            w.write_tensor_data(_q8_0(rows, cols, rng, fan_in=cols))
        elif tname.endswith(".bias"):
            w.write_tensor_data(np.zeros(tshape, dtype=np.float32))
        else:
            w.write_tensor_data(np.ones(tshape, dtype=np.float32))
    w.close()
    os.replace(part, out)
    return out


def is_synthetic(path: Path) -> bool:
    from haqa.model.gguf_facts import open_gguf

    f = open_gguf(path).fields.get(SYNTHETIC_KEY)
    return bool(f is not None and f.contents())


def synthetic_q8_0(like: str, *, layers: int | None = None, seed: int = 0) -> Path:
    """The Q8_0 synthetic model for a shape, written once into haqa's cache."""
    from haqa import paths, ui

    shape = resolve_shape(like, layers)
    tag = Path(like).stem if like not in PRESETS else like
    out = paths.cache_home() / "synthetic" / f"{tag}-L{shape.n_layer}-s{seed}-Q8_0.gguf"
    if not out.exists():
        ui.step(f"writing a synthetic {tag} ({shape.n_layer} layers, {shape.n_params() / 1e9:.2f}B parameters) as Q8_0")
        write_synthetic(shape, out, name=tag, seed=seed)
    return out


def synthesize(like: str, quant: str, out: Path, *, layers: int | None = None, seed: int = 0) -> Path:
    """A synthetic model of type `quant` at `out`: Q8_0 directly, other types through the local llama-quantize."""
    import shutil

    from haqa.config import load_target
    from haqa.config.quants import NEEDS_IMATRIX, QUANT_NAMES
    from haqa.hashing import cached_sha256
    from haqa.measure.quantize import quantize
    from haqa.runner import LocalRunner
    from haqa.toolchain import ensure_toolchain

    if quant not in QUANT_NAMES or quant in NEEDS_IMATRIX:
        raise UserError(f"--quant {quant!r} is not a type haqa can make{did_you_mean(quant, QUANT_NAMES)}")
    q8 = synthetic_q8_0(like, layers=layers, seed=seed)
    src = q8
    if quant != "Q8_0":
        runner = LocalRunner()
        toolchain = ensure_toolchain(runner, load_target("local"))
        src, _ = quantize(runner, toolchain, q8, cached_sha256(q8), "Q8_0", quant)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    shutil.copyfile(src, part)
    os.replace(part, out)
    return out
