"""Side-by-side speed of a few deployments on one device, in interleaved rounds.

Each round measures every contender once (prefill, then decode, a fixed number of llama-bench
repetitions), in a rotated order (A B C, B C A, C A B, ...), so drift on a busy or warming device
hits every contender alike. A contender's figure is the median of its per-round means; a ratio is
the median of the per-round ratios, with their range.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import PurePath

from haqa import ui
from haqa.errors import ToolFailed
from haqa.measure.bench import BenchResult, SpeedPolicy, Throughput, run_bench
from haqa.runner.base import Runner
from haqa.runtime import RuntimeConfig
from haqa.toolchain.build import Toolchain


@dataclass(frozen=True)
class Contender:
    label: str  # "tuned", "default", "unquantized"
    quant: str
    config: RuntimeConfig
    description: str
    model: PurePath | None = None  # None: not measured, `skipped` says why
    skipped: str | None = None


@dataclass
class Side:
    contender: Contender
    rounds: list[BenchResult] = field(default_factory=list)
    error: str | None = None

    @property
    def measured(self) -> bool:
        return bool(self.rounds) and self.error is None

    def pooled(self) -> BenchResult:
        """Every round's samples together, for the objective."""
        first = self.rounds[0]
        pool = {m: Throughput.from_samples(getattr(first, m).tokens, getattr(first, m).depth,
                                           [x for r in self.rounds for x in getattr(r, m).samples])
                for m in ("prefill", "decode")}
        peaks = [r.peak_rss_bytes for r in self.rounds if r.peak_rss_bytes]
        return dataclasses.replace(first, **pool, peak_rss_bytes=max(peaks) if peaks else None)

    def _stat(self, metric: str) -> dict:
        means = [getattr(r, metric).mean for r in self.rounds]
        return {"median": round(statistics.median(means), 3), "min": round(min(means), 3), "max": round(max(means), 3),
                "per_round": [round(m, 3) for m in means],
                "repetitions_per_round": getattr(self.rounds[0], metric).repetitions,
                "unit": "tokens/s", "basis": "measured: median of the per-round means"}

    def summary(self, prompt_tokens: int) -> dict:
        c = self.contender
        out = {"quant": c.quant, "config": c.config.as_dict(), "description": c.description}
        if not self.measured:
            out["not_measured"] = c.skipped or self.error
            return out
        prefill, decode = self._stat("prefill"), self._stat("decode")
        peaks = [r.peak_rss_bytes for r in self.rounds if r.peak_rss_bytes]
        out.update(prefill=prefill, decode=decode,
                   time_to_first_token_s={"value": round(prompt_tokens / prefill["median"], 4),
                                          "basis": f"derived: {prompt_tokens} prompt tokens / median prefill tok/s"},
                   peak_rss_bytes=max(peaks) if peaks else None,
                   peak_rss_basis=("measured: the largest wait4 ru_maxrss of its llama-bench runs" if peaks
                                   else "not measured"))
        return out


def per_round_ratio(num: list[float], den: list[float]) -> dict:
    """The ratios num/den of the rounds both sides measured: median, range and how many rounds."""
    per = [a / b for a, b in zip(num, den, strict=False) if b > 0]
    return {"median": round(statistics.median(per), 3), "min": round(min(per), 3), "max": round(max(per), 3),
            "rounds": len(per)}


def ratios(tuned: Side, other: Side) -> dict | None:
    """Speed-ups of `tuned` over `other` (above 1: tuned is faster), per round then the median; and
    peak memory as tuned / other (below 1: tuned needs less)."""
    if not (tuned.measured and other.measured):
        return None
    out = {m: per_round_ratio([getattr(r, m).mean for r in tuned.rounds], [getattr(r, m).mean for r in other.rounds])
           for m in ("decode", "prefill")}
    out["time_to_first_token"] = {**out["prefill"],
                                  "note": "speed-up: other's TTFT / tuned's TTFT (= the prefill ratio)"}
    a = max((r.peak_rss_bytes or 0) for r in tuned.rounds)
    b = max((r.peak_rss_bytes or 0) for r in other.rounds)
    out["peak_rss"] = {"ratio": round(a / b, 3) if a and b else None, "note": "tuned / other (below 1: less memory)"}
    return out


def compare(runner: Runner, toolchain: Toolchain, contenders: list[Contender], *, prompt_tokens: int,
            gen_tokens: int, rounds: int = 3, repetitions: int = 3, log_dir=None) -> list[Side]:
    """Measure every contender in `rounds` interleaved rounds; a contender that fails keeps its error
    and drops out of the later rounds."""
    policy = SpeedPolicy(repetitions=repetitions, rse_target=float("inf"), max_repetitions=repetitions)
    sides = [Side(c, error=None) for c in contenders]
    live = [s for s in sides if s.contender.model is not None]
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for side in order:
            if side.error:
                continue
            c = side.contender
            ui.note(f"comparison round {r + 1}/{rounds}: {c.label} ({c.quant})")
            try:
                side.rounds.append(run_bench(runner, toolchain, c.model, c.config, prompt_tokens=prompt_tokens,
                                             gen_tokens=gen_tokens, policy=policy,
                                             log_path=(log_dir / f"compare-{c.label}.log") if log_dir else None))
            except ToolFailed as e:
                side.error = f"failed in round {r + 1}: {str(e).splitlines()[0]}"
                ui.note(f"{c.label}: {side.error}")
    return sides


METHOD = ("interleaved rounds (the order rotates each round); each round runs llama-bench prefill and decode "
          "with a fixed number of repetitions per contender; figures are medians of the per-round means, "
          "ratios the medians of the per-round ratios (min..max given)")
