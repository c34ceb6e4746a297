"""The search space: every knob the device can use, with the values worth trying.

Built from the target and the recipe: no GPU layers on a CPU-only target, never a context below the
recipe's minimum, quantized V caches only with flash attention, no CPU thread counts to search when every
layer is on the GPU. A candidate is a point of the space;
`check()` is the one gate every proposal passes (space, constraints, memory model).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from haqa.config.schema import Recipe, Target
from haqa.runtime import RuntimeConfig

# Knobs in the order a person would think about them; each maps to a RuntimeConfig field (or quant).
KNOBS = ["quant", "kv_type", "threads", "threads_batch", "n_gpu_layers", "flash_attn", "batch_size", "ubatch_size",
         "repack", "load_mode", "poll"]
# What Ollama and most model cards ship: the default deployment's type, which users already trust.
DEFAULT_QUANT = "Q4_K_M"
# Knobs that only change how the CPU runs layers: without effect once every layer is on the GPU.
CPU_THREAD_KNOBS = ("threads", "threads_batch")


@dataclass(frozen=True)
class Candidate:
    quant: str
    config: RuntimeConfig

    def values(self) -> dict:
        c = self.config
        return {"quant": self.quant, "kv_type": c.cache_type_k, "threads": c.threads,
                "threads_batch": c.prefill_threads, "n_gpu_layers": c.n_gpu_layers, "flash_attn": c.flash_attn,
                "batch_size": c.batch_size, "ubatch_size": c.ubatch_size, "repack": c.repack,
                "load_mode": c.load_mode, "poll": c.poll}

    @property
    def key(self) -> str:
        return hashlib.sha256(
            json.dumps({"quant": self.quant, **self.config.as_dict()}, sort_keys=True).encode()
        ).hexdigest()[:16]

    @property
    def name(self) -> str:
        v = self.values()
        return " ".join(f"{k}={v[k]}" for k in KNOBS)


class Rejected(ValueError):
    """A proposal that cannot be measured; the message says why (it goes back to the proposer)."""


@dataclass(frozen=True)
class SearchSpace:
    dims: dict[str, list]
    ctx_size: int
    fits: Callable[[Candidate], tuple[bool, str]] | None = None  # the memory model's verdict
    full_offload: int | None = None  # n_gpu_layers that puts every layer on the GPU (GPU targets)

    def make(self, values: dict) -> Candidate:
        """A candidate from knob values (missing knobs take the default); Rejected if outside the space."""
        full = {**self.default_values(), **values}
        unknown = set(full) - set(self.dims)
        if unknown:
            raise Rejected(f"unknown knob(s) {sorted(unknown)}; knobs: {', '.join(self.dims)}")
        for knob, value in full.items():
            if value not in self.dims[knob]:
                raise Rejected(f"{knob}={value!r} is outside the space; allowed: {self.dims[knob]}")
        kv = full["kv_type"]
        config = RuntimeConfig(
            threads=full["threads"], threads_batch=full["threads_batch"], ctx_size=self.ctx_size,
            n_gpu_layers=full["n_gpu_layers"], batch_size=full["batch_size"], ubatch_size=full["ubatch_size"],
            cache_type_k=kv, cache_type_v=kv, flash_attn=full["flash_attn"], repack=full["repack"],
            load_mode=full["load_mode"], poll=full["poll"],
        )
        return Candidate(full["quant"], config)

    def default_values(self) -> dict:
        """llama.cpp's own defaults where the space has them, else the first value."""
        prefs = {"flash_attn": "auto", "batch_size": 2048, "ubatch_size": 512, "repack": True, "load_mode": "auto",
                 "poll": 50, "kv_type": "f16", "n_gpu_layers": max(self.dims["n_gpu_layers"])}
        out = {}
        for knob, values in self.dims.items():
            want = prefs.get(knob)
            out[knob] = want if want in values else values[-1] if knob in ("threads", "threads_batch") else values[0]
        return out

    def check(self, cand: Candidate) -> None:
        """Constraints beyond the per-knob values; Rejected with the reason."""
        c = cand.config
        if c.ubatch_size > c.batch_size:
            raise Rejected(f"ubatch_size {c.ubatch_size} > batch_size {c.batch_size}")
        if c.cache_type_v not in ("f16", "bf16", "f32") and c.flash_attn == "off":
            raise Rejected(f"a quantized V cache ({c.cache_type_v}) needs flash_attn on or auto")
        if self.full_offload is not None and c.n_gpu_layers >= self.full_offload:
            defaults, values = self.default_values(), cand.values()
            for knob in CPU_THREAD_KNOBS:
                if values[knob] != defaults[knob]:
                    raise Rejected(f"{knob}={values[knob]} has no effect with every layer on the GPU "
                                   f"(n_gpu_layers={c.n_gpu_layers}); leave it at {defaults[knob]}")
        if c.ctx_size < self.ctx_size:
            raise Rejected(f"context {c.ctx_size} is below the recipe's minimum {self.ctx_size}")
        if self.fits is not None:
            ok, why = self.fits(cand)
            if not ok:
                raise Rejected(why)

    def valid(self, cand: Candidate) -> bool:
        try:
            self.check(cand)
            return True
        except Rejected:
            return False

    def grid(self) -> Iterator[Candidate]:
        """Every valid point, quant first (a deterministic order)."""
        knobs = list(self.dims)
        for combo in itertools.product(*(self.dims[k] for k in knobs)):
            try:
                cand = self.make(dict(zip(knobs, combo, strict=True)))
            except Rejected:
                continue
            if self.valid(cand):
                yield cand

    def size(self) -> int:
        n = 1
        for v in self.dims.values():
            n *= len(v)
        return n

    def describe(self) -> dict:
        return {"knobs": {k: v for k, v in self.dims.items()}, "ctx_size": self.ctx_size,
                "defaults": self.default_values()}


def _thread_counts(cores: int) -> list[int]:
    return sorted({1, max(1, cores // 2), max(1, cores - 1), cores})


def build_space(target: Target, recipe: Recipe, *, n_layer: int,
                fits: Callable[[Candidate], tuple[bool, str]] | None = None) -> SearchSpace:
    hw = target.hardware
    gpu = hw.gpu.kind != "none"
    threads = _thread_counts(hw.cores)
    dims = {
        "quant": list(recipe.search.quants),
        "kv_type": list(recipe.quality.kv_types),
        "threads": threads,
        "threads_batch": threads,
        "n_gpu_layers": sorted({0, n_layer // 2, n_layer + 1}) if gpu else [0],
        "flash_attn": ["auto", "on", "off"],
        "batch_size": [512, 2048],
        "ubatch_size": [128, 256, 512],
        "repack": [True, False],
        "load_mode": ["auto", "none"],
        "poll": [0, 50],
    }
    return SearchSpace(dims=dims, ctx_size=recipe.workload.min_context, fits=fits,
                       full_offload=n_layer + 1 if gpu else None)

