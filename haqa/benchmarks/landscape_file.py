"""The landscape file format: its kind and schema, a point's identity, reading and writing a file,
and `Landscape`, a file's points read as the search's Trials and Observations (haqa.agent.search).

A landscape file is written by haqa.benchmarks.landscape (measuring) and read by
haqa.benchmarks.replay (replaying proposers) and haqa.benchmarks.search_report (the tables).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from haqa.agent.proposers import Observation
from haqa.agent.search import observation
from haqa.agent.select import Trial
from haqa.agent.space import KNOBS, Candidate, SearchSpace
from haqa.config.schema import Objective, Workload
from haqa.config.schema import Quality as QualityBudget
from haqa.errors import UserError
from haqa.fsutil import atomic_write_text
from haqa.measure.bench import BenchResult
from haqa.measure.quality import Quality

SCHEMA = 1
KIND = "haqa-landscape"
MEASURED = ("ok", "failed")  # a point's statuses once measured; the others are "pending" and "pruned"


def values_key(values: dict) -> str:
    """A point's identity in a landscape file: its knob values, canonical JSON."""
    return json.dumps({k: values[k] for k in KNOBS}, sort_keys=True)


def values_name(values: dict) -> str:
    """A point's name as Candidate.name writes it."""
    return " ".join(f"{k}={values[k]}" for k in KNOBS)


def write(path: Path, data: dict) -> None:
    """Write a landscape atomically (a reader sees the old file or the new one)."""
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_for_resume(path: Path, grid_key: str) -> dict | None:
    """The landscape at `path` to resume measuring, if there is one; it must hold the same grid."""
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not a landscape file (not JSON)", hint="pass --fresh to overwrite it") from None
    if not isinstance(old, dict) or old.get("grid_key") != grid_key:
        raise UserError(f"{path} holds another landscape (another grid, recipe, target, model or llama.cpp build)",
                        hint="pass --fresh to measure it again from the start, or choose another --out")
    return old


class Landscape:
    """A landscape file, with its points as the pipeline's Trials and Observations."""

    def __init__(self, data: dict, path: Path | None = None):
        if data.get("kind") != KIND:
            raise UserError(f"{path or 'data'} is not a haqa landscape file")
        self.data, self.path = data, path
        r = data["recipe"]
        self.budget = QualityBudget(**r["quality_budget"])
        self.objective = Objective(**r["objective"])
        self.workload = Workload(**r["workload"])
        self.prompt_tokens = self.workload.prompt_tokens
        self.synthetic = bool(data["synthetic"])
        self.label = data["label"]
        self.dims = data["space"]["dims"]
        self.ctx_size = int(data["space"]["ctx_size"])
        self.weight_bytes = {q: float(b) for q, b in data["weight_bytes"].items()}
        self._by_values = {values_key(p["values"]): p for p in data["points"]}
        self._index = {values_key(p["values"]): i for i, p in enumerate(data["points"])}
        self.sha256 = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def index(self, cand: Candidate) -> int:
        """The point's position in the file's `points` list."""
        return self._index[values_key(cand.values())]

    @classmethod
    def load(cls, path: Path) -> Landscape:
        try:
            return cls(json.loads(Path(path).read_text()), Path(path))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the landscape {path}: {e}") from None

    @property
    def complete(self) -> bool:
        return bool(self.data.get("complete"))

    def has_feasible(self) -> bool:
        return any(o.score is not None for _, o in self.observations())

    def point_at(self, values: dict) -> dict | None:
        """The stored point with these knob values, if the landscape has one."""
        return self._by_values.get(values_key(values))

    def space(self) -> SearchSpace:
        """The reduced space; points the memory model pruned (or not measured yet) are refused."""
        def fits(cand: Candidate) -> tuple[bool, str]:
            p = self.point_at(cand.values())
            if p is None:
                return False, "not a point of this landscape"
            if p["status"] == "pruned":
                return False, p.get("error") or "pruned by the memory model"
            if p["status"] == "pending":
                return False, "not measured in this landscape"
            return True, "fits"

        return SearchSpace(dims={k: list(v) for k, v in self.dims.items()}, ctx_size=self.ctx_size, fits=fits)

    def point(self, cand: Candidate) -> dict:
        p = self.point_at(cand.values())
        if p is None or p["status"] not in MEASURED:
            raise KeyError(f"the landscape {self.label} has no measurement of {cand.name}")
        return p

    def trial(self, p: dict, cand: Candidate) -> Trial:
        """The stored measurement as the pipeline's Trial (as a resumed deploy reads it from the store)."""
        if p["status"] != "ok":
            return Trial(cand.quant, cand.config, None, error=p.get("error"), cause=p.get("cause") or "error")
        q = None
        if not self.synthetic:
            qd = self.data["quality"].get(f"{cand.quant}|{cand.config.cache_type_k}")
            q = Quality.from_dict(qd) if qd and qd.get("status") != "failed" else None
        return Trial(cand.quant, cand.config, BenchResult.from_dict(p["bench"]), q)

    def observe(self, cand: Candidate) -> Observation:
        return observation(cand, self.trial(self.point(cand), cand), budget=self.budget, objective=self.objective,
                           workload=self.workload, synthetic=self.synthetic)

    def observations(self) -> list[tuple[dict, Observation]]:
        space = self.space()
        return [(p, self.observe(space.make(p["values"]))) for p in self.data["points"] if p["status"] in MEASURED]

    def best(self) -> tuple[float, dict]:
        feasible = [(o.score, p) for p, o in self.observations() if o.score is not None]
        if not feasible:
            raise UserError(f"the landscape {self.label} has no feasible point")
        return max(feasible, key=lambda sp: sp[0])
