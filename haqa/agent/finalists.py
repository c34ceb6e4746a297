"""The final word: the search's leader and the trials within noise of it are measured again side by side
with the default deployment (Q4_K_M with llama.cpp's default flags) and the unquantized model, in
interleaved rounds; the best finalist there wins. A comparison of the same finalists is kept by content
and reused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

from haqa import ui
from haqa.agent import objective as obj
from haqa.agent.final_load import load_test_of
from haqa.agent.select import Trial, within_budget
from haqa.agent.space import DEFAULT_QUANT, Candidate
from haqa.config.schema import Recipe
from haqa.errors import ToolFailed, UserError
from haqa.fsutil import atomic_write_text
from haqa.measure import compare as cmp
from haqa.measure.bench import BenchResult
from haqa.paths import cache_home
from haqa.runtime import RuntimeConfig

UNQUANTIZED = ("F32", "BF16", "F16")
FINALISTS = 3


def finalists(trials: list[Trial], leader: Trial, recipe: Recipe, synthetic: bool, scorer,
              default: RuntimeConfig) -> list[Trial]:
    """The search's leader, the feasible trials whose score is within measurement noise of it (at most
    FINALISTS in all), and the default deployment's own trial when it was feasible: the search measured
    them at different times, so the final word goes to a side-by-side re-measurement."""
    feasible = sorted((t for t in trials
                       if within_budget(t, recipe.quality, synthetic=synthetic, limits=recipe.workload)[0]),
                      key=scorer, reverse=True)
    best = scorer(leader)
    out = [leader]
    for t in feasible:
        if len(out) >= FINALISTS:
            break
        noise = max(obj.noise(t.bench, recipe.objective, recipe.workload),
                    obj.noise(leader.bench, recipe.objective, recipe.workload))
        if t is not leader and scorer(t) >= best - abs(best) * max(2 * noise, 0.02):
            out.append(t)
    dflt = next((t for t in feasible if t.quant == DEFAULT_QUANT and t.config == default), None)
    if dflt is not None and dflt not in out:
        out.append(dflt)
    return out


def compared(label: str, chosen: list[Trial], key_of, *, recipe: Recipe, default: RuntimeConfig,
             compare) -> tuple[Trial, dict]:
    """The side-by-side comparison of `chosen` (finalists), reused when the same finalists, default flags,
    rounds and repetitions were compared before; else `compare()` measures it and it is kept."""
    rounds, reps = recipe.search.compare_rounds, recipe.search.compare_repetitions
    compare_key = hashlib.sha256(json.dumps(
        {"finalists": [key_of(Candidate(t.quant, t.config)) for t in chosen], "default": default.as_dict(),
         "rounds": rounds, "repetitions": reps, "load": [recipe.search.load_rounds, recipe.search.load_requests],
         "workload": recipe.workload.model_dump(mode="json")}, sort_keys=True).encode()).hexdigest()[:20]
    cache = cache_home() / "comparisons" / f"{label}-{compare_key}.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        winner = dataclasses.replace(chosen[saved["best"]], bench=BenchResult.from_dict(saved["pooled"]))
        ui.note(f"side-by-side comparison of these finalists reused from {saved['created']} ({cache})")
        return winner, saved["comparison"]
    winner, comparison = compare()
    comparison["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    best = chosen.index(next(t for t in chosen if (t.quant, t.config) == (winner.quant, winner.config)))
    atomic_write_text(cache, json.dumps({"best": best, "pooled": winner.bench.as_dict(), "comparison": comparison,
                                         "created": comparison["created"]}))
    return winner, comparison


def compare_with_baselines(runner, toolchain, recipe: Recipe, source_facts, finalists: list[Trial], *, prepare, fits,
                           default: RuntimeConfig, quality_of, prompt_text: str, deployed=None) -> tuple[Trial, dict]:
    """Re-measure the finalists side by side with (a) the default deployment, Q4_K_M with llama.cpp's
    default flags, and (b) the unquantized model with default flags, in interleaved rounds. The
    finalist with the best objective there wins; it is reported as "tuned" against (a) and (b). Then the
    load test of its llama-server against (a)'s (haqa/agent/final_load.py), which may choose (a), both with
    the context the deployment gets (deployed(quant, config) -> config: haqa/agent/context.py)."""
    w = recipe.workload
    rounds, reps = recipe.search.compare_rounds, recipe.search.compare_repetitions
    wanted = _wanted(finalists, source_facts, default)
    contenders, labels = _contenders(wanted, prepare=prepare, fits=fits)
    ui.step(f"measuring {len(finalists)} finalist(s), the default deployment and the unquantized model side by side "
            f"({rounds} interleaved rounds)")
    sides = cmp.compare(runner, toolchain, contenders, prompt_tokens=w.prompt_tokens,
                        gen_tokens=w.gen_tokens, rounds=rounds, repetitions=reps,
                        log_dir=runner.local_dir("logs"))
    by_key = {(s.contender.quant, s.contender.config): s for s in sides}

    def side(label: str) -> cmp.Side:
        return by_key[labels[label]]

    scored = [(obj.score(side(f"finalist {i + 1}").pooled(), recipe.objective, w), i)
              for i in range(len(finalists)) if side(f"finalist {i + 1}").measured]
    if not scored:
        raise UserError("every finalist failed when it was measured again side by side; see the logs in "
                        f"{runner.local_dir('logs')}", hint="run the deploy again; if it persists, run `haqa doctor`")
    _, best = max(scored)
    if best != 0:
        ui.note(f"side by side, {finalists[best].name} ({finalists[best].config.describe()}) beat the search's "
                f"leader {finalists[0].name}: it is chosen")
    out = {"method": cmp.METHOD, "rounds": rounds, "repetitions_per_round": reps,
           "workload": w.model_dump(), "finalists": len(finalists), "contenders": {}, "ratios": {}}
    if recipe.search.load_rounds:
        tuned, dflt_side = _with_context(side(f"finalist {best + 1}").contender, side("default").contender,
                                         deployed, fits)
        out["load_test"], default_wins = load_test_of(runner, toolchain, recipe, tuned, dflt_side,
                                                      prompt_text=prompt_text)
        dflt = next((i for i in range(len(finalists)) if labels[f"finalist {i + 1}"] == labels["default"]), None)
        if default_wins and dflt is not None:
            best = dflt
        elif default_wins:
            out["load_test"]["decided"] += " (it is not: the default deployment is not a feasible finalist)"
            ui.note("the load test found the tuned configuration slower than the default deployment, which is "
                    "not within the quality budget or the workload's limits: the tuned one stays")
    # The winner's figures are its side-by-side ones: more samples, and taken beside the baselines.
    winner = dataclasses.replace(finalists[best], bench=side(f"finalist {best + 1}").pooled())
    descriptions = {label: d for label, _, _, d in wanted}
    _summaries(out, side, best, winner, finalists, labels, descriptions, recipe, quality_of)
    tuned = side(f"finalist {best + 1}")
    for other in ("default", "unquantized"):
        r = cmp.ratios(tuned, side(other))
        out["ratios"][f"tuned/{other}"] = r if r else "not measured"
        if r:
            ui.note(f"tuned / {other} ({side(other).contender.quant}): decode x{r['decode']['median']:.2f}, "
                    f"prefill x{r['prefill']['median']:.2f} (medians of {r['decode']['rounds']} interleaved rounds)")
    return winner, out


def _with_context(tuned: cmp.Contender, default: cmp.Contender, deployed, fits):
    """The load test's two contenders with the context the tuned deployment gets (the default one too,
    where it fits in it: the same context for both)."""
    if deployed is None:
        return tuned, default
    config = deployed(tuned.quant, tuned.config)
    tuned = dataclasses.replace(tuned, config=config)
    same = dataclasses.replace(default.config, ctx_size=config.ctx_size)
    if default.model is not None and fits(Candidate(default.quant, same))[0]:
        default = dataclasses.replace(default, config=same)
    return tuned, default


def _wanted(finalists: list[Trial], source_facts, default: RuntimeConfig) -> list[tuple[str, str, RuntimeConfig, str]]:
    """(label, quant, config, description) of every side: the finalists, the default, the unquantized."""
    unq = source_facts.file_type if source_facts.file_type in UNQUANTIZED else "F16"
    unq_note = ("the source GGUF itself" if unq == source_facts.file_type else
                f"F16 converted from the {source_facts.file_type} source (no precision beyond the source's)")
    wanted = [(f"finalist {i + 1}", t.quant, t.config, f"search trial {t.name} ({t.config.describe()})")
              for i, t in enumerate(finalists)]
    wanted += [("default", DEFAULT_QUANT, default, f"{DEFAULT_QUANT} with llama.cpp's default flags"),
               ("unquantized", unq, default, f"{unq} with llama.cpp's default flags: {unq_note}")]
    return wanted


def _contenders(wanted, *, prepare, fits) -> tuple[list[cmp.Contender], dict[str, tuple]]:
    """One contender per (quant, config), whatever its labels; those that do not fit or cannot be quantized
    are skipped with the reason."""
    contenders: dict[tuple, cmp.Contender] = {}
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
    return list(contenders.values()), labels


def _summaries(out: dict, side, best: int, winner: Trial, finalists: list[Trial], labels, descriptions,
               recipe: Recipe, quality_of) -> None:
    """Each side's summary (speed, and quality reused from its trial or measured) into out['contenders']."""
    entries = [("tuned", f"finalist {best + 1}", "the configuration haqa chose")]
    entries += [(f"finalist {i + 1}", f"finalist {i + 1}", None) for i in range(len(finalists)) if i != best]
    entries += [("default", "default", None), ("unquantized", "unquantized", None)]
    for name, label, description in entries:
        s = side(label)
        summary = s.summary(recipe.workload.prompt_tokens)
        if description:
            summary["description"] = description + f" ({winner.config.describe()})"
        else:
            summary["description"] = descriptions[label]
        if s.measured:
            trial = next((t for t in finalists if (t.quant, t.config) == labels[label]), None)
            try:
                q = trial.quality if trial else quality_of(s.contender.quant, s.contender.model)
            except ToolFailed as e:
                q, summary["quality_error"] = None, str(e).splitlines()[0]
            summary["quality"] = q.as_dict() if q else None
        out["contenders"][name] = summary
