"""Other processes' share of this machine's CPU while a landscape is measured: a shared machine's
other work must not end up in a landscape (haqa.benchmarks.landscape waits for a quiet machine and
measures a contended point again)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from haqa import ui

QUIET = 0.05  # wait until other processes use less than this share of the machine's CPU ...
CONTENDED = 0.10  # ... and measure a point again when they used more than this while it ran
MAX_WAIT_S = 900  # per point; then it is measured anyway and marked


class ForeignLoad:
    """How much of this machine's CPU other processes use (Linux /proc/stat against haqa's own
    rusage, children included).
    For the local runner only; on a remote device the drift guard is what watches."""

    def __init__(self, max_wait_s: float = MAX_WAIT_S):
        self.max_wait_s = max_wait_s
        self.cores = os.cpu_count() or 1
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = Path("/proc/stat").exists()
        self._t0: tuple[float, float, float] | None = None

    def _busy_s(self) -> float:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return (sum(f[:8]) - idle) / self.tick

    @staticmethod
    def _ours_s() -> float:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def start(self) -> None:
        if self.available:
            self._t0 = (time.monotonic(), self._busy_s(), self._ours_s())

    def share(self) -> float:
        """Share of all cores' time since start() that went to other processes."""
        if not self.available or self._t0 is None:
            return 0.0
        t, busy, ours = self._t0
        wall = max(time.monotonic() - t, 1e-3)
        return max(0.0, (self._busy_s() - busy) - (self._ours_s() - ours)) / (wall * self.cores)

    def wait_quiet(self) -> float:
        """Wait until the machine is quiet (2-second samples, at most max_wait_s); returns the seconds waited."""
        if not self.available or self.max_wait_s <= 0:
            return 0.0
        t0 = time.monotonic()
        said = False
        while True:
            self.start()
            time.sleep(2)
            if self.share() < QUIET or time.monotonic() - t0 > self.max_wait_s:
                return time.monotonic() - t0
            if not said:
                ui.note(f"other processes use {self.share():.0%} of the CPU: waiting for a quiet machine")
                said = True
