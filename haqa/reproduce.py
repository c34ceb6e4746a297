"""`haqa deploy --from-lock`: rebuild a bundle from a lock on another device of the same kind, without
searching. The same source model, llama.cpp commit and quant type give the same GGUF (checked by
hash); the locked configuration is measured once on the new device and compared with the lock.

Before anything is built: a bundle's files are checked against its SHA256SUMS, the lock's fields and
names are checked, and the locked choice passes the same search space, constraints and memory budget
a proposal of a search passes (the recipe may forbid what an edited lock asks for)."""

from __future__ import annotations

import operator
from pathlib import Path

from haqa import ui
from haqa.agent.select import Trial, within_budget
from haqa.bundle import write_bundle
from haqa.bundle.destination import check_destination
from haqa.bundle.lock import LOCK_NAME, Lock, load
from haqa.bundle.lock.build import reproduced
from haqa.bundle.report import documents
from haqa.bundle.verify import SUMS, verify_sums
from haqa.config import find_file, fingerprint, load_recipe, load_target
from haqa.config.schema import Recipe, Target
from haqa.errors import UserError
from haqa.measure.bench import run_bench
from haqa.measure.corpus import load_corpus
from haqa.measure.quality import QualitySettings, measure_quality
from haqa.measure.quantize import quantize
from haqa.model.gguf_facts import read_facts
from haqa.model.memory import ModelShape
from haqa.model.source import resolve_model
from haqa.runner import runner_for
from haqa.runtime import RuntimeConfig

# Facts that make two devices "of the same kind" for a lock: what the choice depended on.
SAME_KIND = ["os", "hardware.arch", "hardware.cores", "hardware.ram_gib", "hardware.gpu.kind", "hardware.gpu.name",
             "hardware.gpu.memory_gib"]


def read_lock(path: Path) -> Lock:
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
    return load(path)


def locked_choice(lock: Lock, target: Target, recipe: Recipe, model, source_facts) -> tuple[str, RuntimeConfig]:
    """The lock's quant and flags, once they pass the gate every proposal of a search passes: the
    recipe's search space on this target (its quants, KV types, thread counts, ...), the space's
    constraints (a context of at least min_context, ...) and the memory model's budget."""
    from haqa.agent.space import Candidate, Rejected, build_space
    from haqa.model.budget import MemoryGate, model_shapes

    quant, config = lock.model.file_type, lock.runtime.config()
    fits = MemoryGate(target, model_shapes(model.path, source_facts.file_type)).within_budget
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


def kind_mismatches(lock: Lock, target: Target) -> list[str]:
    """How the target differs from the device the lock was measured on (empty: same kind)."""
    out = []
    for path in SAME_KIND:
        a, b = operator.attrgetter(path)(lock.target.facts), operator.attrgetter(path)(target)
        if a != b:
            out.append(f"{path}: lock {a!r}, target {b!r}")
    return out


def _memory(predicted, bench) -> dict:
    """The memory record of the reproduced trial: the memory model's peak for the deployment (what
    `haqa ship` checks against the device) beside the peak measured in this run's benchmark."""
    return {"deployment_predicted": predicted.as_dict(), "bench_measured_bytes": bench.peak_rss_bytes,
            "basis": f"{predicted.basis}; measured: peak RSS of the llama-bench run"}


def deploy_from_lock(lock_path: Path, target_name: str | None = None, out: Path | None = None, *,
                     jobs: int | None = None) -> Path:
    lock = read_lock(lock_path)
    target = load_target(target_name or lock.target.name)
    differ = kind_mismatches(lock, target)
    if differ:
        raise UserError(f"target {target.name} is not the kind of device the lock was measured on: "
                        + "; ".join(differ),
                        hint=f"use a target with the same hardware, or search anew: haqa deploy --target {target.name} "
                             f"--recipe {lock.recipe.name}")
    recipe_file = find_file("recipes", lock.recipe.name)
    recipe = load_recipe(lock.recipe.name)
    out = check_destination(out or Path("dist") / f"{recipe.name}@{target.name}")  # before any work
    if fingerprint(recipe) != lock.recipe.sha256:
        ui.note(f"recipe {recipe.name} changed since the lock was written; the lock's choice is reproduced as "
                "locked where the recipe still allows it")
    model = resolve_model(recipe, recipe_file.parent)
    if model.sha256 != lock.source_model.sha256:
        raise UserError(f"the source model of {recipe.name} is not the one the lock was made from "
                        f"(sha256 {model.sha256[:12]}, lock {lock.source_model.sha256[:12]})",
                        hint="restore the recipe's source (revision, file), or run `haqa deploy` to search anew")
    source_facts = read_facts(model.path)
    label = f"{recipe.name}@{target.name}"
    quant, config = locked_choice(lock, target, recipe, model, source_facts)
    ui.step(f"reproducing {label} from {lock_path}: {quant}, {config.describe()} (no search)")

    from haqa.agent.trials import speed_policy
    from haqa.model.budget import predicted_peak
    from haqa.pipeline import prepare_device, reference_for

    runner = runner_for(target)
    try:
        toolchain, device_source = prepare_device(runner, target, model, jobs)
        if toolchain.commit != lock.llama_cpp.commit:
            raise UserError(f"this haqa builds llama.cpp {toolchain.commit[:8]}, the lock was measured with "
                            f"{lock.llama_cpp.commit[:8]}", hint="use the haqa version named in the lock "
                                                              f"({lock.haqa_version})")
        candidate, _ = quantize(runner, toolchain, device_source, model.sha256, source_facts.file_type, quant)
        sha = runner.sha256(candidate)
        same = "matches the lock" if sha == lock.model.sha256 else "DIFFERS from the lock"
        ui.note(f"{quant}: sha256 {sha[:12]} {same}")
        w = recipe.workload
        bench = run_bench(runner, toolchain, candidate, config, prompt_tokens=w.prompt_tokens, gen_tokens=w.gen_tokens,
                          policy=speed_policy(recipe),
                          log_path=runner.local_dir("logs") / f"bench-from-lock-{quant}.log")
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
        local_model = runner.fetch(candidate)
        trial = Trial(quant, config, bench, quality, sha, memory=_memory(predicted_peak(
            target, ModelShape.from_gguf(local_model), config, tokens=config.ctx_size), bench))
        ok, why = within_budget(trial, recipe.quality, synthetic=source_facts.synthetic,
                                 limits=recipe.workload)
        if not ok:
            raise UserError(f"the locked configuration is over the quality budget on this device: {why}",
                            hint=f"search anew: haqa deploy --target {target.name} --recipe {recipe.name}")
        server = runner.fetch(toolchain.bin("llama-server"))
        new = reproduced(lock, target=target, recipe=recipe, synthetic=source_facts.synthetic, trial=trial,
                         measured_on=runner.describe())
        ratio = new.reproduced_from_lock
        ui.note(f"against the lock: decode x{ratio.decode_ratio_to_lock}, prefill x{ratio.prefill_ratio_to_lock}")
        out = out or Path("dist") / label
        bundle = write_bundle(out, model=local_model, model_name=f"{recipe.name}-{quant}.gguf", server_binary=server,
                              lock=new, server_args=config.server_args(), label=label, alias=recipe.name,
                              config=config, recipe=recipe.name, documents=documents(new), model_sha256=sha)
    finally:
        runner.close()
    ui.step(f"bundle written: {bundle}  (start it with {bundle}/run.sh)")
    return bundle

