"""REPORT.md: what was tried, what won, and the winner against the default deployment and the
unquantized model, written from the lock alone (so it never says more than was measured)."""

from __future__ import annotations

from haqa.runtime import RuntimeConfig


def _f(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _mib(b) -> str:
    return "n/a" if not b else f"{b / 2**20:.0f} MiB"


def _knobs(config: dict) -> str:
    return RuntimeConfig(**config).describe()


def _comparison(lock: dict) -> list[str]:
    comp = lock.get("comparison") or lock.get("original_comparison")
    if not comp:
        return ["No side-by-side comparison was made in this run.", ""]
    w = comp["workload"]
    rows = ["| deployment | quant | decode tok/s | prefill tok/s | TTFT (derived) | peak RSS | KLD | flags |",
            "|---|---|---|---|---|---|---|---|"]
    for label, side in comp["contenders"].items():
        if "decode" not in side:
            rows.append(f"| {label} | {side['quant']} | {side.get('not_measured', 'not measured')} | | | | | |")
            continue
        q = side.get("quality")
        d, p = side["decode"], side["prefill"]
        rows.append(f"| {label} | {side['quant']} | {d['median']:.1f} ({d['min']:.1f}..{d['max']:.1f}) "
                    f"| {p['median']:.1f} ({p['min']:.1f}..{p['max']:.1f}) "
                    f"| {side['time_to_first_token_s']['value'] * 1000:.0f} ms | {_mib(side.get('peak_rss_bytes'))} "
                    f"| {_f(q['kld_mean'], 4) if q else 'n/a'} | {_knobs(side['config'])} |")
    ratio_rows = ["| ratio | decode speed-up | prefill (and TTFT) speed-up | peak memory |", "|---|---|---|---|"]
    for name, r in comp["ratios"].items():
        if not isinstance(r, dict):
            ratio_rows.append(f"| {name} | {r} | | |")
            continue
        d, p = r["decode"], r["prefill"]
        mem = r["peak_rss"]["ratio"]
        ratio_rows.append(f"| {name} | x{d['median']:.2f} ({d['min']:.2f}..{d['max']:.2f}) "
                          f"| x{p['median']:.2f} ({p['min']:.2f}..{p['max']:.2f}) | {_f(mem, 2)} |")
    return [
        f"Measured side by side on the device in this run: {comp['method']}. {comp['rounds']} rounds x "
        f"{comp['repetitions_per_round']} repetitions; prefill of {w['prompt_tokens']} tokens, decode of "
        f"{w['gen_tokens']} tokens after a {w['prompt_tokens']}-token prompt. Speeds are medians (min..max "
        "over rounds); KLD is against the source model on the recipe's corpus.",
        "", *rows, "", *ratio_rows, "",
        "Speed-ups above 1 mean the tuned deployment is faster; the memory column is tuned / other.", "",
        *[f"- **{label}**: {side['description']}" for label, side in comp["contenders"].items()], "",
    ]


def _trials(lock: dict) -> list[str]:
    synthetic = lock.get("synthetic")
    rows = ["| # | candidate | flags | decode tok/s | prefill tok/s | KLD | peak RSS | verdict | proposer: why |",
            "|---|---|---|---|---|---|---|---|---|"]
    for i, t in enumerate(lock["trials"], 1):
        why = (t.get("rationale") or "").replace("|", "/")
        who = f"{t.get('proposer', '')}: {why}"
        if t["status"] != "ok":
            err = (t.get("error") or "").splitlines()[0][:80].replace("|", "/") if t.get("error") else "failed"
            rows.append(f"| {i} | {t['name']} | {_knobs(t['config'])} | failed | | | | {err} | {who} |")
            continue
        b, q = t["bench"], t.get("quality")
        verdict = ("synthetic: no quality" if synthetic else
                   "within budget" if t.get("within_budget") else t.get("budget_note", "over budget"))
        winner = " **(chosen)**" if t["config"] == lock["metrics"]["config"] and t["quant"] == lock["metrics"]["quant"] else ""
        rows.append(f"| {i} | {t['name']}{winner} | {_knobs(t['config'])} "
                    f"| {b['decode']['mean']:.1f} ± {b['decode']['stddev']:.1f} (n={b['decode']['repetitions']}) "
                    f"| {b['prefill']['mean']:.1f} ± {b['prefill']['stddev']:.1f} (n={b['prefill']['repetitions']}) "
                    f"| {_f(q['kld_mean'], 4) if q else 'n/a'} | {_mib(b.get('peak_rss_bytes'))} | {verdict} | {who} |")
    return rows


def render(lock: dict) -> str:
    m, sel, hw = lock["metrics"], lock["selection"], lock["target"]["facts"]["hardware"]
    b, q = m["bench"], m.get("quality")
    budget = lock["recipe"]["quality_budget"]
    label = f"{lock['recipe']['name']}@{lock['target']['name']}"
    quality = (f"mean KLD {q['kld_mean']:.4f} ± {q['kld_err']:.4f}, same top token {q['same_top_p']:.1f} %, "
               f"PPL ratio {q['ppl_ratio']:.4f} (budget: KLD ≤ {budget['max_kld']})" if q else
               "not measured (synthetic weights)")
    mem = m.get("memory", {})
    pred = (mem.get("deployment_predicted") or {}).get("total_bytes")
    gpu = hw.get("gpu", {})
    device = (f"{hw.get('cpu_model') or hw['arch']}, {hw['cores']} cores, {hw['ram_gib']} GiB RAM"
              + (f", {gpu['name']} ({gpu.get('memory_gib')} GiB)" if gpu.get("kind") not in (None, "none") else ""))
    measured_on = lock.get("measured_on", {})
    lines = [
        f"# {label}: deployment report",
        "",
        f"Generated by haqa {lock['haqa_version']} on {lock['created']} with llama.cpp "
        f"{lock['llama_cpp']['commit'][:8]}. Every figure below is measured on the device unless marked "
        "derived or predicted; the full record is `haqa.lock.json`.",
        "",
        "## The chosen deployment",
        "",
        f"- Model: `{lock['model']['file_type']}` ({_mib(lock['model']['size_bytes'])}, sha256 "
        f"`{lock['model']['sha256'][:16]}…`), from `{lock['source_model']['source']}` "
        f"({lock['source_model']['file_type']}).",
        f"- Flags: {_knobs(m['config'])}, context {m['config']['ctx_size']}.",
        f"- Decode: {b['decode']['mean']:.1f} ± {b['decode']['stddev']:.1f} tok/s (n={b['decode']['repetitions']}, "
        f"{b['decode']['tokens']} tokens at depth {b['decode']['depth']}); prefill: {b['prefill']['mean']:.1f} ± "
        f"{b['prefill']['stddev']:.1f} tok/s (n={b['prefill']['repetitions']}, {b['prefill']['tokens']} tokens).",
        f"- Time to first token: {m['time_to_first_token_s']['value'] * 1000:.0f} ms "
        f"({m['time_to_first_token_s']['basis']}).",
        f"- Quality: {quality}.",
        f"- Peak memory: {_mib(b.get('peak_rss_bytes'))} measured in the benchmark; {_mib(pred)} predicted for "
        f"the deployment at context {m['config']['ctx_size']} (haqa's memory model).",
        f"- Device: {lock['target']['name']} ({device}); measured on {measured_on.get('host') or measured_on.get('hostname') or 'the device'} ({measured_on.get('runner', '?')} runner).",
        "",
        "Start it with `./run.sh` (llama-server on 127.0.0.1:8080; `--host`/`--port` to change).",
        "",
        *_reproduced(lock),
        "## Against what users run today",
        "",
        *_comparison(lock),
        "## Speed against quality",
        "",
        "![decode speed against KLD for every trial](pareto.png)",
        "",
        f"Pareto front (fastest for its quality): {', '.join(sel.get('pareto_front') or ['n/a'])}.",
        "",
        "## What was tried",
        "",
        f"Search: {sel['proposer']}, {sel['trials']} trial(s) ({sel['new_trials']} measured in this run) of a space "
        f"of {sel['space_size']} points; stopped: {sel['stop']}. Objective: {sel['objective']}; rule: {sel['rule']}."
        + (f" LLM replies: {sel['llm_replies']}, heuristic fall-backs: {sel['llm_fallbacks']}."
           if sel.get("llm_replies") or sel.get("llm_fallbacks") else "") + _llm_unavailable(lock),
        "",
        *_trials(lock),
        "",
        "## How it was measured",
        "",
        f"- Speed: llama-bench; {lock['speed_method']['prefill']}, {lock['speed_method']['decode']}; repeated "
        f"until the relative standard error was under {lock['speed_method']['rse_target'] * 100:.0f} % "
        f"(at most {lock['speed_method']['max_repetitions']} runs).",
        f"- Quality: {_quality_method(lock)}.",
        f"- Drift guard: {_drift(lock)}.",
        "",
    ]
    return "\n".join(lines)


def _quality_method(lock: dict) -> str:
    qm = lock["quality_method"]
    if isinstance(qm, str):
        return qm
    return (f"{qm['tool']} against {qm['reference']}, corpus {qm['corpus']} ({qm['chunks']} chunks of "
            f"{qm['ctx']} tokens)")


def _drift(lock: dict) -> str:
    g = lock.get("drift_guard")
    if not isinstance(g, dict):
        return str(g)
    if g.get("disabled"):
        return f"off in this run ({g['disabled']})"
    checks = [h for h in g["history"] if h["event"] == "check"]
    moved = sum(1 for h in checks if not h["ok"])
    return (f"anchor re-measured {len(checks)} time(s), tolerance ±{g['tolerance'] * 100:.0f} %; moved {moved} "
            f"time(s), {g.get('reruns', 0)} trial(s) measured again")


def _reproduced(lock: dict) -> list[str]:
    r = lock.get("reproduced_from_lock")
    if not r:
        return []
    where = r.get("lock_measured_on") or {}
    return ["## Reproduced from a lock", "",
            f"No search ran here: the configuration comes from a lock written {r['lock_created']} on "
            f"{where.get('host') or where.get('hostname') or 'another device'} (lock sha256 `{r['lock_sha256'][:16]}…`). "
            f"Weights {'identical to' if r['weights_match_lock'] else 'DIFFERENT from'} the lock's; measured here once: "
            f"decode x{r['decode_ratio_to_lock']}, prefill x{r['prefill_ratio_to_lock']} of the lock's figures "
            f"({r['basis']}). The comparison below is the original run's.", ""]


def _llm_unavailable(lock: dict) -> str:
    why = next((t.get("rationale", "") for t in lock["trials"] if t.get("proposer") == "heuristic (llm unavailable)"), None)
    if why is None:
        return ""
    reason = why[1:].split("] ", 1)[0] if why.startswith("[") else why
    return f" **The LLM agent was unavailable** ({reason}); the heuristic proposed every step from then on."
