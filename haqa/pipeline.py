"""The deploy pipeline: resolve the model, build llama.cpp, quantize the candidates on the device,
measure speed (under a drift guard) and quality (KLD against the source), choose within the quality
budget, and write the bundle. Each step is cached by content hashes, so a second run with unchanged
inputs measures nothing again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from haqa import ui
from haqa.agent.select import NothingFeasible, Trial, choose, within_budget
from haqa.bundle import write_bundle
from haqa.bundle.destination import check_destination
from haqa.bundle.lock.build import build as build_lock
from haqa.bundle.report import documents
from haqa.config import find_file, load_recipe, load_target
from haqa.config.schema import Recipe, Target
from haqa.errors import ConnectionLost, ToolFailed, UserError, death_signal
from haqa.measure.bench import BenchResult, SpeedPolicy, quick_decode, run_bench
from haqa.measure.corpus import load_corpus
from haqa.measure.drift import DriftGuard
from haqa.measure.quality import Quality, QualitySettings, measure_quality, reference_logits
from haqa.measure.quantize import quantize
from haqa.model import memory
from haqa.model.gguf_facts import read_facts
from haqa.model.source import resolve_model
from haqa.paths import cache_home
from haqa.runner import runner_for
from haqa.runner.base import DiskFull
from haqa.runtime import RuntimeConfig
from haqa.toolchain import ensure_toolchain

GPU_HEADROOM_GIB = 0.5  # the CUDA context and the driver's own allocations
SPEED_POLICY = SpeedPolicy()


@dataclass(frozen=True)
class DeployResult:
    bundle: Path
    winner: Trial
    trials: list[Trial]


def default_config(target: Target, recipe: Recipe, n_layers: int | None = None) -> RuntimeConfig:
    """llama.cpp's default flags (what a user gets without tuning): every core, every layer on the
    GPU when there is one, f16 KV cache, flash attention auto, batch 2048 / ubatch 512, repacking on."""
    gpu = target.hardware.gpu.kind != "none" and n_layers
    cores = target.hardware.cores
    return RuntimeConfig(threads=cores, threads_batch=cores, ctx_size=recipe.workload.min_context,
                         n_gpu_layers=(n_layers + 1) if gpu else 0)


def deploy(target_name: str, recipe_name: str, out: Path | None = None, *, jobs: int | None = None,
           agent: str = "auto", seed: int = 0) -> DeployResult:
    target = load_target(target_name)
    recipe_file = find_file("recipes", recipe_name)
    recipe = load_recipe(recipe_name)
    label = f"{recipe.name}@{target.name}"
    out = check_destination(out or Path("dist") / label)  # refused before any work, not after a search
    ui.step(f"deploying {label}")

    model = resolve_model(recipe, recipe_file.parent)  # checked to be a GGUF before anything is built or sent
    source_facts = read_facts(model.path)
    ui.note(f"model: {model.path.name} ({source_facts.architecture}, {source_facts.file_type}, "
            f"{source_facts.n_params / 1e6:.0f}M parameters, sha256 {model.sha256[:12]})")
    corpus = load_corpus(recipe.quality.corpus, recipe_file.parent)

    runner = runner_for(target)
    try:
        return _deploy_on(runner, target, recipe, model, source_facts, corpus, label, out, jobs, agent, seed)
    finally:
        runner.close()


def staleness(history) -> int:
    """Trials since the last improvement beyond noise (a score better than the best so far by more than
    twice its relative standard error, and at least 1 %), over the history in measurement order."""
    best, stale = None, 0
    for o in history:
        if o.score is not None and (best is None or o.score > best * (1 + max(2 * o.noise, 0.01))):
            best, stale = o.score, 0
        else:
            stale += 1
            if o.score is not None and best is not None:
                best = max(best, o.score)
    return stale


def prepare_device(runner, target: Target, model, jobs: int | None):
    """The llama.cpp toolchain on the device (built or cached) and the source GGUF's path there."""
    toolchain = ensure_toolchain(runner, target, jobs=jobs)
    ui.note(f"llama.cpp {toolchain.commit[:8]} toolchain {toolchain.key} "
            f"({'cached' if toolchain.cached else 'built'}) in {toolchain.root}")
    if runner.shares_filesystem:
        return toolchain, model.path
    device_source = runner.dir("models", "src", f"{model.sha256[:16]}.gguf")
    sent = runner.put(model.path, device_source)
    ui.note(f"source model {'uploaded to' if sent else 'already on'} the device: {device_source}")
    return toolchain, device_source


def reference_for(runner, toolchain, device_source, model, source_facts, corpus, settings, threads: int):
    """The reference logits on the device; None for synthetic weights (no quality to measure)."""
    if source_facts.synthetic:
        ui.note("synthetic weights: speed and memory only; quality is not measured")
        return None
    try:
        return reference_logits(runner, toolchain, device_source, model.sha256, corpus, settings, threads)
    except ToolFailed as e:
        raise UserError(f"computing the reference logits of {model.path.name} failed: {e}") from None


AGENTS = ["auto", "llm", "openai", "ollama", "embedded", "heuristic", "random", "grid"]
# Failures that say nothing about the candidate: recorded, then measured again by the next run.
ENVIRONMENT_CAUSES = ("connection", "disk")


def _failure_cause(e: ToolFailed) -> str:
    """oom (the OOM killer's SIGKILL, or an allocation that failed), timeout, crash (another signal) or error."""
    text = (e.output_tail or "").lower()
    if e.timed_out:
        return "timeout"
    sig = death_signal(e.returncode)
    if "out of memory" in text or "failed to allocate" in text or "cannot allocate" in text or sig == 9:
        return "oom"
    if sig is not None:
        return "crash"
    return "error"


def model_shapes(model_path: Path, source_type: str):
    """shape_for(quant): the model's shape as that quant type (the source's own, else estimated), each
    computed once."""
    shapes: dict[str, memory.ModelShape] = {}

    def shape_for(quant: str) -> memory.ModelShape:
        if quant not in shapes:
            shapes[quant] = (memory.ModelShape.from_gguf(model_path) if quant == source_type
                             else memory.estimate_quantized(model_path, quant))
        return shapes[quant]

    return shape_for


def memory_fits(target: Target, shape_for):
    """fits(candidate) -> (ok, why): the memory model's verdict, the candidate's predicted peak within
    the target's RAM less its headroom, and within its GPU's memory."""
    hw = target.hardware
    budget_bytes = (hw.ram_gib - target.limits.memory_headroom_gib) * 2**30
    gpu_budget_bytes = (hw.gpu.memory_gib - GPU_HEADROOM_GIB) * 2**30 if (
        hw.gpu.kind != "none" and not hw.gpu.unified_memory and hw.gpu.memory_gib) else None

    def fits(cand) -> tuple[bool, str]:
        need = predicted_peak(target, shape_for(cand.quant), cand.config, tokens=cand.config.ctx_size)
        if need.host > budget_bytes:
            return False, (f"the memory model predicts {need.host / 2**30:.2f} GiB for {cand.quant} with KV "
                           f"{cand.config.cache_type_k}, over the {budget_bytes / 2**30:.2f} GiB budget")
        if gpu_budget_bytes is not None and need.gpu > gpu_budget_bytes:
            return False, (f"the memory model predicts {need.gpu / 2**30:.2f} GiB of GPU memory for {cand.quant} with "
                           f"{cand.config.n_gpu_layers} layers offloaded, over the GPU's {gpu_budget_bytes / 2**30:.2f} GiB")
        return True, "fits"

    return fits


def _deploy_on(runner, target: Target, recipe: Recipe, model, source_facts, corpus, label: str, out: Path | None,
               jobs: int | None, agent: str = "heuristic", seed: int = 0) -> DeployResult:
    import time

    from haqa.agent import objective as obj
    from haqa.agent.proposers import HeuristicProposer, Observation
    from haqa.agent.space import Candidate, build_space
    from haqa.agent.store import TrialStore, store_path

    started = time.monotonic()
    settings = QualitySettings(ctx=recipe.quality.ctx, chunks=recipe.quality.chunks)
    synthetic = source_facts.synthetic
    base = default_config(target, recipe, n_layers=source_facts.n_layers)
    w = recipe.workload
    shape_for = model_shapes(model.path, source_facts.file_type)
    within_memory = memory_fits(target, shape_for)

    # What the device taught the memory model: the predicted peaks (host, GPU) of candidates that ran
    # out of memory there. A candidate predicted to need at least as much of both is not run.
    out_of_memory: list[tuple[float, float, str]] = []
    pruned_noted: set[str] = set()

    def fits(cand: Candidate) -> tuple[bool, str]:
        ok, why = within_memory(cand)
        if not ok:
            return False, why
        need = predicted_peak(target, shape_for(cand.quant), cand.config, tokens=cand.config.ctx_size)
        for host, gpu, failed in out_of_memory:
            if need.host >= host and need.gpu >= gpu:
                why = (f"the memory model predicts {need.host / 2**30:.3f} GiB for {cand.quant} with KV "
                       f"{cand.config.cache_type_k}, at least the {host / 2**30:.3f} GiB predicted for {failed}, "
                       f"which ran out of memory on the device")
                if cand.quant not in pruned_noted:
                    pruned_noted.add(cand.quant)
                    ui.note(f"memory model: skipping {cand.quant} ({cand.config.describe()}): {why}")
                return False, why
        return True, "fits"

    def learn_out_of_memory(cand: Candidate, origin: str) -> None:
        need = predicted_peak(target, shape_for(cand.quant), cand.config, tokens=cand.config.ctx_size)
        failed = f"{cand.quant} ({cand.config.describe()})"
        out_of_memory.append((need.host, need.gpu, failed))
        ui.note(f"memory model: {failed} ran out of memory on the device {origin} at a predicted "
                f"{need.host / 2**30:.3f} GiB; candidates predicted to need at least as much are skipped")

    space = build_space(target, recipe, n_layer=source_facts.n_layers or 1, fits=fits)
    refuse_if_nothing_fits(space, fits, target, recipe)  # before anything is built or sent
    toolchain, device_source = prepare_device(runner, target, model, jobs)
    reference = reference_for(runner, toolchain, device_source, model, source_facts, corpus, settings, base.threads)
    weight_bytes = {q: float(shape_for(q).tensor_bytes) for q in space.dims["quant"]}
    heuristic = HeuristicProposer(space, weight_bytes)
    proposer, agent_used = _make_proposer(agent, space, heuristic, target, recipe, source_facts, seed, fits,
                                          shape_for, base)

    def trial_key(cand: Candidate) -> str:
        blob = json.dumps({"cand": cand.key, "source": model.sha256, "toolchain": toolchain.key,
                           "reference": reference.name if reference else None, "workload": w.model_dump(),
                           "policy": dataclasses.asdict(SPEED_POLICY)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def prepare(quant: str):
        candidate, _ = quantize(runner, toolchain, device_source, model.sha256, source_facts.file_type, quant,
                                expected_bytes=int(shape_for(quant).tensor_bytes))
        return candidate, runner.sha256(candidate)

    def memory_record(candidate, cand: Candidate, bench: BenchResult) -> dict:
        config = cand.config
        shape = memory.ModelShape.from_gguf(Path(candidate)) if runner.shares_filesystem else shape_for(cand.quant)
        runs = [predicted_peak(target, shape, config, tokens=w.prompt_tokens),
                predicted_peak(target, shape, config, tokens=w.prompt_tokens + w.gen_tokens, bench_depth=w.prompt_tokens)]
        bench_pred = max(r.host for r in runs)
        deploy_pred = predicted_peak(target, shape, config, tokens=config.ctx_size)
        rec = {"deployment_predicted": deploy_pred.as_dict(), "bench_predicted_bytes": round(bench_pred),
               "bench_measured_bytes": bench.peak_rss_bytes,
               "basis": f"{deploy_pred.basis}; measured: peak RSS of the llama-bench runs"}
        if bench.peak_rss_bytes:
            rec["bench_prediction_error"] = round((bench_pred - bench.peak_rss_bytes) / bench.peak_rss_bytes, 4)
        return rec

    def measure(cand: Candidate) -> Trial:
        tools = "llama-bench" if synthetic else "llama-bench and llama-perplexity"
        ui.note(f"measuring {cand.quant} (KV {cand.config.cache_type_k}, {cand.config.threads} threads, "
                f"fa {cand.config.flash_attn}, ub {cand.config.ubatch_size}, repack {cand.config.repack}) with {tools}")
        config = cand.config
        try:
            candidate, sha = prepare(cand.quant)
            bench = run_bench(runner, toolchain, candidate, config, prompt_tokens=w.prompt_tokens,
                              gen_tokens=w.gen_tokens, policy=SPEED_POLICY,
                              log_path=runner.local_dir("logs") / f"bench-{cand.key}.log")
            quality = None
            if not synthetic:
                quality = measure_quality(runner, toolchain, candidate, reference, corpus, settings,
                                          threads=config.prefill_threads, cache_type_k=config.cache_type_k,
                                          cache_type_v=config.cache_type_v)
            return Trial(cand.quant, config, bench, quality, sha, memory=memory_record(candidate, cand, bench))
        except ToolFailed as e:
            ui.note(f"{cand.quant}: failed ({_failure_cause(e)}): {str(e).splitlines()[0]}")
            return Trial(cand.quant, config, None, error=str(e)[-2000:], cause=_failure_cause(e))

    def observation(cand: Candidate, t: Trial) -> Observation:
        if not t.ok:
            return Observation(cand, False, cause=t.cause)
        ok, _ = within_budget(t, recipe.quality, synthetic=synthetic)
        return Observation(cand, True, decode=t.bench.decode.mean, prefill=t.bench.prefill.mean,
                           kld=t.quality.kld_mean if t.quality else None, within_budget=ok,
                           score=obj.score(t.bench, recipe.objective, w.prompt_tokens) if ok else None,
                           noise=obj.noise(t.bench, recipe.objective))

    store = TrialStore(store_path(target.name, recipe.name))
    history: list[Observation] = []
    trials: dict[str, tuple[Candidate, Trial, str, str]] = {}  # key -> (candidate, trial, proposer, rationale)
    try:
        # Resume: every valid stored trial of a candidate in this space is history already. A trial that
        # failed for a reason outside the candidate (the connection, the disk) is measured again.
        for rec in store.all():
            if rec.status == "discarded":
                continue
            if rec.status == "failed" and rec.cause in ENVIRONMENT_CAUSES:
                store.discard(rec.id, f"{rec.cause}: failed in an earlier run for a reason outside the candidate; "
                                      "measured again when proposed")
                continue
            try:
                cand = space.make(rec.candidate)
            except Exception:
                continue
            key = trial_key(cand)
            if rec.key != key or key in trials:
                continue
            try:
                t = _trial_from_store(rec, cand)
            except (KeyError, TypeError, ValueError, AttributeError):
                ui.note(f"trial store: row {rec.id} ({cand.quant}) is damaged; the candidate is measured again if proposed")
                continue
            trials[key] = (cand, t, rec.proposer, rec.rationale or "")
            history.append(observation(cand, t))
            if t.cause == "oom":
                learn_out_of_memory(cand, "in an earlier run")
        if trials:
            ui.note(f"resuming: {len(trials)} trial(s) of earlier runs are still valid (store: {store.path})")

        guard = DriftGuard(lambda: quick_decode(runner, toolchain, device_source, base))
        fresh: list[tuple[int, Candidate, str, str]] = []  # since the last anchor check
        attempts: dict[str, int] = {}
        new_trials, reruns = 0, 0
        stop_reason = "trial budget reached"
        queue: list[tuple[Candidate, str, str]] = []
        while True:
            if len(trials) >= recipe.search.max_trials and not queue:
                break
            if time.monotonic() - started > recipe.search.max_minutes * 60:
                stop_reason = "wall-clock budget reached"
                break
            stale = staleness(history)  # from the valid history alone, so a resumed search agrees with the first
            if stale >= recipe.search.patience and not queue:
                stop_reason = f"converged: no improvement beyond noise in {stale} trials"
                break
            if queue:
                cand, who, why = queue.pop(0)
            else:
                proposal = proposer.suggest(history)
                if proposal is None:
                    stop_reason = "the proposer has nothing left to try"
                    break
                cand, who, why = proposal.candidate, proposal.proposer, proposal.rationale
            key = trial_key(cand)
            if not guard.ready:
                guard.start()
            try:
                t = measure(cand)
            except (ConnectionLost, DiskFull) as e:
                # Not the candidate's fault: recorded (never lost), and measured again by the next run.
                cause = "connection" if isinstance(e, ConnectionLost) else "disk"
                store.add(key=key, candidate=cand.values(), quant=cand.quant, model_sha256=None,
                          toolchain=toolchain.key, status="failed", cause=cause, error=str(e)[-2000:],
                          proposer=who, rationale=why)
                ui.note(f"{cand.quant}: failed ({cause}); recorded in {store.path}; the next run measures it again")
                raise
            attempts[key] = attempts.get(key, 0) + 1
            row = store.add(key=key, candidate=cand.values(), quant=cand.quant, model_sha256=t.model_sha256,
                            toolchain=toolchain.key, status="ok" if t.ok else "failed", cause=t.cause, error=t.error,
                            bench=t.bench.as_dict() if t.ok else None,
                            quality=t.quality.as_dict() if t.quality else None, memory=t.memory,
                            proposer=who, rationale=why)
            trials[key] = (cand, t, who, why)
            history = [o for o in history if o.candidate.key != cand.key] + [observation(cand, t)]
            proposer.observe(history[-1])
            new_trials += 1
            if t.cause == "oom":
                learn_out_of_memory(cand, "just now")
            if t.ok:
                _report(t, "measured", recipe, synthetic)
            if t.ok:
                fresh.append((row, cand, who, why))
            if len(fresh) >= guard.every:
                if not guard.check():
                    again = 0
                    for row_id, c, who2, why2 in fresh:
                        # Measured three times under drift: keep the last one (the final side-by-side
                        # comparison re-measures the finalists anyway) rather than loop.
                        if attempts.get(trial_key(c), 0) <= 2:
                            store.discard(row_id, "drift: the anchor moved while it was measured")
                            queue.append((c, who2, why2))
                            trials.pop(trial_key(c), None)
                            history = [h for h in history if h.candidate.key != c.key]
                            reruns += 1
                            again += 1
                    ui.note(f"drift guard: the anchor moved; {again} of {len(fresh)} trial(s) will be measured again")
                fresh = []
    finally:
        store.close()
    ui.note(f"search stopped: {stop_reason} ({new_trials} new trial(s), {len(trials)} in all, agent {agent_used})")

    all_trials = [t for _, t, _, _ in trials.values()]
    scorer = lambda t: obj.score(t.bench, recipe.objective, w.prompt_tokens)  # noqa: E731
    try:
        leader = choose(all_trials, recipe.quality, synthetic=synthetic, key=scorer)
    except NothingFeasible as e:
        raise UserError(f"no candidate of {label} is within the quality budget (max_kld {recipe.quality.max_kld}): {e}",
                        hint="raise [quality].max_kld in the recipe or add higher-precision quants to [search].quants") from None

    def quality_of(quant: str, path) -> Quality | None:
        """Quality depends on the weights and the KV types only: reuse a trial's, else measure it."""
        if synthetic:
            return None
        for t in all_trials:
            if t.ok and t.quant == quant and t.quality and t.config.cache_type_k == "f16" == t.config.cache_type_v:
                return t.quality
        return measure_quality(runner, toolchain, path, reference, corpus, settings, threads=base.threads)

    rounds, reps = recipe.search.compare_rounds, recipe.search.compare_repetitions
    if rounds == 0:
        winner, comparison = leader, None
        ui.note("side-by-side comparison skipped ([search] compare_rounds = 0 in the recipe)")
    else:
        finalists = _finalists(all_trials, leader, recipe, synthetic, scorer, base)
        compare_key = hashlib.sha256(json.dumps(
            {"finalists": [trial_key(Candidate(t.quant, t.config)) for t in finalists], "default": base.as_dict(),
             "rounds": rounds, "repetitions": reps}, sort_keys=True).encode()).hexdigest()[:20]
        compare_cache = cache_home() / "comparisons" / f"{label}-{compare_key}.json"
        if compare_cache.exists():
            saved = json.loads(compare_cache.read_text())
            winner = dataclasses.replace(finalists[saved["best"]], bench=BenchResult.from_dict(saved["pooled"]))
            comparison = saved["comparison"]
            ui.note(f"side-by-side comparison of these finalists reused from {saved['created']} ({compare_cache})")
        else:
            winner, comparison = compare_with_baselines(runner, toolchain, recipe, source_facts, finalists,
                                                        prepare=lambda q: prepare(q)[0], fits=fits, default=base,
                                                        quality_of=quality_of)
            comparison["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            compare_cache.parent.mkdir(parents=True, exist_ok=True)
            part = compare_cache.with_name(compare_cache.name + ".part")
            part.write_text(json.dumps({"best": finalists.index(next(t for t in finalists if (t.quant, t.config) ==
                                                                     (winner.quant, winner.config))),
                                        "pooled": winner.bench.as_dict(), "comparison": comparison,
                                        "created": comparison["created"]}))
            part.replace(compare_cache)
    kld = f"KLD {winner.quality.kld_mean:.4f}" if winner.quality else "quality not reported (synthetic)"
    ui.step(f"chose {winner.name}: decode {winner.bench.decode.mean:.1f} tok/s "
            f"{'side by side' if comparison else 'in the search'}, {kld} "
            f"({obj.describe(recipe.objective, w.prompt_tokens)}, within the quality budget)")
    device_candidate, sha = prepare(winner.quant)
    if sha != winner.model_sha256:
        raise UserError(f"the {winner.quant} candidate {device_candidate} is not the file the chosen configuration "
                        f"was measured with (sha256 {sha[:12]}, measured {str(winner.model_sha256)[:12]}); refusing to "
                        "bundle bytes that were not measured",
                        hint=f"remove it (haqa quantizes it again) and deploy again; if it differs again, the stored "
                             f"trials measured other bytes: remove {store.path} to measure anew")
    candidate = runner.fetch(device_candidate)
    server = runner.fetch(toolchain.bin("llama-server"))

    front = obj.pareto_front([(t.bench.decode.mean, t.quality.kld_mean, t) for t in all_trials
                              if t.ok and t.quality is not None])
    search = {"proposer": agent_used, "trials": len(trials), "new_trials": new_trials, "stop": stop_reason,
              "reruns_after_drift": reruns, "llm_fallbacks": getattr(proposer, "fallbacks", 0),
              "llm_replies": getattr(proposer, "replies", 0), "space_size": space.size(),
              "objective": obj.describe(recipe.objective, w.prompt_tokens),
              "pareto_front": [f"{t.name} ({t.config.describe()})" for t in front]}
    model_name = f"{recipe.name}-{winner.quant}.gguf"
    lock = build_lock(target=target, recipe=recipe, source=model, source_facts=source_facts, toolchain=toolchain,
                      model_file=candidate, winner=winner, trials=[(t, who, why) for _, t, who, why in trials.values()],
                      measured_on=runner.describe(), corpus=corpus, settings=settings, speed_policy=SPEED_POLICY,
                      guard=guard if new_trials else None, reruns=reruns, selection=search, comparison=comparison)
    out = out or Path("dist") / label
    bundle = write_bundle(out, model=candidate, model_name=model_name, server_binary=server,
                          lock=lock, server_args=winner.config.server_args(), label=label, alias=recipe.name,
                          config=winner.config, recipe=recipe.name, documents=documents(lock),
                          model_sha256=winner.model_sha256)
    ui.step(f"bundle written: {bundle}  (start it with {bundle}/run.sh)")
    return DeployResult(bundle=bundle, winner=winner, trials=all_trials)


DEFAULT_QUANT = "Q4_K_M"  # what Ollama and most model cards ship
UNQUANTIZED = ("F32", "BF16", "F16")


FINALISTS = 3


def refuse_if_nothing_fits(space, fits, target: Target, recipe: Recipe) -> None:
    """A UserError about memory (not quality) when not even the leanest points of each quant type (the
    smallest batches, with no or every layer on the GPU) fit the device: nothing would be measured."""
    lean = {**space.default_values(), "batch_size": min(space.dims["batch_size"]),
            "ubatch_size": min(space.dims["ubatch_size"])}
    reasons = []
    for quant in space.dims["quant"]:
        for kv in space.dims["kv_type"]:
            for ngl in {min(space.dims["n_gpu_layers"]), max(space.dims["n_gpu_layers"])}:
                ok, why = fits(space.make({**lean, "quant": quant, "kv_type": kv, "n_gpu_layers": ngl}))
                if ok:
                    return
                reasons.append(why)
    hw = target.hardware
    raise UserError(
        f"no candidate of {recipe.name} fits in the memory of {target.name} ({hw.ram_gib:g} GiB RAM less "
        f"{target.limits.memory_headroom_gib:g} GiB headroom) at context {recipe.workload.min_context}: "
        + min(reasons, key=_first_gib),
        hint="add smaller quant types to [search].quants (Q4_0, Q3_K_M), lower [workload].min_context or add "
             "quantized KV types to [quality].kv_types, lower [limits].memory_headroom_gib, or use a device with "
             f"more memory; `haqa estimate --target {target.name} --recipe {recipe.name} --all` shows every prediction")


def _first_gib(text: str) -> float:
    m = re.search(r"(\d+(?:\.\d+)?) GiB", text)
    return float(m.group(1)) if m else float("inf")


def _finalists(trials: list[Trial], leader: Trial, recipe: Recipe, synthetic: bool, scorer, default: RuntimeConfig) -> list[Trial]:
    """The search's leader, the feasible trials whose score is within measurement noise of it (at most
    FINALISTS in all), and the default deployment's own trial when it was feasible: the search measured
    them at different times, so the final word goes to a side-by-side re-measurement."""
    from haqa.agent import objective as obj

    feasible = sorted((t for t in trials if within_budget(t, recipe.quality, synthetic=synthetic)[0]),
                      key=scorer, reverse=True)
    best = scorer(leader)
    out = [leader]
    for t in feasible:
        if len(out) >= FINALISTS:
            break
        noise = max(obj.noise(t.bench, recipe.objective), obj.noise(leader.bench, recipe.objective))
        if t is not leader and scorer(t) >= best - abs(best) * max(2 * noise, 0.02):
            out.append(t)
    dflt = next((t for t in feasible if t.quant == DEFAULT_QUANT and t.config == default), None)
    if dflt is not None and dflt not in out:
        out.append(dflt)
    return out


def compare_with_baselines(runner, toolchain, recipe: Recipe, source_facts, finalists: list[Trial], *, prepare, fits,
                           default: RuntimeConfig, quality_of) -> tuple[Trial, dict]:
    """Re-measure the finalists side by side with (a) the default deployment, Q4_K_M with llama.cpp's
    default flags, and (b) the unquantized model with default flags, in interleaved rounds. The
    finalist with the best objective there wins; it is reported as "tuned" against (a) and (b)."""
    from haqa.agent import objective as obj
    from haqa.agent.space import Candidate
    from haqa.measure import compare as cmp

    w = recipe.workload
    rounds, reps = recipe.search.compare_rounds, recipe.search.compare_repetitions
    unq = source_facts.file_type if source_facts.file_type in UNQUANTIZED else "F16"
    unq_note = ("the source GGUF itself" if unq == source_facts.file_type else
                f"F16 converted from the {source_facts.file_type} source (no precision beyond the source's)")
    wanted = [(f"finalist {i + 1}", t.quant, t.config, f"search trial {t.name} ({t.config.describe()})")
              for i, t in enumerate(finalists)]
    wanted += [("default", DEFAULT_QUANT, default, f"{DEFAULT_QUANT} with llama.cpp's default flags"),
               ("unquantized", unq, default, f"{unq} with llama.cpp's default flags: {unq_note}")]
    contenders: dict[tuple, cmp.Contender] = {}  # one measurement per (quant, config), whatever its labels
    labels: dict[str, tuple] = {}
    for label, quant, config, description in wanted:
        key = (quant, config)
        labels[label] = key
        if key in contenders:
            continue
        ok, why = fits(Candidate(quant, config))
        if not ok:
            contenders[key] = cmp.Contender(label, quant, config, description, skipped=f"not measured: {why}")
            continue
        try:
            contenders[key] = cmp.Contender(label, quant, config, description, model=prepare(quant))
        except ToolFailed as e:
            contenders[key] = cmp.Contender(label, quant, config, description,
                                            skipped=f"quantizing failed: {str(e).splitlines()[0]}")
    ui.step(f"measuring {len(finalists)} finalist(s), the default deployment and the unquantized model side by side "
            f"({rounds} interleaved rounds)")
    sides = cmp.compare(runner, toolchain, list(contenders.values()), prompt_tokens=w.prompt_tokens,
                        gen_tokens=w.gen_tokens, rounds=rounds, repetitions=reps,
                        log_dir=runner.local_dir("logs"))
    by_key = {(s.contender.quant, s.contender.config): s for s in sides}

    def side(label: str) -> cmp.Side:
        return by_key[labels[label]]

    scored = [(obj.score(side(f"finalist {i + 1}").pooled(), recipe.objective, w.prompt_tokens), i)
              for i in range(len(finalists)) if side(f"finalist {i + 1}").measured]
    if not scored:
        raise UserError("every finalist failed when it was measured again side by side; see the logs in "
                        f"{runner.local_dir('logs')}", hint="run the deploy again; if it persists, run `haqa doctor`")
    _, best = max(scored)
    # The winner's figures are its side-by-side ones: more samples, and taken beside the baselines.
    winner = dataclasses.replace(finalists[best], bench=side(f"finalist {best + 1}").pooled())
    if best != 0:
        ui.note(f"side by side, {winner.name} ({winner.config.describe()}) beat the search's leader "
                f"{finalists[0].name}: it is chosen")
    out = {"method": cmp.METHOD, "rounds": rounds, "repetitions_per_round": reps,
           "workload": w.model_dump(), "finalists": len(finalists), "contenders": {}, "ratios": {}}
    entries = [("tuned", f"finalist {best + 1}", "the configuration haqa chose")]
    entries += [(f"finalist {i + 1}", f"finalist {i + 1}", None) for i in range(len(finalists)) if i != best]
    entries += [("default", "default", None), ("unquantized", "unquantized", None)]
    for name, label, description in entries:
        s = side(label)
        summary = s.summary(w.prompt_tokens)
        if description:
            summary["description"] = description + f" ({winner.config.describe()})"
        else:
            summary["description"] = dict((lbl, d) for lbl, _, _, d in wanted)[label]
        if s.measured:
            trial = next((t for t in finalists if (t.quant, t.config) == labels[label]), None)
            try:
                q = trial.quality if trial else quality_of(s.contender.quant, s.contender.model)
            except ToolFailed as e:
                q, summary["quality_error"] = None, str(e).splitlines()[0]
            summary["quality"] = q.as_dict() if q else None
        out["contenders"][name] = summary
    tuned = side(f"finalist {best + 1}")
    for other in ("default", "unquantized"):
        r = cmp.ratios(tuned, side(other))
        out["ratios"][f"tuned/{other}"] = r if r else "not measured"
        if r:
            ui.note(f"tuned / {other} ({side(other).contender.quant}): decode x{r['decode']['median']:.2f}, "
                    f"prefill x{r['prefill']['median']:.2f} (medians of {r['decode']['rounds']} interleaved rounds)")
    return winner, out


def _trial_from_store(rec, cand) -> Trial:
    if rec.status != "ok":
        return Trial(cand.quant, cand.config, None, error=rec.error, cause=rec.cause, model_sha256=rec.model_sha256)
    return Trial(cand.quant, cand.config, BenchResult.from_dict(rec.bench),
                 Quality.from_dict(rec.quality) if rec.quality else None, rec.model_sha256, memory=rec.memory)


def _make_proposer(agent, space, heuristic, target, recipe, source_facts, seed, fits, shape_for, base):
    from haqa.agent.proposers import GridProposer, RandomProposer

    if agent == "heuristic":
        return heuristic, "heuristic"
    if agent == "random":
        return RandomProposer(space, seed=seed), f"random (seed {seed})"
    if agent == "grid":
        return GridProposer(space), "grid"
    if agent not in AGENTS:
        raise UserError(f"unknown agent '{agent}'; valid: {', '.join(AGENTS)}")
    from haqa.agent import objective as obj
    from haqa.agent.llm import LLMProposer, PromptFacts, endpoint_backend, make_backend

    if agent == "auto":
        backend = endpoint_backend()
        if backend is None:
            ui.note("agent: no LLM endpoint answers (OPENAI_BASE_URL, OLLAMA_HOST): the model-based heuristic proposes. "
                    "`--agent embedded` asks the offline SmolLM2-135M instead, which needed more trials in the "
                    "replays of docs/BENCHMARKS.md")
            return heuristic, "heuristic (auto: no LLM endpoint)"
    else:
        backend = make_backend("auto" if agent == "llm" else agent, threads=target.hardware.cores)
    hw = target.hardware
    bandwidth = hw.gpu.mem_bandwidth_gbs if hw.gpu.kind != "none" and hw.gpu.mem_bandwidth_gbs else hw.mem_bandwidth_gbs
    predictions = {}
    for q in space.dims["quant"]:
        shape = shape_for(q)
        est = predicted_peak(target, shape, base, tokens=base.ctx_size)
        predictions[q] = {"predicted_peak_mib": round(est.total / 2**20),
                          "weights_read_per_token_mib": round(shape.tensor_bytes / 2**20),
                          "roofline_decode_tps": round(memory.roofline_decode_tps(shape, bandwidth, n_ctx=base.ctx_size), 1)
                          if bandwidth else None}
    facts = PromptFacts(
        device={"name": target.name, "os": target.os, **target.hardware.model_dump(mode="json")},
        model={"architecture": source_facts.architecture, "name": source_facts.name,
               "parameters": source_facts.n_params, "layers": source_facts.n_layers,
               "source_type": source_facts.file_type, "synthetic": source_facts.synthetic},
        objective=obj.describe(recipe.objective, recipe.workload.prompt_tokens),
        constraints={"max_kld": recipe.quality.max_kld, "max_ppl_ratio": recipe.quality.max_ppl_ratio,
                     "min_context": recipe.workload.min_context,
                     "memory_budget_gib": round(hw.ram_gib - target.limits.memory_headroom_gib, 2)},
        predictions=predictions,
    )
    ui.note(f"agent: llm via {backend.name} ({backend.model})")
    return LLMProposer(space=space, backend=backend, facts=facts, fallback=heuristic), f"llm:{backend.name} ({backend.model})"


def predicted_peak(target: Target, shape: memory.ModelShape, config: RuntimeConfig, *, tokens: int,
                   bench_depth: int = 0) -> memory.MemoryEstimate:
    hw = target.hardware
    return memory.predict(shape, n_ctx=tokens, ubatch=config.ubatch_size, batch=config.batch_size,
                          type_k=config.cache_type_k, type_v=config.cache_type_v, n_gpu_layers=config.n_gpu_layers,
                          unified_memory=hw.gpu.unified_memory, arch=hw.arch, cpu_features=hw.cpu_features,
                          bench_depth=bench_depth)


def _report(trial: Trial, origin: str, recipe: Recipe, synthetic: bool) -> Trial:
    b, q = trial.bench, trial.quality
    ok, _ = within_budget(trial, recipe.quality, synthetic=synthetic)
    rss = f", peak RSS {b.peak_rss_bytes / 2**20:.0f} MiB" if b.peak_rss_bytes else ""
    kld = f"KLD {q.kld_mean:.4f}{'' if ok else ' (over budget)'}" if q else "synthetic"
    ui.note(f"{trial.name:>12}: decode {b.decode.mean:7.1f} ± {b.decode.stddev:.1f} tok/s (n={b.decode.repetitions}), "
            f"prefill {b.prefill.mean:8.1f} ± {b.prefill.stddev:.1f} tok/s (n={b.prefill.repetitions}), "
            f"{kld}{rss} [{origin}]")
    return trial
