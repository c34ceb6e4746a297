"""The drift guard: a fixed anchor configuration is re-measured every few trials; when it moved by
more than the tolerance (thermal throttling, a busy device), the trials since the last good check
are discarded and measured again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class DriftGuard:
    measure_anchor: Callable[[], float]  # the anchor's decode tok/s, measured now
    tolerance: float = 0.10
    every: int = 3  # trials between checks
    baseline: float | None = None
    history: list[dict] = field(default_factory=list)

    def start(self) -> float:
        self.baseline = self.measure_anchor()
        self.history.append({"event": "baseline", "tokens_per_s": round(self.baseline, 3)})
        return self.baseline

    def check(self) -> bool:
        """True when the anchor is still within tolerance of its baseline. On drift, the anchor is
        re-baselined so that the re-run trials are compared with the device as it is now."""
        assert self.baseline is not None, "start() first"
        value = self.measure_anchor()
        change = (value - self.baseline) / self.baseline
        ok = abs(change) <= self.tolerance
        self.history.append({"event": "check", "tokens_per_s": round(value, 3), "change": round(change, 4), "ok": ok})
        if not ok:
            self.start()
        return ok

    def as_dict(self) -> dict:
        return {"tolerance": self.tolerance, "every": self.every, "history": self.history,
                "basis": "measured (anchor decode tok/s)"}
