"""Full landscapes: every point of a reduced but real search grid (haqa.benchmarks.landscape_grid),
measured for one (recipe, target).

Every point is measured with the functions a deploy uses: llama-quantize (cached), llama-bench under
haqa.agent.trials.SPEED_POLICY, and llama-perplexity KLD against the cached reference logits. Quality
depends only on (quant, KV type), so it is measured once per pair; synthetic models get none (the
quality budget cannot apply to random weights).

Points are measured in a shuffled order (fixed seed), so drift over the run cannot line up with a
knob; the pipeline's drift guard (a fixed anchor re-measured every few points) runs throughout, and
points measured while the anchor moved are measured again. At the end the best few feasible points
are measured a second time, to show how far a "best" can be trusted.

The file (haqa.benchmarks.landscape_file) is rewritten atomically after every point; running the
same command again resumes it. `haqa.benchmarks.replay` replays proposers against these files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import random
import time
from pathlib import Path

from haqa import __version__, ui
from haqa.agent.facts import prompt_facts
from haqa.benchmarks.landscape_file import KIND, MEASURED, SCHEMA, read_for_resume
from haqa.benchmarks.landscape_grid import Grid, plan_grid
from haqa.benchmarks.landscape_session import REPEAT_TOP, Options, Session, Subject, now
from haqa.config import find_file, fingerprint, load_recipe, load_target


def measure(target_name: str, recipe_name: str, out: Path, *, quick: bool = False, overrides: tuple[str, ...] = (),
            seed: int = 0, fresh: bool = False, max_minutes: float | None = None, limit: int | None = None,
            jobs: int | None = None, repeat_top: int = REPEAT_TOP, plan_only: bool = False,
            quiet_guard: bool = True) -> dict:
    """Measure (or resume) a landscape and write it to `out`; returns the data. `quiet_guard=False`
    measures without waiting for (or re-measuring after) other processes' load on this machine."""
    from haqa.measure.corpus import load_corpus
    from haqa.model.gguf_facts import read_facts
    from haqa.model.source import resolve_model
    from haqa.runner import runner_for

    opts = Options(quick=quick, overrides=overrides, seed=seed, fresh=fresh, max_minutes=max_minutes, limit=limit,
                   jobs=jobs, repeat_top=repeat_top, plan_only=plan_only, quiet_guard=quiet_guard)
    target = load_target(target_name)
    recipe_file = find_file("recipes", recipe_name)
    recipe = load_recipe(recipe_name)
    model = resolve_model(recipe, recipe_file.parent)
    subject = Subject(target, recipe, model, read_facts(model.path),
                      load_corpus(recipe.quality.corpus, recipe_file.parent), (target_name, recipe_name))
    runner = None if plan_only else runner_for(target)
    try:
        return _measure_on(runner, subject, out, opts)
    finally:
        if runner is not None:
            runner.close()


def _measure_on(runner, subject: Subject, out: Path, opts: Options) -> dict:
    from haqa.measure.quality import QualitySettings
    from haqa.pipeline import default_config
    from haqa.toolchain import ensure_toolchain

    started = time.monotonic()
    recipe, model = subject.recipe, subject.model
    grid = plan_grid(subject.target, recipe, model, subject.source_facts, quick=opts.quick, overrides=opts.overrides)
    if opts.plan_only:
        return {"label": grid.label, "dims": grid.dims, "points": grid.points, "complete": False, "wall_s": 0.0}

    toolchain = ensure_toolchain(runner, subject.target, jobs=opts.jobs)
    ui.note(f"llama.cpp {toolchain.commit[:8]} toolchain {toolchain.key} in {toolchain.root}")
    if runner.shares_filesystem:
        device_source = model.path
    else:
        device_source = runner.dir("models", "src", f"{model.sha256[:16]}.gguf")
        runner.put(model.path, device_source)
    settings = QualitySettings(ctx=recipe.quality.ctx, chunks=recipe.quality.chunks)
    base = default_config(subject.target, recipe)  # the pipeline's: reference logits' threads, LLM predictions
    grid_key = _grid_key(subject, grid, toolchain, settings, opts.seed)
    data = None if opts.fresh else read_for_resume(out, grid_key)
    if data is not None:
        ui.note(f"resuming {out}: {sum(p['status'] in MEASURED for p in data['points'])} of "
                f"{len(data['points'])} points already measured")
    else:
        data = _new_file(runner, subject, grid, toolchain, settings, base, grid_key, opts)
    data["command"] = _command(*subject.names, out, opts.quick, opts.overrides, opts.seed)
    session = Session(runner, toolchain, device_source, subject, grid, data, out, opts, started)
    session.announce()
    session.measure_quality(base.threads, settings)
    session.measure_speed()
    return session.finish()


def _grid_key(subject: Subject, grid: Grid, toolchain, settings, seed: int) -> str:
    """What a landscape is a measurement of: resuming a file needs the same key."""
    from haqa.agent.trials import SPEED_POLICY

    definition = {"dims": grid.dims, "ctx_size": grid.full.ctx_size, "recipe_sha256": fingerprint(subject.recipe),
                  "target_sha256": fingerprint(subject.target), "source_sha256": subject.model.sha256,
                  "toolchain": toolchain.key, "speed_policy": dataclasses.asdict(SPEED_POLICY), "seed": seed,
                  "quality": None if subject.source_facts.synthetic
                  else dataclasses.asdict(settings) | {"corpus_sha256": subject.corpus.sha256}}
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _new_file(runner, subject: Subject, grid: Grid, toolchain, settings, base, grid_key: str, opts: Options) -> dict:
    """A new landscape: what it measures and how, and its points in a shuffled order, none measured yet."""
    from haqa.agent.trials import SPEED_POLICY

    target, recipe, model, facts, corpus = (subject.target, subject.recipe, subject.model, subject.source_facts,
                                            subject.corpus)
    w, dims, points, synthetic = recipe.workload, grid.dims, grid.points, facts.synthetic
    order = [i for i, p in enumerate(points) if p["status"] == "pending"]
    random.Random(opts.seed).shuffle(order)
    for rank, i in enumerate(order):
        points[i]["order"] = rank
    # The anchor runs where the grid's points run: on a GPU target with every layer on the GPU (the
    # pipeline's own anchor, its default CPU config, would time an 8B model on the CPU every 3 points).
    anchor_config = grid.space.make({}).config
    return {
        "schema": SCHEMA, "kind": KIND, "grid_key": grid_key, "label": grid.label, "complete": False,
        "haqa_version": __version__, "created": now(), "command": None, "wall_s": 0.0, "sessions": [],
        "target": {"name": target.name, "sha256": fingerprint(target), "facts": target.model_dump(mode="json")},
        "measured_on": {**runner.describe(), "host_platform": platform.platform()},
        "recipe": {"name": recipe.name, "sha256": fingerprint(recipe), "workload": w.model_dump(),
                   "quality_budget": recipe.quality.model_dump(), "objective": recipe.objective.model_dump(),
                   "search": recipe.search.model_dump()},
        "model": {"source": model.source, "sha256": model.sha256, "file_type": facts.file_type,
                  "architecture": facts.architecture, "n_params": facts.n_params,
                  "n_layers": facts.n_layers, "synthetic": synthetic},
        "synthetic": synthetic,
        "llama_cpp": {"commit": toolchain.commit, "toolchain_key": toolchain.key,
                      "cmake_options": toolchain.cmake_options, "llama_cpp_python": toolchain.llama_cpp_python},
        "speed_method": {"tool": "llama-bench", **dataclasses.asdict(SPEED_POLICY),
                         "prefill": f"{w.prompt_tokens} tokens at depth 0",
                         "decode": f"{w.gen_tokens} tokens at depth {w.prompt_tokens}"},
        "quality_method": ("not measured: synthetic weights" if synthetic else
                           {"reference": f"the source GGUF ({facts.file_type})", "corpus": corpus.name,
                            "corpus_sha256": corpus.sha256, "ctx": settings.ctx, "chunks": settings.chunks,
                            "tool": "llama-perplexity --kl-divergence",
                            "note": "measured once per (quant, KV type): the other knobs do not change logits"}),
        "space": {"dims": dims, "ctx_size": grid.full.ctx_size, "full_dims": grid.full.dims,
                  "reduction": "haqa.benchmarks.landscape_grid.reduced_dims" + (" (quick)" if opts.quick else "")
                               + (f"; --set {' '.join(opts.overrides)}" if opts.overrides else ""),
                  "kv_types_added": [k for k in grid.kv_types if k not in recipe.quality.kv_types]},
        "order": {"seed": opts.seed, "how": "every measured point in a shuffled order (random.Random(seed).shuffle)"},
        "weight_bytes": {q: float(grid.shape_for(q).tensor_bytes) for q in dims["quant"]},
        "weight_bytes_basis": "predicted (haqa memory model: tensor bytes per quant, as the pipeline's heuristic uses)",
        "prompt_facts": prompt_facts(target, recipe, facts, dims["quant"], grid.shape_for, base),
        "quality": {}, "points": points,
        "anchor": {"config": anchor_config.as_dict(), "model": "the source GGUF", "history": [],
                   "what": "the drift guard's anchor: decode of 32 tokens, 3 runs, median; the source GGUF at "
                           "the reduced space's default point (llama.cpp's defaults; every GPU layer on a GPU)"},
        "repeats": [],
    }


def _command(target: str, recipe: str, out: Path, quick: bool, overrides: tuple[str, ...], seed: int) -> str:
    parts = ["haqa bench landscape", f"--target {target}", f"--recipe {recipe}"]
    if quick:
        parts.append("--quick")
    parts += [f"--set {o}" for o in overrides]
    if seed:
        parts.append(f"--seed {seed}")
    parts.append(f"--out {out}")
    return " ".join(parts)
