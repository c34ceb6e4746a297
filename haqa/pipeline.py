"""The deploy pipeline: resolve the model, build llama.cpp, quantize the candidates on the device,
measure speed (under a drift guard) and quality (KLD against the source), choose within the quality
budget, and write the bundle. Each step is cached by content hashes, so a second run with unchanged
inputs measures nothing again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from haqa import __version__, paths, ui
from haqa.agent.select import RULE, NothingFeasible, Trial, choose, within_budget
from haqa.bundle import write_bundle
from haqa.config import fingerprint, find_file, load_recipe, load_target
from haqa.config.schema import Recipe, Target
from haqa.errors import ToolFailed, UserError
from haqa.measure.bench import BenchResult, SpeedPolicy, quick_decode, run_bench
from haqa.measure.corpus import load_corpus
from haqa.measure.drift import DriftGuard, run_guarded
from haqa.measure.quality import Quality, QualitySettings, measure_quality, reference_logits
from haqa.measure.quantize import quantize
from haqa.model import memory
from haqa.model.gguf_facts import read_facts
from haqa.model.source import resolve_model
from haqa.runner import runner_for
from haqa.runtime import RuntimeConfig
from haqa.toolchain import ensure_toolchain

LOCK_SCHEMA = 2
SPEED_POLICY = SpeedPolicy()


@dataclass(frozen=True)
class DeployResult:
    bundle: Path
    winner: Trial
    trials: list[Trial]


def default_config(target: Target, recipe: Recipe) -> RuntimeConfig:
    return RuntimeConfig(threads=target.hardware.cores, ctx_size=recipe.workload.min_context)


def _cache_file(target: Target, kind: str, payload: dict) -> Path:
    blob = json.dumps({**payload, "target": fingerprint(target)}, sort_keys=True)
    return paths.cache_home() / "results" / target.name / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"


def deploy(target_name: str, recipe_name: str, out: Path | None = None, *, jobs: int | None = None) -> DeployResult:
    target = load_target(target_name)
    recipe_file = find_file("recipes", recipe_name)
    recipe = load_recipe(recipe_name)
    label = f"{recipe.name}@{target.name}"
    ui.step(f"deploying {label}")

    model = resolve_model(recipe, recipe_file.parent)  # checked to be a GGUF before anything is built or sent
    source_facts = read_facts(model.path)
    ui.note(f"model: {model.path.name} ({source_facts.architecture}, {source_facts.file_type}, "
            f"{source_facts.n_params / 1e6:.0f}M parameters, sha256 {model.sha256[:12]})")
    corpus = load_corpus(recipe.quality.corpus, recipe_file.parent)

    runner = runner_for(target)
    try:
        return _deploy_on(runner, target, recipe, model, source_facts, corpus, label, out, jobs)
    finally:
        runner.close()


def _deploy_on(runner, target: Target, recipe: Recipe, model, source_facts, corpus, label: str, out: Path | None,
               jobs: int | None) -> DeployResult:
    toolchain = ensure_toolchain(runner, target, jobs=jobs)
    ui.note(f"llama.cpp {toolchain.commit[:8]} toolchain {toolchain.key} "
            f"({'cached' if toolchain.cached else 'built'}) in {toolchain.root}")

    if runner.name == "local":
        device_source = model.path
    else:
        device_source = runner.dir("models", "src", f"{model.sha256[:16]}.gguf")
        sent = runner.put(model.path, device_source)
        ui.note(f"source model {'uploaded to' if sent else 'already on'} the device: {device_source}")

    base = default_config(target, recipe)
    settings = QualitySettings(ctx=recipe.quality.ctx, chunks=recipe.quality.chunks)
    synthetic = source_facts.synthetic
    reference = None
    if synthetic:
        ui.note("synthetic weights: speed and memory only; quality is not measured")
    else:
        try:
            reference = reference_logits(runner, toolchain, device_source, model.sha256, corpus, settings, base.threads)
        except ToolFailed as e:
            raise UserError(f"computing the reference logits of {model.path.name} failed: {e}") from None
    w = recipe.workload

    def quality_of(trial_key: dict, candidate, config: RuntimeConfig) -> Quality | None:
        if synthetic:
            return None
        cache = _cache_file(target, "quality", {**trial_key, "reference": reference.name,
                                                "kv": [config.cache_type_k, config.cache_type_v]})
        if cache.exists():
            return Quality.from_dict(json.loads(cache.read_text()))
        q = measure_quality(runner, toolchain, candidate, reference, corpus, settings, threads=config.threads,
                            cache_type_k=config.cache_type_k, cache_type_v=config.cache_type_v)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(q.as_dict(), indent=1))
        return q

    def bench_cache(trial_key: dict, config: RuntimeConfig) -> Path:
        return _cache_file(target, "bench", {**trial_key, "config": config.as_dict(), "workload": w.model_dump(),
                                              "policy": dataclasses.asdict(SPEED_POLICY)})

    def shape_of(candidate, quant: str) -> memory.ModelShape:
        if runner.name == "local":
            return memory.ModelShape.from_gguf(Path(candidate))
        if quant == source_facts.file_type:
            return memory.ModelShape.from_gguf(model.path)
        return memory.estimate_quantized(model.path, quant)

    def memory_record(candidate, quant: str, config: RuntimeConfig, bench: BenchResult) -> dict:
        shape = shape_of(candidate, quant)
        runs = [predicted_peak(target, shape, config, tokens=w.prompt_tokens),
                predicted_peak(target, shape, config, tokens=w.prompt_tokens + w.gen_tokens, bench_depth=w.prompt_tokens)]
        bench_pred = max(r.host for r in runs)
        deploy_pred = predicted_peak(target, shape, config, tokens=config.ctx_size)
        rec = {"deployment_predicted": deploy_pred.as_dict(),
               "bench_predicted_bytes": round(bench_pred), "bench_measured_bytes": bench.peak_rss_bytes,
               "basis": f"{deploy_pred.basis}; measured: peak RSS of the llama-bench runs"}
        if bench.peak_rss_bytes:
            rec["bench_prediction_error"] = round((bench_pred - bench.peak_rss_bytes) / bench.peak_rss_bytes, 4)
        return rec

    def prepare(quant: str):
        candidate, _ = quantize(runner, toolchain, device_source, model.sha256, source_facts.file_type, quant)
        return candidate, {"model": runner.sha256(candidate), "toolchain": toolchain.key}

    budget = (target.hardware.ram_gib - target.limits.memory_headroom_gib) * 2**30
    candidates = []
    for q in recipe.search.quants:
        shape = (memory.ModelShape.from_gguf(model.path) if q == source_facts.file_type
                 else memory.estimate_quantized(model.path, q))
        for kv in recipe.quality.kv_types:
            config = dataclasses.replace(base, cache_type_k=kv, cache_type_v=kv)
            need = predicted_peak(target, shape, config, tokens=config.ctx_size)
            if need.host > budget:
                ui.note(f"{q} (KV {kv}): skipped: predicted peak {need.host / 2**30:.2f} GiB exceeds the "
                        f"{budget / 2**30:.2f} GiB budget of {target.name} ({need.basis})")
                continue
            candidates.append((q, config))
    if not candidates:
        raise UserError(f"no candidate of {label} fits in {target.name}'s memory (RAM {target.hardware.ram_gib} GiB "
                        f"less {target.limits.memory_headroom_gib} GiB headroom)",
                        hint="add smaller quant types to the recipe, lower [workload].min_context, or use a bigger device")
    done: dict[int, Trial] = {}
    to_measure: list[int] = []
    for i, (quant, config) in enumerate(candidates):
        try:
            candidate, key = prepare(quant)
        except ToolFailed as e:
            done[i] = Trial(quant=quant, config=config, bench=None, error=str(e)[-2000:])
            continue
        cache = bench_cache(key, config)
        if cache.exists():
            bench = BenchResult.from_dict(json.loads(cache.read_text()))
            done[i] = _report(Trial(quant, config, bench, quality_of(key, candidate, config), key["model"],
                                    memory=memory_record(candidate, quant, config, bench)),
                              "cached measurement", recipe, synthetic)
        else:
            to_measure.append(i)

    def measure(i: int) -> Trial:
        quant, config = candidates[i]
        tools = "llama-bench" if synthetic else "llama-bench and llama-perplexity"
        ui.note(f"measuring {quant} (KV {config.cache_type_k}) with {tools}")
        try:
            candidate, key = prepare(quant)
            bench = run_bench(runner, toolchain, candidate, config, prompt_tokens=w.prompt_tokens,
                              gen_tokens=w.gen_tokens, policy=SPEED_POLICY,
                              log_path=runner.local_dir("logs") / f"bench-{quant}-{config.cache_type_k}.log")
            trial = Trial(quant, config, bench, quality_of(key, candidate, config), key["model"],
                          memory=memory_record(candidate, quant, config, bench))
            return _report(trial, "measured", recipe, synthetic)
        except ToolFailed as e:
            ui.note(f"{quant:>7}: failed: {str(e).splitlines()[0]}")
            return Trial(quant=quant, config=config, bench=None, error=str(e)[-2000:])

    def accept(trial: Trial) -> None:
        if trial.ok:
            cache = bench_cache({"model": trial.model_sha256, "toolchain": toolchain.key}, trial.config)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(trial.bench.as_dict(), indent=1))

    guard = DriftGuard(lambda: quick_decode(runner, toolchain, device_source, base))
    reruns = 0
    if to_measure:
        measured, reruns = run_guarded(to_measure, measure, guard, accept=accept)
        done.update(zip(to_measure, measured))
        if reruns:
            ui.note(f"drift guard: the anchor moved; {reruns} trial(s) measured again")
    trials = [done[i] for i in range(len(candidates))]

    try:
        winner = choose(trials, recipe.quality, synthetic=synthetic)
    except NothingFeasible as e:
        raise UserError(f"no candidate of {label} is within the quality budget (max_kld {recipe.quality.max_kld}): {e}",
                        hint="raise [quality].max_kld in the recipe or add higher-precision quants to [search].quants") from None
    kld = f"KLD {winner.quality.kld_mean:.4f}" if winner.quality else "quality not reported (synthetic)"
    ui.step(f"chose {winner.name}: decode {winner.bench.decode.mean:.1f} tok/s, {kld} (rule: {RULE})")
    device_candidate, _ = prepare(winner.quant)
    candidate = runner.fetch(device_candidate)
    server = runner.fetch(toolchain.bin("llama-server"))

    model_name = f"{recipe.name}-{winner.quant}.gguf"
    lock = _lock(target, recipe, model, source_facts, toolchain, winner, trials, candidate, runner.describe(),
                 corpus, settings, guard if to_measure else None, reruns)
    out = out or Path("dist") / label
    bundle = write_bundle(out, model=candidate, model_name=model_name, server_binary=server,
                          lock=lock, server_args=winner.config.server_args(), label=label, alias=recipe.name)
    ui.step(f"bundle written: {bundle}  (start it with {bundle}/run.sh)")
    return DeployResult(bundle=bundle, winner=winner, trials=trials)


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


def _trial_record(t: Trial, recipe: Recipe, synthetic: bool) -> dict:
    rec = {"name": t.name, "quant": t.quant, "config": t.config.as_dict(), "status": "ok" if t.ok else "failed"}
    if t.ok:
        ok, why = within_budget(t, recipe.quality, synthetic=synthetic)
        rec["bench"] = t.bench.as_dict()
        if t.memory:
            rec["memory"] = t.memory
        rec["quality"] = t.quality.as_dict() if t.quality else None
        rec["within_budget"] = ok
        rec["budget_note"] = why
        rec["time_to_first_token_s"] = {
            "value": round(t.bench.time_to_first_token_s(recipe.workload.prompt_tokens), 4),
            "basis": f"derived: prompt_tokens ({recipe.workload.prompt_tokens}) / measured prefill mean",
        }
        rec["model_sha256"] = t.model_sha256
    else:
        rec["error"] = t.error
    return rec


def _lock(target: Target, recipe: Recipe, model, source_facts, toolchain, winner: Trial, trials: list[Trial],
          candidate: Path, device: dict, corpus, settings: QualitySettings, guard: DriftGuard | None,
          reruns: int) -> dict:
    facts = read_facts(candidate)
    return {
        "schema": LOCK_SCHEMA,
        "haqa_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "target": {"name": target.name, "sha256": fingerprint(target), "facts": target.model_dump(mode="json")},
        "recipe": {"name": recipe.name, "sha256": fingerprint(recipe), "workload": recipe.workload.model_dump(),
                   "quality_budget": recipe.quality.model_dump()},
        "measured_on": device,
        "llama_cpp": {"commit": toolchain.commit, "llama_cpp_python": toolchain.llama_cpp_python,
                      "source_sha256": toolchain.source_sha256, "cmake_options": toolchain.cmake_options,
                      "toolchain_key": toolchain.key},
        "source_model": {"source": model.source, "sha256": model.sha256, "file_type": source_facts.file_type},
        "model": {"file_type": winner.quant, "sha256": winner.model_sha256, "size_bytes": facts.size_bytes,
                  "architecture": facts.architecture, "n_params": facts.n_params},
        "runtime": {**winner.config.as_dict(), "server_args": winner.config.server_args()},
        "selection": {"proposer": "rule", "rule": RULE, "trials": len(trials)},
        "synthetic": source_facts.synthetic,
        "quality_method": ("not measured: synthetic weights" if source_facts.synthetic else
                           {"reference": f"the source GGUF ({source_facts.file_type})", "corpus": corpus.name,
                            "corpus_sha256": corpus.sha256, "ctx": settings.ctx, "chunks": settings.chunks,
                            "tool": "llama-perplexity --kl-divergence"}),
        "speed_method": {"tool": "llama-bench", **dataclasses.asdict(SPEED_POLICY),
                         "prefill": f"{recipe.workload.prompt_tokens} tokens at depth 0",
                         "decode": f"{recipe.workload.gen_tokens} tokens at depth {recipe.workload.prompt_tokens}"},
        "drift_guard": ({**guard.as_dict(), "reruns": reruns} if guard else "no new measurements in this run"),
        "metrics": _trial_record(winner, recipe, source_facts.synthetic),
        "trials": [_trial_record(t, recipe, source_facts.synthetic) for t in trials],
    }
