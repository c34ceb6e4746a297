"""A landscape's grid: the deploy's own SearchSpace (haqa.agent.space.build_space, pruned by the
deploy's memory gate, haqa.model.budget.MemoryGate: host RAM and, on a GPU target, GPU memory)
restricted to a few values per knob: quant x threads x ubatch x flash attention x KV type x repack
(x GPU layers when the target has a GPU)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from haqa.agent.space import Rejected, SearchSpace, build_space
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
    """The reduced grid with the deploy's memory gate (points over a budget are kept as 'pruned')."""
    from haqa.model.budget import MemoryGate, model_shapes

    hw = target.hardware
    shape_for = model_shapes(model.path, source_facts.file_type)
    fits = MemoryGate(target, shape_for)  # the deploy's gate: host RAM, and GPU memory on a GPU target
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
        cand = structural.make(dict(zip(dims, combo, strict=True)))
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
