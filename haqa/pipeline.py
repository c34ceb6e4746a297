"""The deploy pipeline: resolve the model, build llama.cpp, quantize the candidates on the device,
measure speed (under a drift guard) and quality (KLD against the source), choose within the quality
budget, and write the bundle. Each step is cached by content hashes, so a second run with unchanged
inputs measures nothing again."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path

from haqa import ui
from haqa.agent import objective as obj
from haqa.agent.context import ContextDecider
from haqa.agent.facts import prompt_facts
from haqa.agent.finalists import compare_with_baselines, compared, finalists
from haqa.agent.proposers import HeuristicProposer
from haqa.agent.registry import deploy_proposer
from haqa.agent.search import Search, StopRule, observation
from haqa.agent.select import NothingFeasible, Trial, choose, within_budget
from haqa.agent.space import SearchSpace, build_space
from haqa.agent.store import TrialStore, store_path
from haqa.agent.trials import DeviceTrials, speed_policy
from haqa.bundle import write_bundle
from haqa.bundle.destination import check_destination
from haqa.bundle.lock.build import build as build_lock
from haqa.bundle.report import documents
from haqa.config import find_file, load_recipe, load_target
from haqa.config.schema import Recipe, Target
from haqa.errors import ConnectionLost, ToolFailed, UserError
from haqa.measure.bench import quick_decode
from haqa.measure.corpus import load_corpus
from haqa.measure.drift import DriftGuard
from haqa.measure.quality import Quality, QualitySettings, measure_quality, reference_logits
from haqa.model.budget import MemoryGate, model_shapes
from haqa.model.gguf_facts import read_facts
from haqa.model.source import resolve_model
from haqa.runner import runner_for
from haqa.runner.base import DiskFull
from haqa.runtime import RuntimeConfig
from haqa.toolchain import ensure_toolchain


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


@dataclass
class Prepared:
    """What a search on the device needs, set up: the space (memory-gated), the device's toolchain and
    source model, the reference logits, and the measurement of one candidate there."""

    space: SearchSpace
    gate: MemoryGate
    base: RuntimeConfig
    toolchain: object
    measure: DeviceTrials


def _deploy_on(runner, target: Target, recipe: Recipe, model, source_facts, corpus, label: str, out: Path | None,
               jobs: int | None, agent: str = "heuristic", seed: int = 0) -> DeployResult:
    started = time.monotonic()
    prepared = _prepare(runner, target, recipe, model, source_facts, corpus, jobs)
    proposer, agent_used = _proposer(agent, prepared, target, recipe, source_facts, seed)
    max_seconds = recipe.search.max_minutes * 60 - (time.monotonic() - started)
    search, guard = _search(runner, prepared, proposer, target, recipe, source_facts, max_seconds)
    ui.note(f"search stopped: {search.stop_reason} ({search.new_trials} new trial(s), {len(search.trials)} in all, "
            f"agent {agent_used})")
    winner, comparison, context = _final_word(runner, prepared, search, recipe, source_facts, corpus, label)
    return _bundle(runner, prepared, search, proposer, agent_used, winner, comparison, context, guard,
                   target=target, recipe=recipe, model=model, source_facts=source_facts, corpus=corpus,
                   label=label, out=out)


def _prepare(runner, target: Target, recipe: Recipe, model, source_facts, corpus, jobs: int | None) -> Prepared:
    """The memory-gated space (refused before anything is built when nothing fits), the toolchain and the
    source model on the device, and the reference logits."""
    settings = QualitySettings(ctx=recipe.quality.ctx, chunks=recipe.quality.chunks)
    base = default_config(target, recipe, n_layers=source_facts.n_layers)
    shape_for = model_shapes(model.path, source_facts.file_type)
    gate = MemoryGate(target, shape_for)
    space = build_space(target, recipe, n_layer=source_facts.n_layers or 1, fits=gate)
    refuse_if_nothing_fits(space, gate, target, recipe)  # before anything is built or sent
    toolchain, device_source = prepare_device(runner, target, model, jobs)
    reference = reference_for(runner, toolchain, device_source, model, source_facts, corpus, settings, base.threads)
    measure = DeviceTrials(runner=runner, toolchain=toolchain, device_source=device_source, model=model,
                           source_type=source_facts.file_type, synthetic=source_facts.synthetic, reference=reference,
                           corpus=corpus, settings=settings, workload=recipe.workload, target=target,
                           shape_for=shape_for, policy=speed_policy(recipe))
    return Prepared(space, gate, base, toolchain, measure)


def _proposer(agent: str, prepared: Prepared, target: Target, recipe: Recipe, source_facts, seed: int):
    space, shape_for = prepared.space, prepared.gate.shape_for
    heuristic = HeuristicProposer(space, {q: float(shape_for(q).tensor_bytes) for q in space.dims["quant"]})

    def facts():
        from haqa.agent.llm import PromptFacts

        return PromptFacts(**prompt_facts(target, recipe, source_facts, space.dims["quant"], shape_for, prepared.base))

    return deploy_proposer(agent, space, heuristic, seed=seed, threads=target.hardware.cores, facts=facts)


def _search(runner, prepared: Prepared, proposer, target: Target, recipe: Recipe, source_facts,
            max_seconds: float) -> tuple[Search, DriftGuard]:
    """Resume from the trial store, then search under the drift guard until the recipe's stop rule."""
    measure, synthetic = prepared.measure, source_facts.synthetic
    guard = DriftGuard(lambda: quick_decode(runner, prepared.toolchain, measure.device_source, prepared.base))

    def observe(cand, trial):
        return observation(cand, trial, budget=recipe.quality, objective=recipe.objective,
                           workload=recipe.workload, synthetic=synthetic)

    def reported(finished):
        if finished.trial.ok:
            _report(finished.trial, "measured", recipe, synthetic)

    store = TrialStore(store_path(target.name, recipe.name))
    search = Search(proposer=proposer, measure=measure, observe=observe, key=measure.key,
                    stop=StopRule(recipe.search.max_trials, recipe.search.patience, max_seconds=max_seconds),
                    store=store, toolchain=prepared.toolchain.key, gate=prepared.gate, drift=guard,
                    environment_cause=_environment_cause, on_trial=reported)
    try:
        if search.resume(prepared.space):
            ui.note(f"resuming: {len(search.trials)} trial(s) of earlier runs are still valid (store: {store.path})")
        search.run()
    finally:
        store.close()
    return search, guard


def _environment_cause(error: BaseException) -> str | None:
    """Failures of the device rather than the candidate: the next run measures the candidate again."""
    if isinstance(error, ConnectionLost):
        return "connection"
    if isinstance(error, DiskFull):
        return "disk"
    return None


def _final_word(runner, prepared: Prepared, search: Search, recipe: Recipe, source_facts, corpus, label: str):
    """The leader within the quality budget, then the side-by-side comparison of the finalists (unless the
    recipe skips it): the winner and the comparison."""
    measure, synthetic, base = prepared.measure, source_facts.synthetic, prepared.base
    all_trials = search.all_trials()
    scorer = lambda t: obj.score(t.bench, recipe.objective, recipe.workload)  # noqa: E731
    try:
        leader = choose(all_trials, recipe.quality, synthetic=synthetic, key=scorer, limits=recipe.workload)
    except NothingFeasible as e:
        raise UserError(f"no candidate of {label} is within the quality budget (max_kld {recipe.quality.max_kld}): {e}",
                        hint="raise [quality].max_kld in the recipe or add higher-precision quants to "
                             "[search].quants") from None
    decider = ContextDecider(recipe.workload, prepared.gate, source_facts.context_length)
    if recipe.search.compare_rounds == 0:
        ui.note("side-by-side comparison skipped ([search] compare_rounds = 0 in the recipe)")
        return _with_context(runner, prepared, leader, recipe, decider), None, decider.choice(
            leader.quant, leader.config)

    def quality_of(quant: str, path) -> Quality | None:
        """Quality depends on the weights and the KV types only: reuse a trial's, else measure it."""
        if synthetic:
            return None
        for t in all_trials:
            if t.ok and t.quant == quant and t.quality and t.config.cache_type_k == "f16" == t.config.cache_type_v:
                return t.quality
        return measure_quality(runner, prepared.toolchain, path, measure.reference, corpus, measure.settings,
                               threads=base.threads)

    chosen = finalists(all_trials, leader, recipe, synthetic, scorer, base)
    compare = functools.partial(compare_with_baselines, runner, prepared.toolchain, recipe, source_facts, chosen,
                                prepare=lambda q: measure.prepare(q)[0], fits=prepared.gate, default=base,
                                quality_of=quality_of, prompt_text=corpus.path.read_text(errors="replace"),
                                deployed=decider.deployed)
    winner, comparison = compared(label, chosen, measure.key, recipe=recipe, default=base, compare=compare)
    return _with_context(runner, prepared, winner, recipe, decider), comparison, decider.choice(
        winner.quant, winner.config)


def _with_context(runner, prepared: Prepared, winner: Trial, recipe: Recipe, decider: ContextDecider) -> Trial:
    return decider.apply(winner, runner=runner, toolchain=prepared.toolchain,
                         model=lambda: prepared.measure.prepare(winner.quant)[0])


def _bundle(runner, prepared: Prepared, search: Search, proposer, agent_used: str, winner: Trial, comparison,
            context, guard: DriftGuard, *, target: Target, recipe: Recipe, model, source_facts, corpus, label: str,
            out: Path | None) -> DeployResult:
    """The winner's GGUF checked to be the measured bytes, fetched with llama-server, and the bundle written."""
    w, measure = recipe.workload, prepared.measure
    kld = f"KLD {winner.quality.kld_mean:.4f}" if winner.quality else "quality not reported (synthetic)"
    ui.step(f"chose {winner.name}: decode {winner.bench.decode.mean:.1f} tok/s "
            f"{'side by side' if comparison else 'in the search'}, {kld} "
            f"({obj.describe(recipe.objective, w)}, within the quality budget)")
    device_candidate, sha = measure.prepare(winner.quant)
    if sha != winner.model_sha256:
        raise UserError(f"the {winner.quant} candidate {device_candidate} is not the file the chosen configuration "
                        f"was measured with (sha256 {sha[:12]}, measured {str(winner.model_sha256)[:12]}); refusing to "
                        "bundle bytes that were not measured",
                        hint=f"remove it (haqa quantizes it again) and deploy again; if it differs again, the stored "
                             f"trials measured other bytes: remove {search.store.path} to measure anew")
    candidate = runner.fetch(device_candidate)
    server = runner.fetch(prepared.toolchain.bin("llama-server"))
    all_trials = search.all_trials()
    front = obj.pareto_front([(t.bench.decode.mean, t.quality.kld_mean, t) for t in all_trials
                              if t.ok and t.quality is not None])
    selection = {"proposer": agent_used, "trials": len(search.trials), "new_trials": search.new_trials,
                 "stop": search.stop_reason, "reruns_after_drift": search.reruns,
                 "llm_fallbacks": getattr(proposer, "fallbacks", 0), "llm_replies": getattr(proposer, "replies", 0),
                 "space_size": prepared.space.size(), "objective": obj.describe(recipe.objective, w),
                 "pareto_front": [f"{t.name} ({t.config.describe()})" for t in front], "context": context.as_dict()}
    lock = build_lock(target=target, recipe=recipe, source=model, source_facts=source_facts,
                      toolchain=prepared.toolchain, model_file=candidate, winner=winner,
                      trials=[(f.trial, f.proposer, f.rationale) for f in search.trials.values()],
                      measured_on=runner.describe(), corpus=corpus, settings=measure.settings,
                      speed_policy=measure.policy, guard=guard if search.new_trials else None, reruns=search.reruns,
                      selection=selection, comparison=comparison)
    out = out or Path("dist") / label
    bundle = write_bundle(out, model=candidate, model_name=f"{recipe.name}-{winner.quant}.gguf", server_binary=server,
                          lock=lock, server_args=winner.config.server_args(), label=label, alias=recipe.name,
                          config=winner.config, recipe=recipe.name, documents=documents(lock),
                          model_sha256=winner.model_sha256)
    ui.step(f"bundle written: {bundle}  (start it with {bundle}/run.sh)")
    return DeployResult(bundle=bundle, winner=winner, trials=all_trials)


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


def _report(trial: Trial, origin: str, recipe: Recipe, synthetic: bool) -> Trial:
    b, q = trial.bench, trial.quality
    ok, _ = within_budget(trial, recipe.quality, synthetic=synthetic, limits=recipe.workload)
    rss = f", peak RSS {b.peak_rss_bytes / 2**20:.0f} MiB" if b.peak_rss_bytes else ""
    kld = f"KLD {q.kld_mean:.4f}{'' if ok else ' (over budget)'}" if q else "synthetic"
    ui.note(f"{trial.name:>12}: decode {b.decode.mean:7.1f} ± {b.decode.stddev:.1f} tok/s (n={b.decode.repetitions}), "
            f"prefill {b.prefill.mean:8.1f} ± {b.prefill.stddev:.1f} tok/s (n={b.prefill.repetitions}), "
            f"{kld}{rss} [{origin}]")
    return trial
