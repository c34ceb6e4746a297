"""The typed lock: every table of haqa.lock.json, declared in the order haqa writes it.

A field is required when something reads it (ship, --from-lock, REPORT.md, pareto.png, the
benchmarks) and optional when it is a record only. A lock keeps the keys it was made or read with, and
nothing else (`to_dict` dumps with `exclude_unset`): read and written again, it is the same JSON.

What is checked, as issue 14 set it: every name a schema name (names become paths and service names),
every quant one that quants.py knows, the runtime knobs exactly RuntimeConfig's (they become
llama-server flags, so an unknown knob is refused), numbers of their own type (a string is never a
number), sha256 digests as 64 hex digits. Other tables keep keys they do not declare, as they are.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr

from haqa.bundle.lock.records import (
    Bytes,
    Comparison,
    Count,
    Knobs,
    Metrics,
    Num,
    Quant,
    Sha256,
    Table,
    Text,
    Throughput,
    TrialRecord,
)
from haqa.config.schema import Name, Target, Workload
from haqa.config.schema import Quality as QualityBudget

SCHEMA = 3  # the shape of the JSON: raised only when the written JSON changes shape
# Schemas this haqa reads. 3 added the workload's concurrency and limits (recipe.workload) and the load test
# of the bundle's llama-server (comparison.load_test) and the context decision (selection.context); a
# schema-2 lock reads as one without them.
READABLE = (2, 3)


class Runtime(Knobs):
    """The locked flags and the llama-server argv they made."""

    server_args: list[StrictStr] = []


# -- how it was measured and chosen ------------------------------------------------------------------

class LockedTarget(Table):
    name: Name
    sha256: Sha256 | None = None
    facts: Target


class LockedRecipe(Table):
    name: Name
    sha256: Sha256
    workload: Workload
    quality_budget: QualityBudget


class MeasuredOn(Table):
    """runner.describe() of the device it was measured on (other keys kept)."""

    runner: Text = None
    host: Text = None
    hostname: Text = None


class LlamaCpp(Table):
    commit: StrictStr
    llama_cpp_python: Text = None
    source_sha256: Sha256 | None = None
    cmake_options: dict[StrictStr, StrictStr] = {}
    toolchain_key: Text = None


class SourceModel(Table):
    source: StrictStr
    sha256: Sha256
    file_type: StrictStr


class LockedModel(Table):
    file_type: Quant
    sha256: Sha256
    size_bytes: Bytes
    architecture: Text = None
    n_params: StrictInt | None = None


class DepthCheck(Table):
    """Decode measured at the chosen context's depth (haqa/agent/context.py)."""

    depth: Count
    decode: Throughput | None = None
    at_search_depth_tps: Num | None = None
    error: Text = None


class ContextRecord(Table):
    """The context the deployment got, and why (lock schema 3)."""

    tokens: Count
    why: StrictStr
    predicted_host_bytes: Bytes | None = None
    next_step_predicted_host_bytes: Bytes | None = None
    basis: StrictStr
    depth_check: DepthCheck | None = None


class Selection(Table):
    proposer: StrictStr
    trials: Count
    new_trials: Count
    stop: StrictStr
    reruns_after_drift: Count | None = None
    llm_fallbacks: Count | None = None
    llm_replies: Count | None = None
    space_size: Count
    objective: StrictStr
    pareto_front: list[StrictStr] | None = None
    rule: StrictStr
    reproduced: Text = None
    context: ContextRecord | None = None  # lock schema 3


class QualityMethod(Table):
    reference: StrictStr
    corpus: StrictStr
    corpus_sha256: Sha256 | None = None
    ctx: StrictInt
    chunks: StrictInt
    tool: StrictStr


class SpeedMethod(Table):
    tool: Text = None
    repetitions: StrictInt | None = None
    rse_target: Num
    max_repetitions: StrictInt
    prefill: StrictStr
    decode: StrictStr


class DriftEvent(Table):
    event: StrictStr
    why: Text = None
    tokens_per_s: Num | None = None
    change: Num | None = None
    ok: StrictBool | None = None


class DriftRecord(Table):
    tolerance: Num
    every: StrictInt | None = None
    history: list[DriftEvent]
    basis: Text = None
    disabled: Text = None
    reruns: Count = 0


class ReproducedFrom(Table):
    """What `haqa deploy --from-lock` found against the lock it reproduced."""

    lock_sha256: Sha256
    lock_created: StrictStr
    lock_measured_on: MeasuredOn | None = None
    weights_match_lock: StrictBool
    decode_ratio_to_lock: Num
    prefill_ratio_to_lock: Num
    basis: StrictStr


class Lock(Table):
    """haqa.lock.json: what was chosen, for which device and model, and how it was measured."""

    schema_: Literal[2, 3] = Field(alias="schema")
    haqa_version: StrictStr
    created: StrictStr
    target: LockedTarget
    recipe: LockedRecipe
    measured_on: MeasuredOn | None = None
    llama_cpp: LlamaCpp
    source_model: SourceModel
    model: LockedModel
    runtime: Runtime
    selection: Selection
    synthetic: StrictBool = False
    quality_method: QualityMethod | StrictStr  # a string where quality was not measured
    speed_method: SpeedMethod
    drift_guard: DriftRecord | StrictStr | None = None  # a string where nothing new was measured
    metrics: Metrics
    trials: list[TrialRecord]
    comparison: Comparison | None = None
    reproduced_from_lock: ReproducedFrom | None = None
    original_comparison: Comparison | None = None  # the comparison of the lock it was reproduced from
    files: dict[StrictStr, Sha256] = {}

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @property
    def label(self) -> str:
        """<recipe>@<target it was made for>: the bundle's name."""
        return f"{self.recipe.name}@{self.target.name}"

    def to_dict(self) -> dict:
        """The lock as JSON values, with exactly the keys it was made or read with."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)

    def dumps(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent) + "\n"

    def sha256(self) -> str:
        """The digest of the lock's content (key order aside)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
