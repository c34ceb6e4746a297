"""The drift guard: a fixed anchor configuration is re-measured every few trials; when it moved by
more than the tolerance (thermal throttling, a busy device), the trials since the last good check
are discarded and measured again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from haqa import ui
from haqa.errors import ToolFailed


@dataclass
class DriftGuard:
    measure_anchor: Callable[[], float]  # the anchor's decode tok/s, measured now
    tolerance: float = 0.10
    every: int = 3  # trials between checks
    baseline: float | None = None
    history: list[dict] = field(default_factory=list)
    disabled: str | None = None  # why the anchor could not be measured: no drift checks in this run

    @property
    def ready(self) -> bool:
        """Started, or given up on: nothing to do before the next trial."""
        return self.baseline is not None or self.disabled is not None

    def _measure(self) -> float | None:
        try:
            return self.measure_anchor()
        except ToolFailed as e:
            self.disabled = f"measuring the anchor failed: {str(e).splitlines()[0]}"
            self.history.append({"event": "disabled", "why": self.disabled})
            ui.note(f"drift guard off for this run ({self.disabled}); the finalists are still re-measured side by "
                    "side before the choice")
            return None

    def start(self) -> float | None:
        value = self._measure()
        if value is None:
            return None
        self.baseline = value
        self.history.append({"event": "baseline", "tokens_per_s": round(self.baseline, 3)})
        return self.baseline

    def check(self) -> bool:
        """True when the anchor is still within tolerance of its baseline (or the guard is off). On drift,
        the anchor is re-baselined so that the re-run trials are compared with the device as it is now."""
        if self.disabled:
            return True
        assert self.baseline is not None, "start() first"
        value = self._measure()
        if value is None:
            return True
        change = (value - self.baseline) / self.baseline
        ok = abs(change) <= self.tolerance
        self.history.append({"event": "check", "tokens_per_s": round(value, 3), "change": round(change, 4), "ok": ok})
        if not ok:
            self.start()
        return ok

    def as_dict(self) -> dict:
        out = {"tolerance": self.tolerance, "every": self.every, "history": self.history,
               "basis": "measured (anchor decode tok/s)"}
        if self.disabled:
            out["disabled"] = self.disabled
        return out
