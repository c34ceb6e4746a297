"""The deploy pipeline: resolve the model, build llama.cpp, quantize and measure the candidates on the
device, choose, and write the bundle. Each step is cached by content hashes, so a second run with
unchanged inputs measures nothing again."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from haqa import __version__, paths, ui
from haqa.agent.select import RULE, Trial, choose
from haqa.bundle import write_bundle
from haqa.config import fingerprint, find_file, load_recipe, load_target
from haqa.config.schema import Recipe, Target
from haqa.errors import ToolFailed, UserError
from haqa.measure.bench import BenchResult, run_bench
from haqa.measure.quantize import quantize
from haqa.model.gguf_facts import read_facts
from haqa.model.source import resolve_model
from haqa.runner import runner_for
from haqa.runtime import RuntimeConfig
from haqa.toolchain import ensure_toolchain

LOCK_SCHEMA = 1
BENCH_REPETITIONS = 3


@dataclass(frozen=True)
class DeployResult:
    bundle: Path
    winner: Trial
    trials: list[Trial]


def default_config(target: Target, recipe: Recipe) -> RuntimeConfig:
    return RuntimeConfig(threads=target.hardware.cores, ctx_size=recipe.workload.min_context)


def _bench_cache_path(target: Target, model_sha: str, toolchain_key: str, config: RuntimeConfig, recipe: Recipe) -> Path:
    blob = json.dumps({
        "model": model_sha, "toolchain": toolchain_key, "config": config.as_dict(), "target": fingerprint(target),
        "prompt": recipe.workload.prompt_tokens, "gen": recipe.workload.gen_tokens, "reps": BENCH_REPETITIONS,
    }, sort_keys=True)
    return paths.cache_home() / "results" / target.name / f"bench-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"


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

    runner = runner_for(target)
    try:
        return _deploy_on(runner, target, recipe, model, source_facts, label, out, jobs)
    finally:
        runner.close()


def _deploy_on(runner, target: Target, recipe: Recipe, model, source_facts, label: str, out: Path | None,
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

    config = default_config(target, recipe)
    trials: list[Trial] = []
    for quant in recipe.search.quants:
        try:
            candidate, _ = quantize(runner, toolchain, device_source, model.sha256, source_facts.file_type, quant)
            cand_sha = runner.sha256(candidate)
            cache = _bench_cache_path(target, cand_sha, toolchain.key, config, recipe)
            if cache.exists():
                bench = BenchResult.from_dict(json.loads(cache.read_text()))
                origin = "cached measurement"
            else:
                ui.note(f"measuring {quant} with llama-bench ({BENCH_REPETITIONS} repetitions)")
                bench = run_bench(runner, toolchain, candidate, config, prompt_tokens=recipe.workload.prompt_tokens,
                                  gen_tokens=recipe.workload.gen_tokens, repetitions=BENCH_REPETITIONS,
                                  log_path=runner.local_dir("logs") / f"bench-{quant}.log")
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(bench.as_dict(), indent=1))
                origin = "measured"
            trials.append(Trial(quant=quant, config=config, bench=bench, model_sha256=cand_sha))
            ui.note(f"{quant:>7}: decode {bench.decode.mean:7.1f} ± {bench.decode.stddev:.1f} tok/s, "
                    f"prefill {bench.prefill.mean:8.1f} ± {bench.prefill.stddev:.1f} tok/s "
                    f"(n={bench.decode.repetitions}, {origin})")
        except ToolFailed as e:
            ui.note(f"{quant:>7}: failed: {str(e).splitlines()[0]}")
            trials.append(Trial(quant=quant, config=config, bench=None, error=str(e)[-2000:]))

    if not any(t.ok for t in trials):
        raise UserError(f"no candidate of {label} could be measured; the errors were:\n" +
                        "\n".join(f"  {t.quant}: {t.error}" for t in trials))
    winner = choose(trials)
    ui.step(f"chose {winner.quant}: decode {winner.bench.decode.mean:.1f} tok/s (rule: {RULE})")
    device_candidate, _ = quantize(runner, toolchain, device_source, model.sha256, source_facts.file_type, winner.quant)
    candidate = runner.fetch(device_candidate)
    server = runner.fetch(toolchain.bin("llama-server"))

    model_name = f"{recipe.name}-{winner.quant}.gguf"
    lock = _lock(target, recipe, model, source_facts, toolchain, winner, trials, candidate, runner.describe())
    out = out or Path("dist") / label
    bundle = write_bundle(out, model=candidate, model_name=model_name, server_binary=server,
                          lock=lock, server_args=winner.config.server_args(), label=label, alias=recipe.name)
    ui.step(f"bundle written: {bundle}  (start it with {bundle}/run.sh)")
    return DeployResult(bundle=bundle, winner=winner, trials=trials)


def _trial_record(t: Trial, recipe: Recipe) -> dict:
    rec = {"quant": t.quant, "config": t.config.as_dict(), "status": "ok" if t.ok else "failed"}
    if t.ok:
        rec["bench"] = t.bench.as_dict()
        rec["time_to_first_token_s"] = {
            "value": round(t.bench.time_to_first_token_s(recipe.workload.prompt_tokens), 4),
            "basis": f"derived: prompt_tokens ({recipe.workload.prompt_tokens}) / measured prefill mean",
        }
        rec["model_sha256"] = t.model_sha256
    else:
        rec["error"] = t.error
    return rec


def _lock(target: Target, recipe: Recipe, model, source_facts, toolchain, winner: Trial, trials: list[Trial],
          candidate: Path, device: dict) -> dict:
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
        "selection": {"proposer": "rule", "rule": RULE, "trials": len(trials),
                      "quality": "not measured by this version: the choice is by speed alone"},
        "metrics": _trial_record(winner, recipe),
        "trials": [_trial_record(t, recipe) for t in trials],
    }
