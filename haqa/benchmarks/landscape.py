"""Full landscapes: every point of a reduced but real search grid, measured for one (recipe, target).

The grid is the pipeline's own SearchSpace (haqa.agent.space.build_space, with the memory model's
pruning) restricted to a few values per knob: quant x threads x ubatch x flash attention x KV type x
repack (x GPU layers when the target has a GPU). Every point is measured with the functions a deploy
uses: llama-quantize (cached), llama-bench under haqa.pipeline.SPEED_POLICY, and llama-perplexity
KLD against the cached reference logits. Quality depends only on (quant, KV type), so it is measured
once per pair; synthetic models get none (the quality budget cannot apply to random weights).

Points are measured in a shuffled order (fixed seed), so drift over the run cannot line up with a
knob; the pipeline's drift guard (a fixed anchor re-measured every few points) runs throughout, and
points measured while the anchor moved are measured again. At the end the best few feasible points
are measured a second time, to show how far a "best" can be trusted.

The file is rewritten atomically after every point; running the same command again resumes it.
`haqa.benchmarks.replay` replays proposers against these files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import random
import time
from pathlib import Path

from haqa import __version__, ui
from haqa.agent.space import KNOBS, Candidate, Rejected, SearchSpace, build_space
from haqa.config import find_file, fingerprint, load_recipe, load_target
from haqa.errors import ToolFailed, UserError

SCHEMA = 1
KIND = "haqa-landscape"
LANDSCAPE_KV = ["f16", "q8_0"]  # the grid adds q8_0 to the recipe's KV types: it is a real knob
REPEAT_TOP = 3  # best feasible points measured a second time at the end
QUIET = 0.05  # wait until other processes use less than this share of the machine's CPU ...
CONTENDED = 0.10  # ... and measure a point again when they used more than this while it ran
MAX_WAIT_S = 900  # per point; then it is measured anyway and marked
MEASURE_ATTEMPTS = 3


class ForeignLoad:
    """How much of this machine's CPU other processes use (Linux /proc/stat against haqa's own
    rusage, children included): a shared machine's other work must not end up in a landscape.
    For the local runner only; on a remote device the drift guard is what watches."""

    def __init__(self, max_wait_s: float = MAX_WAIT_S):
        self.max_wait_s = max_wait_s
        self.cores = os.cpu_count() or 1
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = Path("/proc/stat").exists()
        self._t0: tuple[float, float, float] | None = None

    def _busy_s(self) -> float:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return (sum(f[:8]) - idle) / self.tick

    @staticmethod
    def _ours_s() -> float:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def start(self) -> None:
        if self.available:
            self._t0 = (time.monotonic(), self._busy_s(), self._ours_s())

    def share(self) -> float:
        """Share of all cores' time since start() that went to other processes."""
        if not self.available or self._t0 is None:
            return 0.0
        t, busy, ours = self._t0
        wall = max(time.monotonic() - t, 1e-3)
        return max(0.0, (self._busy_s() - busy) - (self._ours_s() - ours)) / (wall * self.cores)

    def wait_quiet(self) -> float:
        """Wait until the machine is quiet (2-second samples, at most max_wait_s); returns the seconds waited."""
        if not self.available or self.max_wait_s <= 0:
            return 0.0
        t0 = time.monotonic()
        said = False
        while True:
            self.start()
            time.sleep(2)
            if self.share() < QUIET or time.monotonic() - t0 > self.max_wait_s:
                return time.monotonic() - t0
            if not said:
                ui.note(f"other processes use {self.share():.0%} of the CPU: waiting for a quiet machine")
                said = True


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


def values_key(values: dict) -> str:
    """A point's identity in a landscape file: its knob values, canonical JSON."""
    return json.dumps({k: values[k] for k in KNOBS}, sort_keys=True)


def _atomic_write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(part, path)


def _budget_for(minutes: float | None) -> str:
    return "" if minutes is None else f" (stops after {minutes:g} min; run again to resume)"


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

    target = load_target(target_name)
    recipe_file = find_file("recipes", recipe_name)
    recipe = load_recipe(recipe_name)
    model = resolve_model(recipe, recipe_file.parent)
    source_facts = read_facts(model.path)
    corpus = load_corpus(recipe.quality.corpus, recipe_file.parent)
    runner = None if plan_only else runner_for(target)
    try:
        return _measure_on(runner, target, recipe, model, source_facts, corpus, out, quick=quick, overrides=overrides,
                           names=(target_name, recipe_name),
                           seed=seed, fresh=fresh, max_minutes=max_minutes, limit=limit, jobs=jobs,
                           repeat_top=repeat_top, plan_only=plan_only, quiet_guard=quiet_guard)
    finally:
        if runner is not None:
            runner.close()


def _measure_on(runner, target, recipe, model, source_facts, corpus, out: Path, *, quick, overrides, names, seed, fresh,
                max_minutes, limit, jobs, repeat_top, plan_only=False, quiet_guard=True) -> dict:
    from haqa.benchmarks.replay import Landscape
    from haqa.measure.bench import quick_decode, run_bench
    from haqa.measure.drift import DriftGuard
    from haqa.measure.quality import QualitySettings, measure_quality, reference_logits
    from haqa.measure.quantize import quantize
    from haqa.model import memory
    from haqa.agent.trials import SPEED_POLICY
    from haqa.errors import failure_cause as _failure_cause
    from haqa.model.budget import predicted_peak
    from haqa.pipeline import default_config
    from haqa.toolchain import ensure_toolchain

    started = time.monotonic()
    label = f"{recipe.name}@{target.name}"
    synthetic = source_facts.synthetic
    w = recipe.workload
    hw = target.hardware
    base = default_config(target, recipe)  # the pipeline's: reference logits' threads, LLM predictions
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

    kv_types = list(dict.fromkeys([*recipe.quality.kv_types, *LANDSCAPE_KV]))
    wide = recipe.model_copy(update={"quality": recipe.quality.model_copy(update={"kv_types": kv_types})})
    full = build_space(target, wide, n_layer=source_facts.n_layers or 1, fits=fits)
    dims = {**reduced_dims(full.dims, hw.cores, gpu=hw.gpu.kind != "none", quick=quick),
            **parse_overrides(overrides, full.dims)}
    points = plan_points(dims, full.ctx_size, fits)
    if not points:
        raise UserError(f"the reduced grid of {label} has no point")
    if plan_only:
        return {"label": label, "dims": dims, "points": points, "complete": False, "wall_s": 0.0}

    # The anchor runs where the grid's points run: on a GPU target with every layer on the GPU (the
    # pipeline's own anchor, its default CPU config, would time an 8B model on the CPU every 3 points).
    anchor_config = SearchSpace(dims=dims, ctx_size=full.ctx_size).make({}).config
    toolchain = ensure_toolchain(runner, target, jobs=jobs)
    ui.note(f"llama.cpp {toolchain.commit[:8]} toolchain {toolchain.key} in {toolchain.root}")
    if runner.shares_filesystem:
        device_source = model.path
    else:
        device_source = runner.dir("models", "src", f"{model.sha256[:16]}.gguf")
        runner.put(model.path, device_source)

    settings = QualitySettings(ctx=recipe.quality.ctx, chunks=recipe.quality.chunks)
    definition = {"dims": dims, "ctx_size": full.ctx_size, "recipe_sha256": fingerprint(recipe),
                  "target_sha256": fingerprint(target), "source_sha256": model.sha256, "toolchain": toolchain.key,
                  "speed_policy": dataclasses.asdict(SPEED_POLICY), "seed": seed,
                  "quality": None if synthetic else dataclasses.asdict(settings) | {"corpus_sha256": corpus.sha256}}
    grid_key = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:20]

    data: dict | None = None
    if out.exists() and not fresh:
        try:
            old = json.loads(out.read_text())
        except ValueError:
            raise UserError(f"{out} is not a landscape file (not JSON)", hint="pass --fresh to overwrite it") from None
        if old.get("grid_key") != grid_key:
            raise UserError(f"{out} holds another landscape (another grid, recipe, target, model or llama.cpp build)",
                            hint="pass --fresh to measure it again from the start, or choose another --out")
        data = old
        ui.note(f"resuming {out}: {sum(p['status'] in ('ok', 'failed') for p in data['points'])} of "
                f"{len(data['points'])} points already measured")
    if data is None:
        order = [i for i, p in enumerate(points) if p["status"] == "pending"]
        random.Random(seed).shuffle(order)
        for rank, i in enumerate(order):
            points[i]["order"] = rank
        data = {
            "schema": SCHEMA, "kind": KIND, "grid_key": grid_key, "label": label, "complete": False,
            "haqa_version": __version__, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": None, "wall_s": 0.0, "sessions": [],
            "target": {"name": target.name, "sha256": fingerprint(target), "facts": target.model_dump(mode="json")},
            "measured_on": {**runner.describe(), "host_platform": platform.platform()},
            "recipe": {"name": recipe.name, "sha256": fingerprint(recipe), "workload": w.model_dump(),
                       "quality_budget": recipe.quality.model_dump(), "objective": recipe.objective.model_dump(),
                       "search": recipe.search.model_dump()},
            "model": {"source": model.source, "sha256": model.sha256, "file_type": source_facts.file_type,
                      "architecture": source_facts.architecture, "n_params": source_facts.n_params,
                      "n_layers": source_facts.n_layers, "synthetic": synthetic},
            "synthetic": synthetic,
            "llama_cpp": {"commit": toolchain.commit, "toolchain_key": toolchain.key,
                          "cmake_options": toolchain.cmake_options, "llama_cpp_python": toolchain.llama_cpp_python},
            "speed_method": {"tool": "llama-bench", **dataclasses.asdict(SPEED_POLICY),
                             "prefill": f"{w.prompt_tokens} tokens at depth 0",
                             "decode": f"{w.gen_tokens} tokens at depth {w.prompt_tokens}"},
            "quality_method": ("not measured: synthetic weights" if synthetic else
                               {"reference": f"the source GGUF ({source_facts.file_type})", "corpus": corpus.name,
                                "corpus_sha256": corpus.sha256, "ctx": settings.ctx, "chunks": settings.chunks,
                                "tool": "llama-perplexity --kl-divergence",
                                "note": "measured once per (quant, KV type): the other knobs do not change logits"}),
            "space": {"dims": dims, "ctx_size": full.ctx_size, "full_dims": full.dims,
                      "reduction": "haqa.benchmarks.landscape.reduced_dims" + (" (quick)" if quick else "")
                                   + (f"; --set {' '.join(overrides)}" if overrides else ""),
                      "kv_types_added": [k for k in kv_types if k not in recipe.quality.kv_types]},
            "order": {"seed": seed, "how": "every measured point in a shuffled order (random.Random(seed).shuffle)"},
            "weight_bytes": {q: float(shape_for(q).tensor_bytes) for q in dims["quant"]},
            "weight_bytes_basis": "predicted (haqa memory model: tensor bytes per quant, as the pipeline's heuristic uses)",
            "prompt_facts": _prompt_facts(target, recipe, source_facts, dims["quant"], shape_for, base, predicted_peak),
            "quality": {}, "points": points,
            "anchor": {"config": anchor_config.as_dict(), "model": "the source GGUF", "history": [],
                       "what": "the drift guard's anchor: decode of 32 tokens, 3 runs, median; the source GGUF at "
                               "the reduced space's default point (llama.cpp's defaults; every GPU layer on a GPU)"},
            "repeats": [],
        }
    data["command"] = _command(*names, out, quick, overrides, seed)
    session = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "host": platform.node()}
    data["sessions"].append(session)
    wall_before = data["wall_s"]

    def save() -> None:
        session["wall_s"] = round(time.monotonic() - started, 1)
        data["wall_s"] = round(wall_before + session["wall_s"], 1)
        _atomic_write(out, data)

    def over_time() -> bool:
        return max_minutes is not None and time.monotonic() - started > max_minutes * 60

    save()
    todo = sorted((p for p in data["points"] if p["status"] == "pending"), key=lambda p: p["order"])
    n_total = sum(p["status"] != "pruned" for p in data["points"])
    ui.step(f"landscape {label}: {len(data['points'])} points ({n_total} to measure, "
            f"{len(data['points']) - n_total} pruned by the memory model), {len(todo)} left"
            + _budget_for(max_minutes))

    candidates: dict[str, object] = {}

    def prepare(quant: str):
        if quant not in candidates:
            candidates[quant], _ = quantize(runner, toolchain, device_source, model.sha256, source_facts.file_type,
                                            quant)
        return candidates[quant]

    # Quality: once per (quant, KV type) that some measurable point uses.
    reference = None
    pairs = sorted({(p["values"]["quant"], p["values"]["kv_type"]) for p in data["points"] if p["status"] != "pruned"})
    if not synthetic:
        missing = [pq for pq in pairs if f"{pq[0]}|{pq[1]}" not in data["quality"]]
        if missing:
            try:
                reference = reference_logits(runner, toolchain, device_source, model.sha256, corpus, settings,
                                             base.threads)
            except ToolFailed as e:
                raise UserError(f"computing the reference logits of {model.path} failed: {e}") from None
        for quant, kv in missing:
            if over_time():
                break
            ui.note(f"quality of {quant} with KV {kv}")
            try:
                q = measure_quality(runner, toolchain, prepare(quant), reference, corpus, settings, threads=hw.cores,
                                    cache_type_k=kv, cache_type_v=kv)
                data["quality"][f"{quant}|{kv}"] = q.as_dict()
            except ToolFailed as e:
                data["quality"][f"{quant}|{kv}"] = {"status": "failed", "cause": _failure_cause(e),
                                                    "error": str(e)[-2000:]}
            save()

    # Speed: every point in the shuffled order, under the pipeline's drift guard.
    space = SearchSpace(dims=dims, ctx_size=full.ctx_size)
    load = ForeignLoad() if runner.shares_cpu and quiet_guard else None

    def anchor() -> float:
        if load:
            load.wait_quiet()
        return quick_decode(runner, toolchain, device_source, anchor_config)

    guard = DriftGuard(anchor)
    fresh_points: list[dict] = []
    queue = list(todo)
    measured_now = 0

    def bench_point(p: dict) -> None:
        cand = space.make(p["values"])
        q = None if synthetic else data["quality"].get(f"{cand.quant}|{cand.config.cache_type_k}")
        p["attempts"] = p.get("attempts", 0) + 1
        if not synthetic and (q is None or q.get("status") == "failed"):
            p.update(status="failed", cause=(q or {}).get("cause", "error"),
                     error="quality: " + ((q or {}).get("error") or "not measured"))
            return
        t0 = time.monotonic()
        try:
            bench = run_bench(runner, toolchain, prepare(cand.quant), cand.config, prompt_tokens=w.prompt_tokens,
                              gen_tokens=w.gen_tokens, policy=SPEED_POLICY,
                              log_path=runner.local_dir("logs") / f"landscape-{cand.key}.log")
            p.update(status="ok", bench=bench.as_dict())
            p.pop("cause", None)
            p.pop("error", None)
        except ToolFailed as e:
            p.update(status="failed", cause=_failure_cause(e), error=str(e)[-2000:])
        p["elapsed_s"] = round(time.monotonic() - t0, 2)
        p["measured_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    while queue and not over_time() and (limit is None or measured_now < limit):
        if not guard.ready:
            guard.start()
            data["anchor"]["history"] += [{"event": "session", "started": session["started"]}, guard.history[-1]]
        p = queue.pop(0)
        for attempt in range(1, MEASURE_ATTEMPTS + 1):
            if load:
                p["waited_s"] = round(p.get("waited_s", 0) + load.wait_quiet(), 1)
                load.start()
            bench_point(p)
            if not load:
                break
            p["foreign_cpu_share"] = round(load.share(), 3)
            if p["status"] != "ok" or p["foreign_cpu_share"] <= CONTENDED:
                break
            if attempt < MEASURE_ATTEMPTS:
                ui.note(f"other processes used {p['foreign_cpu_share']:.0%} of the CPU while it ran: measuring again")
            else:
                p["contended"] = True
        measured_now += 1
        done = sum(x["status"] in ("ok", "failed") for x in data["points"])
        v = p["values"]
        speed = (f"decode {p['bench']['decode']['mean']:.1f} tok/s, prefill {p['bench']['prefill']['mean']:.0f} tok/s"
                 if p["status"] == "ok" else f"failed ({p.get('cause')})")
        elapsed = time.monotonic() - started
        eta = elapsed / measured_now * len(queue)
        ui.note(f"[{done}/{n_total}] {v['quant']} kv {v['kv_type']} t{v['threads']} ngl {v['n_gpu_layers']} "
                f"fa {v['flash_attn']} ub {v['ubatch_size']} repack {v['repack']}: {speed} "
                f"({elapsed / 60:.1f} min, ~{eta / 60:.1f} min left)")
        if p["status"] == "ok":
            fresh_points.append(p)
        if len(fresh_points) >= guard.every:
            seen = len(guard.history)
            ok = guard.check()  # on drift it also takes a new baseline
            data["anchor"]["history"] += [{**h, "after_points": done} for h in guard.history[seen:]]
            if not ok:
                for x in fresh_points:
                    if x.get("drift_reruns", 0) < 1:
                        x["drift_reruns"] = x.get("drift_reruns", 0) + 1
                        x.setdefault("superseded", []).append(  # kept: how far a re-measurement moves
                            {"decode_mean": x["bench"]["decode"]["mean"], "prefill_mean": x["bench"]["prefill"]["mean"],
                             "measured_at": x.get("measured_at")})
                        x["status"] = "pending"
                        queue.insert(0, x)
                    else:
                        x["drift"] = "the anchor moved while it was measured (second attempt kept)"
                ui.note(f"drift guard: the anchor moved; {len(fresh_points)} point(s) will be measured again")
            fresh_points = []
        save()

    left = [p for p in data["points"] if p["status"] == "pending"]
    if not left and not data.get("repeats_done") and not over_time():
        # The best feasible points once more: how much of a "best" is noise.
        land = Landscape(data, out)
        ranked = sorted(((o.score, p) for p, o in land.observations() if o.score is not None),
                        key=lambda sp: sp[0], reverse=True)
        done_keys = {r["key"] for r in data["repeats"]}
        for _, p in ranked[:repeat_top]:
            if p["key"] in done_keys or over_time():
                continue
            ui.note(f"repeat of a best point: {p['values']['quant']} {p['key']}")
            cand = space.make(p["values"])
            rec = {"key": p["key"], "values": p["values"]}
            if load:
                load.wait_quiet()
                load.start()
            try:
                bench = run_bench(runner, toolchain, prepare(cand.quant), cand.config, prompt_tokens=w.prompt_tokens,
                                  gen_tokens=w.gen_tokens, policy=SPEED_POLICY)
                rec["bench"] = bench.as_dict()
            except ToolFailed as e:
                rec["failed"] = _failure_cause(e)
            if load:
                rec["foreign_cpu_share"] = round(load.share(), 3)
            data["repeats"].append(rec)
            save()
        data["repeats_done"] = not over_time()
    if guard.baseline is not None:
        seen = len(guard.history)
        guard.check()
        data["anchor"]["history"] += [{**h, "after_points": "end of session"} for h in guard.history[seen:]]
    data["complete"] = not left and bool(data.get("repeats_done"))
    if data["complete"]:
        data["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    save()
    state = "complete" if data["complete"] else f"incomplete ({len(left)} points left; run the same command to resume)"
    ui.step(f"landscape {label}: {state}; {data['wall_s'] / 60:.1f} min measured in all; written to {out}")
    return data


def _command(target: str, recipe: str, out: Path, quick: bool, overrides: tuple[str, ...], seed: int) -> str:
    parts = ["haqa bench landscape", f"--target {target}", f"--recipe {recipe}"]
    if quick:
        parts.append("--quick")
    parts += [f"--set {o}" for o in overrides]
    if seed:
        parts.append(f"--seed {seed}")
    parts.append(f"--out {out}")
    return " ".join(parts)


def _prompt_facts(target, recipe, source_facts, quants, shape_for, base, predicted_peak) -> dict:
    """The LLM proposer's static facts, computed as haqa.pipeline._make_proposer computes them."""
    from haqa.agent import objective as obj
    from haqa.model import memory

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
