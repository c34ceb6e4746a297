"""The objective a search maximises, from measured speed (higher is better), and the workload's limits."""

from __future__ import annotations

import math

from haqa.config.schema import Objective, Workload
from haqa.measure.bench import BenchResult


def request_seconds(bench: BenchResult, workload: Workload) -> float:
    """Derived from llama-bench: the time of one workload request, its prompt at the prefill speed (the
    time to first token) plus its generated tokens at the decode speed measured at the prompt's depth."""
    return bench.time_to_first_token_s(workload.prompt_tokens) + workload.gen_tokens / bench.decode.mean


def score(bench: BenchResult, objective: Objective, workload: Workload) -> float:
    """Higher is better: requests per second for `request`, tok/s for `decode`, `prefill` and `mix`,
    minus the seconds to first token for `ttft`."""
    if objective.metric == "request":
        return 1.0 / request_seconds(bench, workload)
    if objective.metric == "decode":
        return bench.decode.mean
    if objective.metric == "prefill":
        return bench.prefill.mean
    if objective.metric == "ttft":
        return -bench.time_to_first_token_s(workload.prompt_tokens)
    w_d, w_p = objective.decode_weight, objective.prefill_weight
    total = (w_d + w_p) or 1.0
    return math.exp((w_d * math.log(bench.decode.mean) + w_p * math.log(bench.prefill.mean)) / total)


def noise(bench: BenchResult, objective: Objective, workload: Workload) -> float:
    """Relative standard error of what the score is made of (for `request`, each side's error weighted by
    its share of the request's time)."""
    if objective.metric == "decode":
        return bench.decode.rse
    if objective.metric in ("prefill", "ttft"):
        return bench.prefill.rse
    if objective.metric == "request":
        ttft = bench.time_to_first_token_s(workload.prompt_tokens)
        gen = workload.gen_tokens / bench.decode.mean
        return (ttft * bench.prefill.rse + gen * bench.decode.rse) / (ttft + gen)
    return max(bench.decode.rse, bench.prefill.rse)


def describe(objective: Objective, workload: Workload) -> str:
    p, g = workload.prompt_tokens, workload.gen_tokens
    return {
        "request": f"minimise the time of a request ({p} prompt tokens, then {g} generated): "
                   "time to first token plus generation",
        "decode": "maximise decode tokens/s",
        "prefill": "maximise prefill tokens/s",
        "ttft": f"minimise time to first token for a {p}-token prompt",
        "mix": f"maximise decode^{objective.decode_weight} x prefill^{objective.prefill_weight} (geometric)",
    }[objective.metric]


def within_limits(bench: BenchResult, workload: Workload) -> tuple[bool, str]:
    """The workload's limits (max_ttft_ms, min_decode_tps), judged on llama-bench's figures."""
    if workload.max_ttft_ms is not None:
        ttft_ms = 1000 * bench.time_to_first_token_s(workload.prompt_tokens)
        if ttft_ms > workload.max_ttft_ms:
            return False, f"time to first token {ttft_ms:.0f} ms > limit {workload.max_ttft_ms:g} ms"
    if workload.min_decode_tps is not None and bench.decode.mean < workload.min_decode_tps:
        return False, f"decode {bench.decode.mean:.1f} tok/s < limit {workload.min_decode_tps:g} tok/s"
    return True, "within the workload's limits"


def pareto_front(points: list[tuple[float, float, object]]) -> list[object]:
    """Items not dominated in (speed: higher better, kld: lower better)."""
    front = []
    for s, k, item in points:
        if not any((s2 >= s and k2 <= k) and (s2 > s or k2 < k) for s2, k2, _ in points):
            front.append(item)
    return front
