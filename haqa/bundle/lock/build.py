"""Building a lock: from a search (`build`, which `haqa deploy` calls) or from the lock it reproduces
(`reproduced`, which `haqa deploy --from-lock` calls). The lock's tables are assembled here and nowhere
else, and checked against the model (haqa/bundle/lock/model.py) before anything writes them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from haqa import __version__
from haqa.agent.select import RULE, Trial, within_budget
from haqa.bundle.lock.model import SCHEMA, Lock
from haqa.config import fingerprint
from haqa.config.schema import Recipe, Target
from haqa.model.gguf_facts import read_facts


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def trial_record(t: Trial, recipe: Recipe, synthetic: bool) -> dict:
    """A trial as the lock records it: its measurements and verdict, or why it failed."""
    rec = {"name": t.name, "quant": t.quant, "config": t.config.as_dict(), "status": "ok" if t.ok else "failed"}
    if t.ok:
        ok, why = within_budget(t, recipe.quality, synthetic=synthetic, limits=recipe.workload)
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


def _target(target: Target) -> dict:
    return {"name": target.name, "sha256": fingerprint(target), "facts": target.model_dump(mode="json")}


def build(*, target: Target, recipe: Recipe, source, source_facts, toolchain, model_file: Path, winner: Trial,
          trials: list[tuple[Trial, str, str]], measured_on: dict, corpus, settings, speed_policy, guard,
          reruns: int, selection: dict, comparison: dict | None) -> Lock:
    """The lock of a search: `winner` chosen from `trials` (each with who proposed it and why), its
    model file `model_file` (a local copy), measured on `measured_on` (runner.describe()). `guard` is
    the drift guard when this run measured anything, else None."""
    facts = read_facts(model_file)
    synthetic = source_facts.synthetic
    w = recipe.workload
    metrics = trial_record(winner, recipe, synthetic)
    if recipe.search.compare_rounds:
        metrics["speed_basis"] = (f"the side-by-side re-measurement ({recipe.search.compare_rounds} interleaved "
                                  f"rounds x {recipe.search.compare_repetitions} repetitions); the search's own "
                                  "figures are in trials")
    return Lock.model_validate({
        "schema": SCHEMA,
        "haqa_version": __version__,
        "created": _now(),
        "target": _target(target),
        "recipe": {"name": recipe.name, "sha256": fingerprint(recipe), "workload": w.model_dump(),
                   "quality_budget": recipe.quality.model_dump()},
        "measured_on": measured_on,
        "llama_cpp": {"commit": toolchain.commit, "llama_cpp_python": toolchain.llama_cpp_python,
                      "source_sha256": toolchain.source_sha256, "cmake_options": toolchain.cmake_options,
                      "toolchain_key": toolchain.key},
        "source_model": {"source": source.source, "sha256": source.sha256, "file_type": source_facts.file_type},
        "model": {"file_type": winner.quant, "sha256": winner.model_sha256, "size_bytes": facts.size_bytes,
                  "architecture": facts.architecture, "n_params": facts.n_params},
        "runtime": {**winner.config.as_dict(), "server_args": winner.config.server_args()},
        "selection": {**selection, "rule": RULE},
        "synthetic": synthetic,
        "quality_method": ("not measured: synthetic weights" if synthetic else
                           {"reference": f"the source GGUF ({source_facts.file_type})", "corpus": corpus.name,
                            "corpus_sha256": corpus.sha256, "ctx": settings.ctx, "chunks": settings.chunks,
                            "tool": "llama-perplexity --kl-divergence"}),
        "speed_method": {"tool": "llama-bench", **dataclasses.asdict(speed_policy),
                         "prefill": f"{w.prompt_tokens} tokens at depth 0",
                         "decode": f"{w.gen_tokens} tokens at depth {w.prompt_tokens}"},
        "drift_guard": ({**guard.as_dict(), "reruns": reruns} if guard else "no new measurements in this run"),
        "metrics": metrics,
        "trials": [{**trial_record(t, recipe, synthetic), "proposer": who, "rationale": why} for t, who, why in trials],
        "comparison": comparison,
    })


def reproduced(lock: Lock, *, target: Target, recipe: Recipe, synthetic: bool, trial: Trial,
               measured_on: dict) -> Lock:
    """The lock of `lock`'s choice measured again on `target` (once, as `trial`): the device's facts and
    figures are this run's, the record of the search is the lock's, and `reproduced_from_lock` compares
    the two."""
    before = lock.metrics.bench
    data = lock.to_dict()
    data.update({
        "created": _now(),
        "target": _target(target),
        "measured_on": measured_on,
        "metrics": trial_record(trial, recipe, synthetic),
        "model": {**data["model"], "sha256": trial.model_sha256},
        "reproduced_from_lock": {
            "lock_sha256": lock.sha256(), "lock_created": lock.created,
            "lock_measured_on": data.get("measured_on"),
            "weights_match_lock": trial.model_sha256 == lock.model.sha256,
            "decode_ratio_to_lock": round(trial.bench.decode.mean / before.decode.mean, 3),
            "prefill_ratio_to_lock": round(trial.bench.prefill.mean / before.prefill.mean, 3),
            "basis": "measured here once with the locked flags, against the lock's figures (different runs, "
                     "not interleaved)",
        },
        "original_comparison": data.get("comparison") or data.get("original_comparison"),
    })
    data.pop("comparison", None)
    data.pop("files", None)
    data["selection"] = {**data["selection"], "reproduced": "from a lock: no search on this device"}
    return Lock.model_validate(data)
