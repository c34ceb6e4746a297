"""Pick the winner among measured candidates.

The walking skeleton's rule: the fastest decode (mean tok/s) among the recipe's candidate quants.
The agent replaces this module's caller, not the records it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from haqa.measure.bench import BenchResult
from haqa.runtime import RuntimeConfig

RULE = "fastest-decode"


@dataclass(frozen=True)
class Trial:
    quant: str
    config: RuntimeConfig
    bench: BenchResult | None
    model_sha256: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.bench is not None


def choose(trials: list[Trial]) -> Trial:
    ok = [t for t in trials if t.ok]
    if not ok:
        raise ValueError("no candidate could be measured")
    return max(ok, key=lambda t: t.bench.decode.mean)
