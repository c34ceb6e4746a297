"""Speed on the device with llama-bench: prefill at the workload's prompt length, decode at the
workload's context depth, repeated until the relative standard error is small (or a cap is hit),
with peak resident memory measured on the same runs."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath

from haqa.errors import ToolFailed
from haqa.measure import peak_rss
from haqa.runner.base import Runner
from haqa.runtime import RuntimeConfig
from haqa.toolchain.build import Toolchain

BENCH_TIMEOUT_S = 1800


@dataclass(frozen=True)
class SpeedPolicy:
    """How hard to try for a stable number: stop when the relative standard error of the mean is
    below `rse_target`, or after `max_repetitions` samples."""

    repetitions: int = 3
    rse_target: float = 0.02
    max_repetitions: int = 9


@dataclass(frozen=True)
class Throughput:
    """tok/s over `repetitions` runs (each invocation of llama-bench does one warm-up run first)."""

    tokens: int
    depth: int
    mean: float
    stddev: float
    median: float
    samples: list[float] = field(default_factory=list)

    @property
    def repetitions(self) -> int:
        return len(self.samples)

    @property
    def rse(self) -> float:
        """Relative standard error of the mean."""
        if self.repetitions < 2 or self.mean <= 0:
            return math.inf
        return self.stddev / self.mean / math.sqrt(self.repetitions)

    def as_dict(self) -> dict:
        return {**asdict(self), "repetitions": self.repetitions, "rse": round(self.rse, 5), "unit": "tokens/s",
                "basis": "measured"}

    @classmethod
    def from_samples(cls, tokens: int, depth: int, samples: list[float]) -> Throughput:
        return cls(tokens=tokens, depth=depth, mean=statistics.fmean(samples),
                   stddev=statistics.stdev(samples) if len(samples) > 1 else 0.0,
                   median=statistics.median(samples), samples=list(samples))

    @classmethod
    def from_dict(cls, d: dict) -> Throughput:
        return cls(tokens=d["tokens"], depth=d.get("depth", 0), mean=d["mean"], stddev=d["stddev"],
                   median=d["median"], samples=d["samples"])


@dataclass(frozen=True)
class BenchResult:
    prefill: Throughput
    decode: Throughput
    build_commit: str
    threads: int
    model_size_bytes: int
    argv: list[str]
    peak_rss_bytes: int | None = None  # the larger of the two runs
    peak_rss_ctx: int | None = None  # llama-bench's n_ctx in the run that set it

    def as_dict(self) -> dict:
        return {
            "prefill": self.prefill.as_dict(), "decode": self.decode.as_dict(), "build_commit": self.build_commit,
            "threads": self.threads, "model_size_bytes": self.model_size_bytes, "argv": self.argv,
            "peak_rss_bytes": self.peak_rss_bytes, "peak_rss_ctx": self.peak_rss_ctx,
            "peak_rss_basis": "measured (wait4 ru_maxrss of llama-bench)" if self.peak_rss_bytes else "not measured",
        }

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        return cls(prefill=Throughput.from_dict(d["prefill"]), decode=Throughput.from_dict(d["decode"]),
                   build_commit=d["build_commit"], threads=d["threads"], model_size_bytes=d["model_size_bytes"],
                   argv=d["argv"], peak_rss_bytes=d.get("peak_rss_bytes"), peak_rss_ctx=d.get("peak_rss_ctx"))

    def time_to_first_token_s(self, prompt_tokens: int) -> float:
        """Derived, not measured: prompt_tokens / prefill tok/s."""
        return prompt_tokens / self.prefill.mean


def parse_bench_json(text: str) -> list[dict]:
    """llama-bench `-o json` records. Accepts the current fields (load_mode) and older ones (use_mmap)."""
    start = text.find("[")
    if start < 0:
        raise ValueError("no JSON array in llama-bench output")
    records = json.loads(text[start:])
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("llama-bench JSON is not a list of records")
    for r in records:
        for k in ("n_prompt", "n_gen", "avg_ts", "stddev_ts"):
            if k not in r:
                raise ValueError(f"llama-bench record lacks '{k}'")
    return records


def _samples(record: dict) -> list[float]:
    return [float(s) for s in record.get("samples_ts") or [record["avg_ts"]]]


def _python_on(runner: Runner) -> str | None:
    """A Python interpreter on the device for the peak-RSS wrapper (None if there is none)."""
    cached = getattr(runner, "_haqa_python", "unset")
    if cached != "unset":
        return cached
    found = runner.known_python
    if found is None:
        for candidate in ("python3", "python"):
            try:
                if runner.run([candidate, "-c", "import os; os.wait4"], timeout=60).ok:
                    found = candidate
                    break
            except Exception:
                continue
    runner._haqa_python = found  # type: ignore[attr-defined]
    return found


def _one(runner: Runner, toolchain: Toolchain, model: PurePath, config: RuntimeConfig, *, p: int, n: int, d: int,
         reps: int, log_path: Path | None) -> tuple[dict, int | None, list[str]]:
    argv = [str(toolchain.bin("llama-bench")), "-m", str(model), "-p", str(p), "-n", str(n), "-d", str(d),
            "-r", str(reps), *config.bench_args(prefill=p > 0), "-o", "json"]
    python = _python_on(runner)
    run_argv = peak_rss.wrap(python, argv) if python else argv
    result = runner.run(run_argv, timeout=BENCH_TIMEOUT_S, log_path=log_path)
    if not result.ok:
        raise ToolFailed(argv, result.returncode, result.stderr_tail, timed_out=result.timed_out)
    try:
        records = parse_bench_json(result.stdout)
        record = next(r for r in records if int(r["n_prompt"]) == p and int(r["n_gen"]) == n)
    except (ValueError, StopIteration, json.JSONDecodeError) as e:
        raise ToolFailed(argv, result.returncode,
                         f"unexpected llama-bench output ({e}):\n{result.stdout[-2000:]}") from None
    return record, peak_rss.parse(result.stderr_tail), argv


def _measure(runner, toolchain, model, config, *, p: int, n: int, d: int, policy: SpeedPolicy, log_path):
    """Samples for one test, topped up with more repetitions while the RSE is above target."""
    samples: list[float] = []
    record: dict = {}
    rss: list[int] = []
    argv: list[str] = []
    reps = policy.repetitions
    while True:
        record, peak, argv = _one(runner, toolchain, model, config, p=p, n=n, d=d, reps=reps, log_path=log_path)
        samples += _samples(record)
        if peak:
            rss.append(peak)
        t = Throughput.from_samples(p or n, d, samples)
        left = policy.max_repetitions - len(samples)
        if t.rse <= policy.rse_target or left <= 0:
            return t, record, max(rss) if rss else None, argv
        reps = min(left, max(2, policy.repetitions))


def run_bench(runner: Runner, toolchain: Toolchain, model: PurePath, config: RuntimeConfig, *,
              prompt_tokens: int, gen_tokens: int, depth: int | None = None, policy: SpeedPolicy = SpeedPolicy(),
              log_path: Path | None = None) -> BenchResult:
    """Prefill of `prompt_tokens` at depth 0, and decode of `gen_tokens` after `depth` tokens already in
    the cache (default: the prompt), each repeated until stable."""
    depth = prompt_tokens if depth is None else depth
    pp, _, pp_rss, _ = _measure(runner, toolchain, model, config, p=prompt_tokens, n=0, d=0, policy=policy,
                                log_path=log_path)
    tg, rec, tg_rss, argv = _measure(runner, toolchain, model, config, p=0, n=gen_tokens, d=depth, policy=policy,
                                     log_path=log_path)
    peaks = [(r, c) for r, c in ((pp_rss, prompt_tokens), (tg_rss, gen_tokens + depth)) if r]
    peak, peak_ctx = max(peaks) if peaks else (None, None)
    return BenchResult(prefill=pp, decode=tg, build_commit=str(rec.get("build_commit", "")),
                       threads=int(rec.get("n_threads", config.threads)),
                       model_size_bytes=int(rec.get("model_size", 0)),
                       argv=argv, peak_rss_bytes=peak, peak_rss_ctx=peak_ctx)


def quick_decode(runner: Runner, toolchain: Toolchain, model: PurePath, config: RuntimeConfig, *,
                 gen_tokens: int = 32, repetitions: int = 3) -> float:
    """Median decode tok/s of a short, fixed test: the drift guard's anchor."""
    record, _, _ = _one(runner, toolchain, model, config, p=0, n=gen_tokens, d=0, reps=repetitions, log_path=None)
    return statistics.median(_samples(record))
