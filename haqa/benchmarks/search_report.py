"""The search section of docs/BENCHMARKS.md: tables from replayed searches (haqa.benchmarks.replay).

Kept apart from the replay itself, whose source is part of the key of cached replays: rewording a
table must not make `haqa bench search` replay hours of LLM searches again.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from haqa.agent import objective as obj
from haqa.benchmarks.landscape_file import Landscape
from haqa.benchmarks.replay import DETERMINISTIC, REACH, Summary, median, ratio


def _fmt_trials(x: float) -> str:
    return "not reached" if math.isinf(x) else f"{x:g}"


def _describe_point(values: dict, dims: dict) -> str:
    varying = [k for k in dims if len(dims[k]) > 1 and k != "quant"]
    return values["quant"] + " " + ", ".join(f"{k} {values[k]}" for k in varying)


def landscape_facts(land: Landscape) -> dict:
    """Counts, the best point, and how noisy the measurements were."""
    obs = land.observations()
    best, best_point = land.best()
    ok = [(p, o) for p, o in obs if o.ok]
    near = sum(1 for _, o in obs if o.score is not None and ratio(o.score, best) >= REACH - 1e-12)
    rse = sorted(p["bench"]["decode"]["rse"] for p, _ in ok)
    checks = [h for h in land.data["anchor"]["history"] if h.get("event") == "check"]
    repeats = []
    for r in land.data.get("repeats", []):
        first = land.point_at(r["values"])
        if r.get("bench") and first and first.get("bench"):
            repeats.append(r["bench"]["decode"]["mean"] / first["bench"]["decode"]["mean"])
    moved = [abs(p["bench"]["decode"]["mean"] / sup["decode_mean"] - 1) for p in land.data["points"]
             if p["status"] == "ok" for sup in p.get("superseded", [])]
    statuses = [p["status"] for p in land.data["points"]]
    return {
        "points": len(statuses), "measured": len(obs), "ok": len(ok), "failed": statuses.count("failed"),
        "pruned": statuses.count("pruned"), "feasible": sum(o.score is not None for _, o in obs),
        "over_budget": sum(1 for _, o in ok if not o.within_budget), "near_best": near,
        "best": best, "best_point": best_point, "median_decode_rse": statistics.median(rse) if rse else None,
        "anchor_checks": len(checks), "anchor_max_change": max((abs(h["change"]) for h in checks), default=None),
        "anchor_drifts": sum(1 for h in checks if not h.get("ok", True)),
        "repeat_ratios": repeats, "remeasured_moves": moved,
        "contended": sum(1 for p in land.data["points"] if p.get("contended")),
    }


def landscape_table(land: Landscape, summaries: dict[str, Summary], budget: int) -> str:
    d = land.data
    f = landscape_facts(land)
    hw = d["target"]["facts"]["hardware"]
    gpu = f", GPU {hw['gpu']['name'] or hw['gpu']['kind']}" if hw["gpu"]["kind"] != "none" else ""
    machine = f"{hw.get('cpu_model') or hw['arch']} ({hw['arch']}), {hw['cores']} cores, {hw['ram_gib']:g} GiB RAM{gpu}"
    model = d["model"]
    kind = "synthetic weights (speed only; the quality budget does not apply)" if land.synthetic else "real weights"
    dims = land.dims
    grid = " x ".join(f"{k} {{{', '.join(str(v) for v in vals)}}}" for k, vals in dims.items() if len(vals) > 1)
    fixed = ", ".join(f"{k} {vals[0]}" for k, vals in dims.items() if len(vals) == 1)
    bp = f["best_point"]
    bd = bp["bench"]["decode"]
    obj_text = obj.describe(land.objective, land.workload)
    budget_text = "none (synthetic)" if land.synthetic else f"mean KLD <= {land.budget.max_kld}"
    lines = [
        f"### {land.label}: {model['source']} ({model['n_params'] / 1e6:.0f}M parameters, {model['n_layers']} layers, "
        f"{kind})",
        "",
        f"Measured by `{d['command']}` on {machine}, {d['created'][:10]}, llama.cpp {d['llama_cpp']['commit'][:8]}, "
        f"in {d['wall_s'] / 60:.0f} min; data: `{_rel(land.path)}`.",
        "",
        *([] if land.complete else [
            f"**Incomplete**: {f['measured']} of {f['points'] - f['pruned']} points measured when the run stopped. "
            f"The measuring order was shuffled, so they are a uniformly random subset; the replay runs on them "
            f"only (the others are refused like pruned points), and the best is the best of them. A proposer "
            f"refused the points it wants is handicapped (the heuristic most): no fair comparison.", ""]),
        f"- grid: {grid} (fixed: {fixed}); {f['points']} points: {f['ok']} measured, {f['failed']} failed, "
        f"{f['pruned']} pruned by the memory model; {f['over_budget']} over the quality budget ({budget_text})",
        f"- objective: {obj_text}; best feasible point: {_describe_point(bp['values'], dims)}: "
        f"{bd['mean']:.1f} ± {bd['stddev']:.1f} tok/s decode (n={bd['repetitions']}); "
        f"{f['near_best']} of {f['feasible']} feasible points are within 95 % of it",
    ]
    noise = []
    if f["median_decode_rse"] is not None:
        noise.append(f"median relative standard error of a point's decode mean {f['median_decode_rse'] * 100:.1f} %")
    if f["anchor_max_change"] is not None:
        noise.append(f"drift guard anchor: {f['anchor_checks']} checks, "
                     f"largest change {f['anchor_max_change'] * 100:.1f} %"
                     f" ({f['anchor_drifts']} over the 10 % tolerance, whose points were measured again)")
    if f["remeasured_moves"]:
        mv = sorted(f["remeasured_moves"])
        noise.append(f"points measured again after an anchor alarm moved by a median {median(mv) * 100:.1f} % "
                     f"(at most {mv[-1] * 100:.1f} %; {len(mv)} re-measurements recorded)")
    if f["repeat_ratios"]:
        noise.append("the best points measured again at the end came out at "
                     + ", ".join(f"{r * 100:.0f} %" for r in f["repeat_ratios"]) + " of their first reading")
    if noise:
        lines.append("- noise: " + "; ".join(noise))
    search = d["recipe"]["search"]
    lines += [
        "",
        f"| proposer | runs | reached 95 % | trials to 95 %: median (IQR) | to 90 %: median | best found / best, "
        f"after 5 | after 10 | after {budget} | recipe's stopping rule (max_trials {search['max_trials']}, patience "
        f"{search['patience']}): trials, best found / best |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summaries.items():
        lo, hi = s.iqr_to_reach()
        med = s.median_to_reach()
        iqr = "" if s.seeds == 1 else f" ({_fmt_trials(lo)}-{_fmt_trials(hi)})"
        runs = f"{s.seeds}" + (" (deterministic)" if name in DETERMINISTIC else "")
        cells = []
        for k in (5, 10, budget):
            r = s.ratios(k)
            cells.append(f"{median(r):.3f}" + ("" if s.seeds == 1 else f" (min {min(r):.3f})"))
        live_n, live_r = s.live()
        lines.append(f"| {name} | {runs} | {s.reached}/{s.seeds} | {_fmt_trials(med)}{iqr} "
                     f"| {_fmt_trials(median(s.to_reach(0.90)))} | {' | '.join(cells)} "
                     f"| {live_n:g}, {live_r:.3f} |")
    return "\n".join(lines)


def _rel(path: Path | None) -> str:
    if path is None:
        return "(in memory)"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def summary_table(results: list[tuple[Landscape, dict[str, Summary]]]) -> str:
    names = list(dict.fromkeys(n for _, s in results for n in s))
    lines = ["| proposer | " + " | ".join(land.label for land, _ in results) + " |",
             "|---|" + "---:|" * len(results)]
    for n in names:
        cells = []
        for _, sums in results:
            s = sums.get(n)
            cells.append("-" if s is None else f"{_fmt_trials(s.median_to_reach())} ({s.reached}/{s.seeds})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    baselines = ("random", "grid", "tpe")
    for agent in ("llm", "heuristic"):
        verdicts = []
        for land, sums in results:
            if agent not in sums:
                continue
            mine = sums[agent].median_to_reach()
            beaten = [n for n in baselines if n in sums and not mine < sums[n].median_to_reach()]
            why = []
            if mine > 8:
                why.append(f"median {_fmt_trials(mine)} trials" if math.isfinite(mine) else "95 % not reached")
            if beaten:
                why.append("not fewer than " + ", ".join(beaten))
            verdicts.append(f"{land.label} {'met' if not why else 'not met (' + '; '.join(why) + ')'}")
        if verdicts:
            who = ("the embedded LLM agent (`--agent embedded`)" if agent == "llm"
                   else "the heuristic (the default agent when no LLM endpoint answers: `--agent auto`; also "
                        "`--agent heuristic`, and the LLM agent's fallback)")
            lines += ["", f"Goal (issue 7), {who}: 95 % of the best in at most 8 trials (median), fewer than every "
                          f"baseline: " + "; ".join(verdicts) + "."]
    return "\n".join(lines)


INTRO = """Each landscape (haqa/benchmarks/landscape.py) is every point of a reduced but real search space,
measured with the pipeline's own functions (llama-quantize, llama-bench under the pipeline's
repetition policy, llama-perplexity KLD against the cached reference logits, once per quant and KV
type) in a shuffled order under the drift guard, on a quiet machine (a point during which other
processes used more than 10 % of the CPU is measured again). The replay (haqa/benchmarks/replay.py)
runs the live search loop on the landscape's reduced space with the stored measurement in place of
the device: `suggest(history)`, the stored trial turned into an Observation by the pipeline's rule
(quality budget, objective score, noise), `observe()`. The proposers are the agent's own classes,
constructed as the pipeline constructs them:

- **heuristic**: HeuristicProposer, with the bytes read per token of each quant predicted by the memory
  model. `--agent auto`, the default, proposes with it when no OpenAI-compatible or Ollama endpoint
  answers (the embedded model below needs more trials and seconds per step, with most of its steps
  handed to the heuristic anyway: see the llm lines under each landscape);
- **llm**: LLMProposer with the embedded backend (SmolLM2-135M-Instruct in llama-cpp-python, replies
  constrained to the space's JSON schema, guardrails, and the heuristic after 3 refused replies in a
  row): `--agent embedded`, or `--agent llm` when no endpoint answers;
- **random**: uniformly random untried points; **grid**: every point in a fixed order (quant first);
- **tpe**: Optuna's TPESampler (multivariate, as llama-optimus configures it; Optuna's default 10
  random start-up trials) over every knob as a categorical parameter, through ask/tell
  (haqa/agent/tpe.py): a failed or over-budget trial is told -inf (ranked like llama-optimus's
  0 tok/s), a point the guardrails refuse is told FAIL and TPE is asked again, a point measured
  before is told its value again (not re-measured).

Every search runs the full trial budget; a trial counts whether it succeeded, failed or came out over
the quality budget. "Trials to 95 %" is the first trial whose feasible objective is at least 95 % of
the best feasible stored point; a search that never gets there counts as "not reached" (sorted last,
so a median that lands on one reads "not reached"); IQR by nearest rank; "to 90 %" likewise, for a
threshold outside the measurement noise. "Best found / best" is the
best feasible objective found so far over the best stored one (0 while nothing feasible was found).
The last column applies the recipe's own stopping rule (max_trials; patience: trials without
improvement beyond twice the measurement noise) to the same searches: where a live deploy would have
stopped, and with what. The best stored point is one measurement; the noise line under each
landscape says how far to trust it.
"""


def search_report(results: list[tuple[Landscape, dict[str, Summary]]], *, seeds: int, llm_seeds: int, budget: int,
                  quick: bool = False, backend=None, skipped: list[str] | None = None) -> str:
    parts = [INTRO]
    seeds_line = (f"Seeds: {seeds} per landscape for random and tpe; heuristic and grid are deterministic (a seed "
                  f"changes nothing they do), so each is replayed once")
    if any("llm" in s for _, s in results):
        model = getattr(backend, "model", "the embedded model")
        seeds_line += (f"; llm: {llm_seeds} seeds only (its sampling is seeded; each reply of {model} takes "
                       f"seconds on this machine's cores, so 20 seeds x {budget} trials x every landscape "
                       "would take hours)")
    parts.append(seeds_line + ".")
    if quick:
        parts.append("**Quick mode**: 3 seeds and no LLM; this checks the harness, not the figures.")
    if skipped:
        parts.append(f"Not replayed: {', '.join(skipped)}.")
    parts += ["", "Median trials to reach 95 % of the best (searches that reached it / searches):", "",
              summary_table(results)]
    for land, sums in results:
        parts += ["", landscape_table(land, sums, budget)]
        if "llm" in sums:
            runs = sums["llm"].runs
            steps = sum(len(r.scores) for r in runs)
            fb = sum(r.fallbacks for r in runs)
            replies = sum(r.replies for r in runs)
            parts.append(f"\nllm: {replies} replies asked for over {steps} steps; "
                         f"{fb} steps ({fb / max(steps, 1):.0%}) "
                         f"went to the heuristic after {3} refused replies in a row.")
        if "tpe" in sums:
            fb = sum(r.fallbacks for r in sums["tpe"].runs)
            if fb:
                parts.append(f"\ntpe: {fb} steps went to a random untried point after TPE named only refused or "
                             f"measured points in 200 asks.")
    return "\n".join(parts)
