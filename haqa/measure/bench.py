"""Speed on the device with llama-bench: prefill and decode tok/s with their spread, from its JSON output."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath

from haqa.errors import ToolFailed
from haqa.runner.base import Runner
from haqa.runtime import RuntimeConfig
from haqa.toolchain.build import Toolchain

BENCH_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Throughput:
    """tok/s measured over `repetitions` runs (after llama-bench's warm-up run)."""

    tokens: int
    mean: float
    stddev: float
    median: float
    samples: list[float] = field(default_factory=list)

    @property
    def repetitions(self) -> int:
        return len(self.samples)

    def as_dict(self) -> dict:
        return {**asdict(self), "repetitions": self.repetitions, "unit": "tokens/s", "basis": "measured"}


@dataclass(frozen=True)
class BenchResult:
    prefill: Throughput
    decode: Throughput
    build_commit: str
    threads: int
    model_size_bytes: int
    argv: list[str]

    def as_dict(self) -> dict:
        return {
            "prefill": self.prefill.as_dict(), "decode": self.decode.as_dict(), "build_commit": self.build_commit,
            "threads": self.threads, "model_size_bytes": self.model_size_bytes, "argv": self.argv,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BenchResult":
        def tp(x: dict) -> Throughput:
            return Throughput(tokens=x["tokens"], mean=x["mean"], stddev=x["stddev"], median=x["median"], samples=x["samples"])

        return cls(prefill=tp(d["prefill"]), decode=tp(d["decode"]), build_commit=d["build_commit"],
                   threads=d["threads"], model_size_bytes=d["model_size_bytes"], argv=d["argv"])

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


def _throughput(record: dict, tokens: int) -> Throughput:
    samples = [float(s) for s in record.get("samples_ts") or [record["avg_ts"]]]
    return Throughput(tokens=tokens, mean=float(record["avg_ts"]), stddev=float(record["stddev_ts"]),
                      median=statistics.median(samples), samples=samples)


def run_bench(runner: Runner, toolchain: Toolchain, model: PurePath, config: RuntimeConfig, *,
              prompt_tokens: int, gen_tokens: int, repetitions: int = 3, log_path: Path | None = None) -> BenchResult:
    argv = [str(toolchain.bin("llama-bench")), "-m", str(model), "-p", str(prompt_tokens), "-n", str(gen_tokens),
            "-r", str(repetitions), *config.bench_args(), "-o", "json"]
    result = runner.run(argv, timeout=BENCH_TIMEOUT_S, log_path=log_path)
    if not result.ok:
        raise ToolFailed(argv, result.returncode, result.stderr_tail, timed_out=result.timed_out)
    try:
        records = parse_bench_json(result.stdout)
        pp = next(r for r in records if int(r["n_prompt"]) > 0 and int(r["n_gen"]) == 0)
        tg = next(r for r in records if int(r["n_gen"]) > 0 and int(r["n_prompt"]) == 0)
    except (ValueError, StopIteration, json.JSONDecodeError) as e:
        raise ToolFailed(argv, result.returncode, f"unexpected llama-bench output ({e}):\n{result.stdout[-2000:]}") from None
    return BenchResult(
        prefill=_throughput(pp, prompt_tokens), decode=_throughput(tg, gen_tokens),
        build_commit=str(tg.get("build_commit", "")), threads=int(tg.get("n_threads", config.threads)),
        model_size_bytes=int(tg.get("model_size", 0)), argv=argv,
    )
