"""The objective a search maximises, from measured speed (higher is better)."""

from __future__ import annotations

import math

from haqa.config.schema import Objective
from haqa.measure.bench import BenchResult


def score(bench: BenchResult, objective: Objective, prompt_tokens: int) -> float:
    if objective.metric == "decode":
        return bench.decode.mean
    if objective.metric == "prefill":
        return bench.prefill.mean
    if objective.metric == "ttft":
        return -bench.time_to_first_token_s(prompt_tokens)
    w_d, w_p = objective.decode_weight, objective.prefill_weight
    total = (w_d + w_p) or 1.0
    return math.exp((w_d * math.log(bench.decode.mean) + w_p * math.log(bench.prefill.mean)) / total)


def noise(bench: BenchResult, objective: Objective) -> float:
    """Relative standard error of what the score is made of."""
    if objective.metric == "decode":
        return bench.decode.rse
    if objective.metric in ("prefill", "ttft"):
        return bench.prefill.rse
    return max(bench.decode.rse, bench.prefill.rse)


def describe(objective: Objective, prompt_tokens: int) -> str:
    return {
        "decode": "maximise decode tokens/s",
        "prefill": "maximise prefill tokens/s",
        "ttft": f"minimise time to first token for a {prompt_tokens}-token prompt",
        "mix": f"maximise decode^{objective.decode_weight} x prefill^{objective.prefill_weight} (geometric)",
    }[objective.metric]


def pareto_front(points: list[tuple[float, float, object]]) -> list[object]:
    """Items not dominated in (speed: higher better, kld: lower better)."""
    front = []
    for s, k, item in points:
        if not any((s2 >= s and k2 <= k) and (s2 > s or k2 < k) for s2, k2, _ in points):
            front.append(item)
    return front
