"""Pick the winner among measured trials: the best objective among those within the quality budget and
the workload's limits.

A trial over the budget or outside the limits is never chosen. The agent replaces how candidates are proposed, not this
rule's guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass

from haqa.agent.objective import within_limits
from haqa.config.schema import Quality as QualityBudget
from haqa.config.schema import Workload
from haqa.measure.bench import BenchResult
from haqa.measure.quality import Quality
from haqa.runtime import RuntimeConfig

RULE = "the best objective among measured trials within the quality budget"


@dataclass(frozen=True)
class Trial:
    quant: str
    config: RuntimeConfig
    bench: BenchResult | None
    quality: Quality | None = None
    model_sha256: str | None = None
    error: str | None = None
    memory: dict | None = None  # predicted (deployment and bench run) against measured peak
    cause: str | None = None  # failed: oom | crash | timeout | error

    @property
    def ok(self) -> bool:
        return self.bench is not None

    @property
    def name(self) -> str:
        kv = "" if self.config.cache_type_k == "f16" else f"+kv:{self.config.cache_type_k}"
        return f"{self.quant}{kv}"


SYNTHETIC_NOTE = "synthetic weights: quality is not reported, so the budget cannot apply"


def within_budget(trial: Trial, budget: QualityBudget, *, synthetic: bool = False,
                  limits: Workload | None = None) -> tuple[bool, str]:
    """Whether a trial may be chosen: measured, within the quality budget and (when given) within the
    workload's limits; with the reason."""
    if not trial.ok:
        return False, "not measured"
    if limits is not None:
        ok, why = within_limits(trial.bench, limits)
        if not ok:
            return False, why
    if synthetic:
        return True, SYNTHETIC_NOTE
    if trial.quality is None:
        return False, "quality not measured"
    q = trial.quality
    if q.kld_mean > budget.max_kld:
        return False, f"mean KLD {q.kld_mean:.4f} > budget {budget.max_kld}"
    if budget.max_ppl_ratio is not None and q.ppl_ratio > budget.max_ppl_ratio:
        return False, f"PPL ratio {q.ppl_ratio:.4f} > budget {budget.max_ppl_ratio}"
    return True, "within budget"


class NothingFeasible(Exception):
    pass


def choose(trials: list[Trial], budget: QualityBudget, *, synthetic: bool = False, key=None,
           limits: Workload | None = None) -> Trial:
    feasible = [t for t in trials if within_budget(t, budget, synthetic=synthetic, limits=limits)[0]]
    if not feasible:
        reasons = "; ".join(f"{t.name}: {within_budget(t, budget, synthetic=synthetic, limits=limits)[1]}"
                            for t in trials)
        raise NothingFeasible(reasons)
    return max(feasible, key=key or (lambda t: t.bench.decode.mean))
