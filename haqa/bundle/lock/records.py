"""The records a lock holds of measurements: a trial (its llama-bench speeds, its quality against the
source model, the memory model's prediction) and the side-by-side comparison, with the scalar types
and the runtime knobs every table of the lock uses (see haqa/bundle/lock/model.py for the rules)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from haqa.config.quants import QUANT_NAMES
from haqa.config.schema import KV_TYPES, Workload
from haqa.runtime import RuntimeConfig


def _quant(v: str) -> str:
    if v not in QUANT_NAMES:
        raise ValueError(f"not a GGUF quant type haqa knows, got {v!r}; valid: {', '.join(QUANT_NAMES)}")
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {v!r}")
    return v


Quant = Annotated[StrictStr, AfterValidator(_quant)]
Num = Annotated[StrictInt | StrictFloat, AfterValidator(_finite)]  # an int stays an int
Bytes = Annotated[Num, Field(ge=0)]
Count = Annotated[StrictInt, Field(ge=0)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
Text = StrictStr | None


class Table(BaseModel):
    """A table of the lock: the keys haqa reads are typed, any others are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Knobs(BaseModel):
    """The llama.cpp flags of one configuration: RuntimeConfig's fields, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    threads: StrictInt = Field(gt=0)
    ctx_size: StrictInt = Field(gt=0)
    n_gpu_layers: StrictInt = Field(default=0, ge=0)
    batch_size: StrictInt = Field(default=2048, gt=0)
    ubatch_size: StrictInt = Field(default=512, gt=0)
    cache_type_k: Literal[tuple(KV_TYPES)] = "f16"  # type: ignore[valid-type]
    cache_type_v: Literal[tuple(KV_TYPES)] = "f16"  # type: ignore[valid-type]
    flash_attn: Literal["on", "off", "auto"] = "auto"
    threads_batch: StrictInt | None = Field(default=None, gt=0)
    repack: StrictBool = True
    load_mode: Literal["auto", "mmap", "none", "mlock", "mmap+mlock"] = "auto"
    poll: StrictInt = Field(default=50, ge=0, le=100)

    def config(self) -> RuntimeConfig:
        return RuntimeConfig(**self.model_dump(include=set(Knobs.model_fields)))


# -- measurements ------------------------------------------------------------------------------------

class Throughput(Table):
    """One llama-bench test: tok/s over its repetitions."""

    tokens: Count
    depth: Count = 0
    mean: Num
    stddev: Num
    median: Num | None = None
    samples: list[Num] | None = None
    repetitions: Count
    rse: Num | None = None
    unit: Text = None
    basis: Text = None


class Bench(Table):
    prefill: Throughput
    decode: Throughput
    build_commit: Text = None
    threads: StrictInt | None = None
    model_size_bytes: Bytes | None = None
    argv: list[StrictStr] | None = None
    peak_rss_bytes: Bytes | None = None
    peak_rss_ctx: StrictInt | None = None
    peak_rss_basis: Text = None


class Speed(Throughput):
    mean: Annotated[Num, Field(gt=0)]  # the from-lock ratios divide by it


class MeasuredBench(Bench):
    prefill: Speed
    decode: Speed


class QualityRecord(Table):
    """llama-perplexity --kl-divergence against the source model."""

    kld_mean: Num
    kld_err: Num
    kld_p99: Num | None = None
    same_top_p: Num
    same_top_p_err: Num | None = None
    ppl_ratio: Num
    ppl_ratio_err: Num | None = None
    ppl: Num | None = None
    ppl_base: Num | None = None
    tokens_scored: StrictInt | None = None
    corpus_sha256: Text = None
    reference: Text = None
    basis: Text = None


class Derived(Table):
    value: Num
    basis: StrictStr


class Predicted(Table):
    """The memory model's prediction for the deployment at its context."""

    weights_bytes: Bytes | None = None
    kv_bytes: Bytes | None = None
    compute_bytes: Bytes | None = None
    overhead_bytes: Bytes | None = None
    host_bytes: Bytes
    gpu_bytes: Bytes = 0
    total_bytes: Bytes | None = None
    basis: Text = None


class Memory(Table):
    deployment_predicted: Predicted
    bench_predicted_bytes: Bytes | None = None
    bench_measured_bytes: Bytes | None = None
    basis: Text = None
    bench_prediction_error: Num | None = None


class TrialRecord(Table):
    """One trial of the search: what was measured (or why it failed), and who proposed it why."""

    name: StrictStr
    quant: Quant
    config: Knobs
    status: Literal["ok", "failed"]
    bench: Bench | None = None
    memory: dict | None = None  # a record only: the chosen one's is typed in Metrics
    quality: QualityRecord | None = None
    within_budget: StrictBool | None = None
    budget_note: Text = None
    time_to_first_token_s: Derived | None = None
    model_sha256: Sha256 | None = None
    error: Text = None
    proposer: Text = None
    rationale: Text = None

    @model_validator(mode="after")
    def _measured(self):
        if self.status == "ok" and self.bench is None:
            raise ValueError("a trial with status 'ok' needs its 'bench' measurements")
        return self


class Metrics(TrialRecord):
    """The chosen configuration's trial, with its memory prediction."""

    bench: MeasuredBench
    memory: Memory
    time_to_first_token_s: Derived
    speed_basis: Text = None


# -- the side-by-side comparison ---------------------------------------------------------------------

class Spread(Table):
    median: Num
    min: Num
    max: Num
    per_round: list[Num] | None = None
    repetitions_per_round: StrictInt | None = None
    rounds: StrictInt | None = None
    unit: Text = None
    note: Text = None
    basis: Text = None


class Contender(Table):
    """One deployment measured side by side: a finalist, the default one or the unquantized model."""

    quant: StrictStr
    config: Knobs
    description: StrictStr
    not_measured: Text = None
    prefill: Spread | None = None
    decode: Spread | None = None
    time_to_first_token_s: Derived | None = None
    peak_rss_bytes: Bytes | None = None
    peak_rss_basis: Text = None
    quality_error: Text = None
    quality: QualityRecord | None = None

    @property
    def measured(self) -> bool:
        return self.decode is not None

    @property
    def why_not_measured(self) -> str:
        return self.not_measured if self.not_measured is not None else "not measured"

    @model_validator(mode="after")
    def _complete(self):
        if self.decode is not None and (self.prefill is None or self.time_to_first_token_s is None):
            raise ValueError("a measured contender needs 'prefill' and 'time_to_first_token_s' with 'decode'")
        return self


class PeakRatio(Table):
    ratio: Num | None = None
    note: Text = None


class Ratios(Table):
    decode: Spread
    prefill: Spread
    time_to_first_token: Spread | None = None
    peak_rss: PeakRatio


class LoadSide(Table):
    """One deployment under the load test: its llama-server flags and what its clients measured."""

    quant: StrictStr
    server_args: list[StrictStr]
    description: StrictStr
    not_measured: Text = None
    request_s: Spread | None = None
    ttft_s: Spread | None = None
    decode_tps: Spread | None = None
    p95_request_s: Spread | None = None
    aggregate_tps: Spread | None = None
    requests_per_round: Count | None = None
    peak_rss_bytes: Bytes | None = None
    peak_rss_basis: Text = None

    @property
    def measured(self) -> bool:
        return self.request_s is not None


class LoadTest(Table):
    """The bundle's llama-server under the workload (haqa/measure/load.py), tuned against the default."""

    method: StrictStr
    rounds: Count
    requests_per_client: Count
    concurrency: Count
    contenders: dict[StrictStr, LoadSide]
    ratios: dict[StrictStr, dict[StrictStr, Spread] | StrictStr]  # a string where one side was not measured
    decided: StrictStr  # what the load test changed, or that it only reports


class Comparison(Table):
    method: StrictStr
    rounds: Count
    repetitions_per_round: Count
    workload: Workload
    finalists: Count | None = None
    contenders: dict[StrictStr, Contender]
    ratios: dict[StrictStr, Ratios | StrictStr]  # a string where one side was not measured
    load_test: LoadTest | None = None  # lock schema 3
    created: Text = None


