"""REPORT.md: what was tried, what won, and the winner against the default deployment and the
unquantized model, written from the lock alone (so it never says more than was measured)."""

from __future__ import annotations

from haqa.bundle.lock import Knobs, Lock
from haqa.bundle.lock.model import Comparison, MeasuredOn, QualityMethod
from haqa.bundle.lock.records import Ratios


def documents(lock: Lock) -> dict[str, bytes]:
    """REPORT.md and pareto.png (haqa/bundle/plot.py), both drawn from the lock alone."""
    from haqa.bundle import plot

    return {"REPORT.md": render(lock).encode(), "pareto.png": plot.pareto_png(lock)}


def _f(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _mib(b) -> str:
    return "n/a" if not b else f"{b / 2**20:.0f} MiB"


def _knobs(config: Knobs) -> str:
    return config.config().describe()


def _where(on: MeasuredOn | None, unknown: str) -> str:
    return (on.host or on.hostname if on else None) or unknown


def _comparison(lock: Lock) -> list[str]:
    comp = lock.comparison or lock.original_comparison
    if not comp:
        return ["No side-by-side comparison was made in this run.", ""]
    w = comp.workload
    return [
        f"Measured side by side on the device in this run: {comp.method}. {comp.rounds} rounds x "
        f"{comp.repetitions_per_round} repetitions; prefill of {w.prompt_tokens} tokens, decode of "
        f"{w.gen_tokens} tokens after a {w.prompt_tokens}-token prompt. Speeds are medians (min..max "
        "over rounds); KLD is against the source model on the recipe's corpus.",
        "", *_contender_rows(comp), "", *_ratio_rows(comp), "",
        "Speed-ups above 1 mean the tuned deployment is faster; the memory column is tuned / other.", "",
        *[f"- **{label}**: {side.description}" for label, side in comp.contenders.items()], "",
    ]


def _contender_rows(comp: Comparison) -> list[str]:
    rows = ["| deployment | quant | decode tok/s | prefill tok/s | TTFT (derived) | peak RSS | KLD | flags |",
            "|---|---|---|---|---|---|---|---|"]
    for label, side in comp.contenders.items():
        if not side.measured:
            rows.append(f"| {label} | {side.quant} | {side.why_not_measured} | | | | | |")
            continue
        q, d, p = side.quality, side.decode, side.prefill
        rows.append(f"| {label} | {side.quant} | {d.median:.1f} ({d.min:.1f}..{d.max:.1f}) "
                    f"| {p.median:.1f} ({p.min:.1f}..{p.max:.1f}) "
                    f"| {side.time_to_first_token_s.value * 1000:.0f} ms | {_mib(side.peak_rss_bytes)} "
                    f"| {_f(q.kld_mean, 4) if q else 'n/a'} | {_knobs(side.config)} |")
    return rows


def _ratio_rows(comp: Comparison) -> list[str]:
    rows = ["| ratio | decode speed-up | prefill (and TTFT) speed-up | peak memory |", "|---|---|---|---|"]
    for name, r in comp.ratios.items():
        if not isinstance(r, Ratios):
            rows.append(f"| {name} | {r} | | |")
            continue
        d, p = r.decode, r.prefill
        rows.append(f"| {name} | x{d.median:.2f} ({d.min:.2f}..{d.max:.2f}) "
                    f"| x{p.median:.2f} ({p.min:.2f}..{p.max:.2f}) | {_f(r.peak_rss.ratio, 2)} |")
    return rows


def _trials(lock: Lock) -> list[str]:
    rows = ["| # | candidate | flags | decode tok/s | prefill tok/s | KLD | peak RSS | verdict | proposer: why |",
            "|---|---|---|---|---|---|---|---|---|"]
    chosen = (lock.metrics.config, lock.metrics.quant)
    for i, t in enumerate(lock.trials, 1):
        why = (t.rationale or "").replace("|", "/")
        who = f"{t.proposer or ''}: {why}"
        if t.status != "ok":
            err = t.error.splitlines()[0][:80].replace("|", "/") if t.error else "failed"
            rows.append(f"| {i} | {t.name} | {_knobs(t.config)} | failed | | | | {err} | {who} |")
            continue
        b, q = t.bench, t.quality
        verdict = ("synthetic: no quality" if lock.synthetic else
                   "within budget" if t.within_budget else
                   t.budget_note if t.budget_note is not None else "over budget")
        winner = " **(chosen)**" if (t.config, t.quant) == chosen else ""
        rows.append(f"| {i} | {t.name}{winner} | {_knobs(t.config)} "
                    f"| {b.decode.mean:.1f} ± {b.decode.stddev:.1f} (n={b.decode.repetitions}) "
                    f"| {b.prefill.mean:.1f} ± {b.prefill.stddev:.1f} (n={b.prefill.repetitions}) "
                    f"| {_f(q.kld_mean, 4) if q else 'n/a'} | {_mib(b.peak_rss_bytes)} | {verdict} | {who} |")
    return rows


def _load_test(lock: Lock) -> list[str]:
    comp = lock.comparison or lock.original_comparison
    lt = comp.load_test if comp else None
    if lt is None:
        return ["No load test was made in this run.", ""]
    w = comp.workload
    rows = ["| deployment | quant | request time | TTFT | decode tok/s (one user) | p95 request | aggregate tok/s "
            "| peak RSS |", "|---|---|---|---|---|---|---|---|"]
    for label, side in lt.contenders.items():
        if not side.measured:
            rows.append(f"| {label} | {side.quant} | {side.not_measured or 'not measured'} | | | | | |")
            continue
        t, f, d, p95, agg = side.request_s, side.ttft_s, side.decode_tps, side.p95_request_s, side.aggregate_tps
        rows.append(f"| {label} | {side.quant} | {t.median * 1000:.0f} ms ({t.min * 1000:.0f}..{t.max * 1000:.0f}) "
                    f"| {f.median * 1000:.0f} ms ({f.min * 1000:.0f}..{f.max * 1000:.0f}) "
                    f"| {d.median:.1f} ({d.min:.1f}..{d.max:.1f}) | {p95.median * 1000:.0f} ms "
                    f"| {agg.median:.1f} ({agg.min:.1f}..{agg.max:.1f}) | {_mib(side.peak_rss_bytes)} |")
    ratio_rows = ["| ratio | request time | TTFT | decode (one user) | aggregate tok/s |", "|---|---|---|---|---|"]
    for name, r in lt.ratios.items():
        if isinstance(r, str):
            ratio_rows.append(f"| {name} | {r} | | | |")
            continue
        cells = [f"x{r[k].median:.2f} ({r[k].min:.2f}..{r[k].max:.2f})" if k in r else "n/a"
                 for k in ("request_s", "ttft_s", "decode_tps", "aggregate_tps")]
        ratio_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return [
        f"The bundle's own llama-server and flags under the workload's requests: {lt.method}. {lt.rounds} rounds, "
        f"{lt.concurrency} client(s) x {lt.requests_per_client} request(s) each, {w.prompt_tokens} prompt tokens "
        f"and {w.gen_tokens} generated per request. Times are medians (min..max over rounds).",
        "", *rows, "", *ratio_rows, "",
        "Ratios above 1 mean the tuned deployment is better for users (a shorter time, more tokens/s). "
        f"What decided: {lt.decided}.", "", *_load_memory(lock, lt),
    ]


def _load_memory(lock: Lock, lt) -> list[str]:
    """The shipped server's measured peak beside the memory model's prediction for the deployment."""
    shipped = lt.contenders.get("default" if "default deployment is chosen" in lt.decided else "tuned")
    predicted = lock.metrics.memory.deployment_predicted if lock.metrics.memory else None
    if shipped is None or not shipped.peak_rss_bytes or predicted is None:
        return []
    ratio = shipped.peak_rss_bytes / predicted.total_bytes if predicted.total_bytes else None
    return [f"Peak memory of the shipped llama-server: {_mib(shipped.peak_rss_bytes)} measured "
            f"({shipped.peak_rss_basis}) against {_mib(predicted.total_bytes)} predicted by haqa's memory model "
            f"at context {lock.metrics.config.ctx_size} (measured / predicted {_f(ratio, 3)}).", ""]


def _context(lock: Lock) -> list[str]:
    c = lock.selection.context
    if c is None:
        return []
    line = f"- Context: {c.tokens} tokens ({c.why}"
    if c.predicted_host_bytes:
        line += f"; {_mib(c.predicted_host_bytes)} predicted by haqa's memory model"
    d = c.depth_check
    if d is not None and d.decode is not None:
        line += (f"; decode at depth {d.depth}: {d.decode.mean:.1f} ± {d.decode.stddev:.1f} tok/s measured, "
                 f"{_f(d.at_search_depth_tps)} at the search's depth")
    elif d is not None:
        line += f"; decode at depth {d.depth} not measured: {d.error}"
    return [line + ")."]


def _chosen(lock: Lock) -> list[str]:
    m, hw = lock.metrics, lock.target.facts.hardware
    b, q, budget = m.bench, m.quality, lock.recipe.quality_budget
    quality = (f"mean KLD {q.kld_mean:.4f} ± {q.kld_err:.4f}, same top token {q.same_top_p:.1f} %, "
               f"PPL ratio {q.ppl_ratio:.4f} (budget: KLD ≤ {budget.max_kld})" if q else
               "not measured (synthetic weights)")
    gpu = hw.gpu
    device = (f"{hw.cpu_model or hw.arch}, {hw.cores} cores, {hw.ram_gib} GiB RAM"
              + (f", {gpu.name} ({gpu.memory_gib} GiB)" if gpu.kind != "none" else ""))
    runner = lock.measured_on.runner if lock.measured_on and lock.measured_on.runner is not None else "?"
    return [
        f"- Model: `{lock.model.file_type}` ({_mib(lock.model.size_bytes)}, sha256 "
        f"`{lock.model.sha256[:16]}…`), from `{lock.source_model.source}` ({lock.source_model.file_type}).",
        f"- Flags: {_knobs(m.config)}, context {m.config.ctx_size}.",
        *_context(lock),
        f"- Decode: {b.decode.mean:.1f} ± {b.decode.stddev:.1f} tok/s (n={b.decode.repetitions}, "
        f"{b.decode.tokens} tokens at depth {b.decode.depth}); prefill: {b.prefill.mean:.1f} ± "
        f"{b.prefill.stddev:.1f} tok/s (n={b.prefill.repetitions}, {b.prefill.tokens} tokens).",
        f"- Time to first token: {m.time_to_first_token_s.value * 1000:.0f} ms ({m.time_to_first_token_s.basis}).",
        f"- Quality: {quality}.",
        f"- Peak memory: {_mib(b.peak_rss_bytes)} measured in the benchmark; "
        f"{_mib(m.memory.deployment_predicted.total_bytes)} predicted for the deployment at context "
        f"{m.config.ctx_size} (haqa's memory model).",
        f"- Device: {lock.target.name} ({device}); measured on {_where(lock.measured_on, 'the device')} "
        f"({runner} runner).",
    ]


def _search(lock: Lock) -> str:
    sel = lock.selection
    return (f"Search: {sel.proposer}, {sel.trials} trial(s) ({sel.new_trials} measured in this run) of a space "
            f"of {sel.space_size} points; stopped: {sel.stop}. Objective: {sel.objective}; rule: {sel.rule}."
            + (f" LLM replies: {sel.llm_replies}, heuristic fall-backs: {sel.llm_fallbacks}."
               if sel.llm_replies or sel.llm_fallbacks else "") + _llm_unavailable(lock))


def render(lock: Lock) -> str:
    sm = lock.speed_method
    lines = [
        f"# {lock.label}: deployment report",
        "",
        f"Generated by haqa {lock.haqa_version} on {lock.created} with llama.cpp "
        f"{lock.llama_cpp.commit[:8]}. Every figure below is measured on the device unless marked "
        "derived or predicted; the full record is `haqa.lock.json`.",
        "",
        "## The chosen deployment",
        "",
        *_chosen(lock),
        "",
        "Start it with `./run.sh` (llama-server on 127.0.0.1:8080; `--host`/`--port` to change).",
        "",
        *_reproduced(lock),
        "## Against what users run today",
        "",
        *_comparison(lock),
        "## Through llama-server: the load test",
        "",
        *_load_test(lock),
        "## Speed against quality",
        "",
        "![decode speed against KLD for every trial](pareto.png)",
        "",
        f"Pareto front (fastest for its quality): {', '.join(lock.selection.pareto_front or ['n/a'])}.",
        "",
        "## What was tried",
        "",
        _search(lock),
        "",
        *_trials(lock),
        "",
        "## How it was measured",
        "",
        f"- Speed: llama-bench; {sm.prefill}, {sm.decode}; repeated until the relative standard error was under "
        f"{sm.rse_target * 100:.0f} % (at most {sm.max_repetitions} runs).",
        f"- Quality: {_quality_method(lock)}.",
        f"- Drift guard: {_drift(lock)}.",
        "",
    ]
    return "\n".join(lines)


def _quality_method(lock: Lock) -> str:
    qm = lock.quality_method
    if not isinstance(qm, QualityMethod):
        return qm
    return f"{qm.tool} against {qm.reference}, corpus {qm.corpus} ({qm.chunks} chunks of {qm.ctx} tokens)"


def _drift(lock: Lock) -> str:
    g = lock.drift_guard
    if g is None or isinstance(g, str):
        return str(g)
    if g.disabled:
        return f"off in this run ({g.disabled})"
    checks = [h for h in g.history if h.event == "check"]
    moved = sum(1 for h in checks if not h.ok)
    return (f"anchor re-measured {len(checks)} time(s), tolerance ±{g.tolerance * 100:.0f} %; moved {moved} "
            f"time(s), {g.reruns} trial(s) measured again")


def _reproduced(lock: Lock) -> list[str]:
    r = lock.reproduced_from_lock
    if not r:
        return []
    return ["## Reproduced from a lock", "",
            f"No search ran here: the configuration comes from a lock written {r.lock_created} on "
            f"{_where(r.lock_measured_on, 'another device')} (lock sha256 `{r.lock_sha256[:16]}…`). "
            f"Weights {'identical to' if r.weights_match_lock else 'DIFFERENT from'} the lock's; measured here once: "
            f"decode x{r.decode_ratio_to_lock}, prefill x{r.prefill_ratio_to_lock} of the lock's figures "
            f"({r.basis}). The comparison below is the original run's.", ""]


def _llm_unavailable(lock: Lock) -> str:
    why = next((t.rationale or "" for t in lock.trials if t.proposer == "heuristic (llm unavailable)"), None)
    if why is None:
        return ""
    reason = why[1:].split("] ", 1)[0] if why.startswith("[") else why
    return f" **The LLM agent was unavailable** ({reason}); the heuristic proposed every step from then on."
