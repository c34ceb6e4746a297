"""`haqa deploy --from-lock`: rebuild a bundle from a lock on another device of the same kind, without
searching. The same source model, llama.cpp commit and quant type give the same GGUF (checked by
hash); the locked configuration is measured once on the new device and compared with the lock.

Before anything is built: a bundle's files are checked against its SHA256SUMS, the lock's fields and
names are checked, and the locked choice passes the same search space, constraints and memory budget
a proposal of a search passes (the recipe may forbid what an edited lock asks for)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from haqa import ui
from haqa.agent.select import Trial, within_budget
from haqa.bundle import write_bundle
from haqa.bundle.destination import check_destination
from haqa.bundle.lock import LOCK_NAME, ReproducibleLock, parse, read_json
from haqa.bundle.verify import SUMS, verify_sums
from haqa.config import fingerprint, find_file, load_recipe, load_target
from haqa.config.schema import Recipe, Target
from haqa.errors import UserError
from haqa.measure.bench import run_bench
from haqa.measure.corpus import load_corpus
from haqa.measure.quality import QualitySettings, measure_quality
from haqa.measure.quantize import quantize
from haqa.model.gguf_facts import read_facts
from haqa.model.source import resolve_model
from haqa.runner import runner_for
from haqa.runtime import RuntimeConfig

# Facts that make two devices "of the same kind" for a lock: what the choice depended on.
SAME_KIND = [("os",), ("hardware", "arch"), ("hardware", "cores"), ("hardware", "ram_gib"), ("hardware", "gpu", "kind"),
             ("hardware", "gpu", "name"), ("hardware", "gpu", "memory_gib")]


def read_lock(path: Path) -> dict:
    """The lock at `path`: a bundle folder, the lock inside one, or a lock file on its own. A bundle's
    files are checked against its SHA256SUMS first (haqa/bundle/verify.py); the lock's fields are
    checked once here (haqa/bundle/lock.py), so the code below reads them without guarding each key."""
    path = Path(path)
    if path.is_dir():
        if not (path / SUMS).exists():
            raise UserError(f"{path} is a folder, and not a bundle folder (it has no {SUMS})",
                            hint="pass a bundle folder `haqa deploy` wrote, or its haqa.lock.json")
        bundle, path = path, path / LOCK_NAME
    else:
        bundle = path.parent if (path.parent / SUMS).exists() else None
    if bundle is not None:
        if path.name not in verify_sums(bundle).files:
            raise UserError(f"{SUMS} in {bundle} does not list {path.name}, so the lock cannot be checked",
                            hint="pass the bundle folder `haqa deploy` wrote")
    lock = read_json(path)
    from haqa.pipeline import LOCK_SCHEMA

    if lock.get("schema") != LOCK_SCHEMA:
        raise UserError(f"{path}: lock schema {lock.get('schema')!r} is not the one this haqa reads ({LOCK_SCHEMA})",
                        hint="deploy again with `haqa deploy` to write a current lock")
    parse(lock, path, ReproducibleLock)
    return lock


def locked_choice(lock: dict, target: Target, recipe: Recipe, model, source_facts) -> tuple[str, RuntimeConfig]:
    """The lock's quant and flags, once they pass the gate every proposal of a search passes: the
    recipe's search space on this target (its quants, KV types, thread counts, ...), the space's
    constraints (a context of at least min_context, ...) and the memory model's budget."""
    from haqa.agent.space import Candidate, Rejected, build_space
    from haqa.pipeline import memory_fits, model_shapes

    quant = lock["model"]["file_type"]
    config = RuntimeConfig(**{k: v for k, v in lock["runtime"].items() if k != "server_args"})
    fits = memory_fits(target, model_shapes(model.path, source_facts.file_type))
    space = build_space(target, recipe, n_layer=source_facts.n_layers or 1, fits=fits)
    cand = Candidate(quant, config)
    try:
        space.make(cand.values())
        if config.cache_type_v != config.cache_type_k:
            raise Rejected(f"cache_type_v={config.cache_type_v!r} differs from cache_type_k={config.cache_type_k!r}; "
                           "the space has one KV type for both")
        space.check(cand)
    except Rejected as e:
        raise UserError(f"the lock's choice ({quant}, {config.describe()}, context {config.ctx_size}) is not one "
                        f"recipe {recipe.name} allows on {target.name}: {e}",
                        hint=f"the lock was edited, or the recipe changed since; search anew: "
                             f"haqa deploy --target {target.name} --recipe {recipe.name}") from None
    return quant, config


def _get(d: dict, path: tuple):
    for k in path:
        d = (d or {}).get(k)
    return d


def kind_mismatches(lock: dict, target: Target) -> list[str]:
    """How the target differs from the device the lock was measured on (empty: same kind)."""
    facts, mine = lock["target"]["facts"], target.model_dump(mode="json")
    out = []
    for path in SAME_KIND:
        a, b = _get(facts, path), _get(mine, path)
        if a != b:
            out.append(f"{'.'.join(path)}: lock {a!r}, target {b!r}")
    return out


def deploy_from_lock(lock_path: Path, target_name: str | None = None, out: Path | None = None, *,
                     jobs: int | None = None) -> Path:
    lock = read_lock(lock_path)
    target = load_target(target_name or lock["target"]["name"])
    differ = kind_mismatches(lock, target)
    if differ:
        raise UserError(f"target {target.name} is not the kind of device the lock was measured on: " + "; ".join(differ),
                        hint=f"use a target with the same hardware, or search anew: haqa deploy --target {target.name} "
                             f"--recipe {lock['recipe']['name']}")
    recipe_file = find_file("recipes", lock["recipe"]["name"])
    recipe = load_recipe(lock["recipe"]["name"])
    out = check_destination(out or Path("dist") / f"{recipe.name}@{target.name}")  # before any work
    if fingerprint(recipe) != lock["recipe"]["sha256"]:
        ui.note(f"recipe {recipe.name} changed since the lock was written; the lock's choice is reproduced as "
                "locked where the recipe still allows it")
    model = resolve_model(recipe, recipe_file.parent)
    if model.sha256 != lock["source_model"]["sha256"]:
        raise UserError(f"the source model of {recipe.name} is not the one the lock was made from "
                        f"(sha256 {model.sha256[:12]}, lock {lock['source_model']['sha256'][:12]})",
                        hint="restore the recipe's source (revision, file), or run `haqa deploy` to search anew")
    source_facts = read_facts(model.path)
    label = f"{recipe.name}@{target.name}"
    quant, config = locked_choice(lock, target, recipe, model, source_facts)
    ui.step(f"reproducing {label} from {lock_path}: {quant}, {config.describe()} (no search)")

    from haqa.pipeline import SPEED_POLICY, _trial_record, documents, prepare_device, reference_for

    runner = runner_for(target)
    try:
        toolchain, device_source = prepare_device(runner, target, model, jobs)
        if toolchain.commit != lock["llama_cpp"]["commit"]:
            raise UserError(f"this haqa builds llama.cpp {toolchain.commit[:8]}, the lock was measured with "
                            f"{lock['llama_cpp']['commit'][:8]}", hint="use the haqa version named in the lock "
                                                                      f"({lock['haqa_version']})")
        candidate, _ = quantize(runner, toolchain, device_source, model.sha256, source_facts.file_type, quant)
        sha = runner.sha256(candidate)
        same_weights = sha == lock["model"]["sha256"]
        ui.note(f"{quant}: sha256 {sha[:12]} {'matches the lock' if same_weights else 'DIFFERS from the lock'}")
        w = recipe.workload
        bench = run_bench(runner, toolchain, candidate, config, prompt_tokens=w.prompt_tokens, gen_tokens=w.gen_tokens,
                          policy=SPEED_POLICY, log_path=runner.local_dir("logs") / f"bench-from-lock-{quant}.log")
        corpus = load_corpus(recipe.quality.corpus, recipe_file.parent)
        settings = QualitySettings(ctx=recipe.quality.ctx, chunks=recipe.quality.chunks)
        quality = None
        if not source_facts.synthetic:
            reference = reference_for(runner, toolchain, device_source, model, source_facts, corpus, settings,
                                      config.prefill_threads)
            if reference is not None:
                quality = measure_quality(runner, toolchain, candidate, reference, corpus, settings,
                                          threads=config.prefill_threads, cache_type_k=config.cache_type_k,
                                          cache_type_v=config.cache_type_v)
        trial = Trial(quant, config, bench, quality, sha)
        ok, why = within_budget(trial, recipe.quality, synthetic=source_facts.synthetic)
        if not ok:
            raise UserError(f"the locked configuration is over the quality budget on this device: {why}",
                            hint=f"search anew: haqa deploy --target {target.name} --recipe {recipe.name}")
        local_model = runner.fetch(candidate)
        server = runner.fetch(toolchain.bin("llama-server"))
        before = lock["metrics"]["bench"]
        verification = {
            "lock_sha256": hashlib.sha256(json.dumps(lock, sort_keys=True).encode()).hexdigest(),
            "lock_created": lock["created"], "lock_measured_on": lock.get("measured_on"),
            "weights_match_lock": same_weights,
            "decode_ratio_to_lock": round(bench.decode.mean / before["decode"]["mean"], 3),
            "prefill_ratio_to_lock": round(bench.prefill.mean / before["prefill"]["mean"], 3),
            "basis": "measured here once with the locked flags, against the lock's figures (different runs, "
                     "not interleaved)",
        }
        ui.note(f"against the lock: decode x{verification['decode_ratio_to_lock']}, "
                f"prefill x{verification['prefill_ratio_to_lock']}")
        new = dict(lock)
        new.update({
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "target": {"name": target.name, "sha256": fingerprint(target), "facts": target.model_dump(mode="json")},
            "measured_on": runner.describe(),
            "metrics": _trial_record(trial, recipe, source_facts.synthetic),
            "model": {**lock["model"], "sha256": sha},
            "reproduced_from_lock": verification,
            "original_comparison": lock.get("comparison"),
        })
        new.pop("comparison", None)
        new.pop("files", None)
        new["selection"] = {**lock["selection"], "reproduced": "from a lock: no search on this device"}
        out = out or Path("dist") / label
        bundle = write_bundle(out, model=local_model, model_name=f"{recipe.name}-{quant}.gguf", server_binary=server,
                              lock=new, server_args=config.server_args(), label=label, alias=recipe.name,
                              config=config, recipe=recipe.name, documents=documents(new), model_sha256=sha)
    finally:
        runner.close()
    ui.step(f"bundle written: {bundle}  (start it with {bundle}/run.sh)")
    return bundle

