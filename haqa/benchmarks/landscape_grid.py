"""A landscape's grid: the pipeline's own SearchSpace (haqa.agent.space.build_space, with the memory
model's pruning) restricted to a few values per knob, quant x threads x ubatch x flash attention x
KV type x repack (x GPU layers when the target has a GPU), and what the memory model predicts for
its quants (the pruning, and the LLM proposer's facts)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

from haqa.agent.space import Candidate, Rejected, SearchSpace, build_space
from haqa.errors import UserError

LANDSCAPE_KV = ["f16", "q8_0"]  # the grid adds q8_0 to the recipe's KV types: it is a real knob


@dataclass
class Grid:
    """The reduced grid of one (recipe, target): its knob values, its points, the full space it was
    taken from, and the memory model's shapes per quant."""

    label: str
    full: SearchSpace
    dims: dict[str, list]
    points: list[dict]
    kv_types: list[str]
    shape_for: Callable

    @property
    def space(self) -> SearchSpace:
        """The reduced space without the memory model: every planned point can be made in it."""
        return SearchSpace(dims=self.dims, ctx_size=self.full.ctx_size)


def plan_grid(target, recipe, model, source_facts, *, quick: bool, overrides: tuple[str, ...]) -> Grid:
    """The reduced grid with the pipeline's memory-model pruning (points over budget are kept as 'pruned')."""
    from haqa.model import memory
    from haqa.model.budget import predicted_peak

    hw = target.hardware
    budget_bytes = (hw.ram_gib - target.limits.memory_headroom_gib) * 2**30
    shapes: dict[str, memory.ModelShape] = {}

    def shape_for(quant: str) -> memory.ModelShape:  # as the pipeline predicts it
        if quant not in shapes:
            shapes[quant] = (memory.ModelShape.from_gguf(model.path) if quant == source_facts.file_type
                             else memory.estimate_quantized(model.path, quant))
        return shapes[quant]

    def fits(cand: Candidate) -> tuple[bool, str]:  # the pipeline's memory-model pruning
        need = predicted_peak(target, shape_for(cand.quant), cand.config, tokens=cand.config.ctx_size)
        if need.host > budget_bytes:
            return False, (f"the memory model predicts {need.host / 2**30:.2f} GiB for {cand.quant} with KV "
                           f"{cand.config.cache_type_k}, over the {budget_bytes / 2**30:.2f} GiB budget")
        return True, "fits"

    label = f"{recipe.name}@{target.name}"
    kv_types = list(dict.fromkeys([*recipe.quality.kv_types, *LANDSCAPE_KV]))
    wide = recipe.model_copy(update={"quality": recipe.quality.model_copy(update={"kv_types": kv_types})})
    full = build_space(target, wide, n_layer=source_facts.n_layers or 1, fits=fits)
    dims = {**reduced_dims(full.dims, hw.cores, gpu=hw.gpu.kind != "none", quick=quick),
            **parse_overrides(overrides, full.dims)}
    points = plan_points(dims, full.ctx_size, fits)
    if not points:
        raise UserError(f"the reduced grid of {label} has no point")
    return Grid(label, full, dims, points, kv_types, shape_for)


def reduced_dims(full: dict[str, list], cores: int, *, gpu: bool = False, quick: bool = False) -> dict[str, list]:
    """A few values per knob, each taken from the full space.

    Prompt processing always gets every core (threads_batch); decode threads vary over {cores/2,
    cores} on a CPU-only target; with a GPU, GPU layers vary instead, and decode threads and weight
    repacking (which concern only the layers left on the CPU) stay at every core and llama.cpp's
    default, which keeps a GPU machine's grid to minutes; batch stays at llama.cpp's default 2048 (a prompt
    shorter than a batch never sees it) while ubatch varies; load mode and polling stay at
    llama.cpp's defaults."""
    def keep(knob: str, values: list) -> list:
        kept = [v for v in values if v in full[knob]]
        return kept or [full[knob][-1]]

    dims = {
        "quant": list(full["quant"]),
        "kv_type": keep("kv_type", LANDSCAPE_KV),
        "threads": keep("threads", [cores] if gpu else sorted({max(1, cores // 2), cores})),
        "threads_batch": keep("threads_batch", [cores]),
        "n_gpu_layers": list(full["n_gpu_layers"]),
        "flash_attn": keep("flash_attn", ["on", "off"]),
        "batch_size": keep("batch_size", [2048]),
        "ubatch_size": keep("ubatch_size", [128, 512]),
        "repack": keep("repack", [True] if gpu else [True, False]),
        "load_mode": keep("load_mode", ["auto"]),
        "poll": keep("poll", [50]),
    }
    if quick:  # two points: checks the harness, not the landscape
        dims.update(quant=dims["quant"][:1], kv_type=["f16"], threads=[dims["threads"][-1]], flash_attn=["on"],
                    ubatch_size=[512], n_gpu_layers=[max(full["n_gpu_layers"])])
    return dims


def plan_points(dims: dict[str, list], ctx_size: int, fits) -> list[dict]:
    """Every point of the reduced space: constraint-breaking combinations are not points (a quantized
    V cache without flash attention, ...); those the memory model rejects are kept as 'pruned'."""
    structural = SearchSpace(dims=dims, ctx_size=ctx_size)  # the constraints without the memory model
    points = []
    for combo in itertools.product(*(dims[k] for k in dims)):
        cand = structural.make(dict(zip(dims, combo)))
        try:
            structural.check(cand)
        except Rejected:
            continue
        ok, why = fits(cand) if fits else (True, "")
        points.append({"values": cand.values(), "key": cand.key, "status": "pending" if ok else "pruned",
                       **({} if ok else {"cause": "memory", "error": why})})
    return points


def parse_overrides(items: tuple[str, ...], full: dict[str, list]) -> dict[str, list]:
    """`--set knob=v1,v2`: values must be in the full space (matched as text, case-insensitive)."""
    out: dict[str, list] = {}
    for item in items:
        knob, sep, text = item.partition("=")
        knob = knob.strip()
        if not sep or knob not in full:
            raise UserError(f"--set {item!r}: expected KNOB=V1,V2 with KNOB one of {', '.join(full)}")
        by_text = {str(v).lower(): v for v in full[knob]}
        values = []
        for t in text.split(","):
            t = t.strip().lower()
            if t not in by_text:
                raise UserError(f"--set {item!r}: {t!r} is not a value of {knob} in this space; "
                                f"allowed: {', '.join(str(v) for v in full[knob])}")
            values.append(by_text[t])
        out[knob] = values
    return out


def prompt_facts(target, recipe, source_facts, quants, shape_for, base) -> dict:
    """The LLM proposer's static facts, computed as haqa.pipeline._make_proposer computes them."""
    from haqa.agent import objective as obj
    from haqa.model import memory
    from haqa.model.budget import predicted_peak

    hw = target.hardware
    bandwidth = hw.gpu.mem_bandwidth_gbs if hw.gpu.kind != "none" and hw.gpu.mem_bandwidth_gbs else hw.mem_bandwidth_gbs
    predictions = {}
    for q in quants:
        shape = shape_for(q)
        est = predicted_peak(target, shape, base, tokens=base.ctx_size)
        predictions[q] = {"predicted_peak_mib": round(est.total / 2**20),
                          "weights_read_per_token_mib": round(shape.tensor_bytes / 2**20),
                          "roofline_decode_tps": round(memory.roofline_decode_tps(shape, bandwidth, n_ctx=base.ctx_size), 1)
                          if bandwidth else None}
    return {
        "device": {"name": target.name, "os": target.os, **hw.model_dump(mode="json")},
        "model": {"architecture": source_facts.architecture, "name": source_facts.name,
                  "parameters": source_facts.n_params, "layers": source_facts.n_layers,
                  "source_type": source_facts.file_type, "synthetic": source_facts.synthetic},
        "objective": obj.describe(recipe.objective, recipe.workload.prompt_tokens),
        "constraints": {"max_kld": recipe.quality.max_kld, "max_ppl_ratio": recipe.quality.max_ppl_ratio,
                        "min_context": recipe.workload.min_context,
                        "memory_budget_gib": round(hw.ram_gib - target.limits.memory_headroom_gib, 2)},
        "predictions": predictions,
    }
