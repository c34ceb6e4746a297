"""Replay proposers against measured landscapes, at equal trial budgets.

A landscape (haqa.benchmarks.landscape) holds a measurement for every point of a reduced search
space. The replay runs the deploy's own search (haqa.agent.search.Search) on that reduced space with
a lookup in place of the device: suggest(history) -> the stored measurement of that point -> an
Observation by the search's one rule (search.observation) -> observe(). The proposers are the live
agent's own classes (haqa.agent.registry, haqa.agent.llm), made as a deploy makes them, on the
landscape's space (the memory model's pruned points stay refused), so a proposer can never name a
point the landscape lacks.

Metrics per proposer and landscape: the number of measured trials until one is within 95 % of the
best feasible stored point (feasible: measured, and within the quality budget), over seeds; and the
best-found ratio after 5, 10 and 20 trials.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from haqa.agent import objective as obj
from haqa.agent.proposers import HeuristicProposer, Proposer
from haqa.agent.registry import BASELINES, BENCH_PROPOSERS, DETERMINISTIC, baseline
from haqa.agent.space import SearchSpace
from haqa.benchmarks.landscape_file import Landscape, values_name
from haqa.errors import UserError

PROPOSERS = list(BENCH_PROPOSERS)  # DETERMINISTIC ones (seeds do not change them) are replayed once
BUDGETS = (5, 10, 20)
REACH = 0.95


def ratio(score: float | None, best: float) -> float:
    """How close a score is to the best (1.0 = the best); works for negative objectives (ttft) too."""
    if score is None:
        return 0.0
    return score / best if best > 0 else best / score


@dataclass
class Run:
    """One replayed search: the feasible score of each trial (None: failed or over budget)."""

    proposer: str
    seed: int
    scores: list[float | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    points: list[int] = field(default_factory=list)  # each trial's index in the landscape's points
    stop: str = "trial budget reached"
    live_stop: int | None = None  # the trial after which the pipeline's stopping rule would have stopped
    seconds: float = 0.0
    fallbacks: int = 0  # steps an LLM or TPE proposer handed to its fallback
    replies: int = 0  # LLM replies asked for (accepted and refused)

    def as_dict(self) -> dict:
        return {"seed": self.seed, "points": self.points, "scores": self.scores, "stop": self.stop,
                "live_stop": self.live_stop, "seconds": round(self.seconds, 2), "fallbacks": self.fallbacks,
                "replies": self.replies}

    @classmethod
    def from_dict(cls, proposer: str, d: dict, land: Landscape) -> Run:
        """A run from a replay data file (names rebuilt from the landscape's points)."""
        return cls(proposer=proposer, seed=d["seed"], scores=list(d["scores"]), points=list(d["points"]),
                   names=[values_name(land.data["points"][i]["values"]) for i in d["points"]], stop=d["stop"],
                   live_stop=d["live_stop"], seconds=d.get("seconds", 0.0), fallbacks=d.get("fallbacks", 0),
                   replies=d.get("replies", 0))

    def best_after(self, k: int) -> float | None:
        s = [x for x in self.scores[:k] if x is not None]
        return max(s) if s else None

    def trials_to(self, target: float, best: float) -> int | None:
        for i, s in enumerate(self.scores, 1):
            if s is not None and ratio(s, best) >= target - 1e-12:
                return i
        return None


def replay(land: Landscape, proposer: Proposer, *, budget: int = 20, seed: int = 0, patience: int | None = None,
           max_trials: int | None = None) -> Run:
    """The live search (haqa.agent.search.Search) with the landscape's stored measurements in place of
    the device.

    It runs to `budget` trials (or until the proposer has nothing left); the deploy's stopping rule
    (max_trials, patience beyond the noise) is evaluated alongside and recorded, not applied."""
    from haqa.agent.search import Search, StopRule, observation

    rules = land.data["recipe"]["search"]
    watch = StopRule(max_trials=max_trials or int(rules.get("max_trials", 8)),
                     patience=patience or int(rules.get("patience", 4)))
    # Only the budget stops a replay: with `budget` trials at most, neither a count nor patience can reach it first.
    stop = StopRule(max_trials=budget, patience=budget, max_new=budget)
    run = Run(proposer=proposer.name, seed=seed)

    def measured(finished) -> None:
        run.scores.append(search.history[-1].score)
        run.names.append(finished.candidate.name)
        run.points.append(land.index(finished.candidate))

    search = Search(proposer=proposer, measure=lambda cand: land.trial(land.point(cand), cand),
                    observe=lambda cand, trial: observation(cand, trial, budget=land.budget,
                                                            objective=land.objective,
                                                            workload=land.workload,
                                                            synthetic=land.synthetic),
                    stop=stop, watch=watch, on_trial=measured)
    started = time.monotonic()
    run.stop = search.run()
    run.live_stop = search.watch_stopped_at
    run.seconds = time.monotonic() - started
    run.fallbacks = getattr(proposer, "fallbacks", 0)
    run.replies = getattr(proposer, "replies", 0)
    return run


def make_proposer(name: str, land: Landscape, space: SearchSpace, seed: int, backend=None) -> Proposer:
    """The live agent's proposers (haqa.agent.registry), made as a deploy makes them."""
    heuristic = HeuristicProposer(space, land.weight_bytes)
    if name in BASELINES:
        return baseline(name, space, heuristic, seed=seed)
    if name == "llm":
        from haqa.agent.llm import LLMProposer, PromptFacts

        if backend is None:
            raise ValueError("the llm proposer needs a backend")
        _seed_backend(backend, seed)
        facts = json.loads(json.dumps(land.data["prompt_facts"]))
        for q, pred in facts["predictions"].items():  # landscapes measured before the pipeline gave this fact
            facts["predictions"][q] = {"predicted_peak_mib": pred["predicted_peak_mib"],
                                       "weights_read_per_token_mib": pred.get("weights_read_per_token_mib",
                                                                              round(land.weight_bytes[q] / 2**20)),
                                       "roofline_decode_tps": pred.get("roofline_decode_tps")}
        return LLMProposer(space=space, backend=backend, facts=PromptFacts(**facts), fallback=heuristic)
    raise UserError(f"unknown proposer '{name}'; valid: {', '.join(PROPOSERS)}")


def _seed_backend(backend, seed: int) -> None:
    """The embedded model samples from a seeded RNG: one seed, one reproducible sequence of replies."""
    from haqa.agent.llm import EmbeddedBackend

    if isinstance(backend, EmbeddedBackend):
        backend.llm.set_seed(seed)


@contextlib.contextmanager
def _quiet():
    """The LLM proposer notes every refused reply; a replay of hundreds of searches keeps them off the terminal."""
    from haqa import ui

    before = ui.console.quiet
    ui.console.quiet = True
    try:
        yield
    finally:
        ui.console.quiet = before


@dataclass
class Summary:
    proposer: str
    runs: list[Run]
    best: float

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def to_reach(self, target: float = REACH) -> list[float]:
        return [float(t) if (t := r.trials_to(target, self.best)) is not None else math.inf for r in self.runs]

    @property
    def reached(self) -> int:
        return sum(math.isfinite(t) for t in self.to_reach())

    def median_to_reach(self) -> float:
        return median(self.to_reach())

    def iqr_to_reach(self) -> tuple[float, float]:
        xs = sorted(self.to_reach())
        return quantile(xs, 0.25), quantile(xs, 0.75)

    def ratios(self, k: int) -> list[float]:
        return [ratio(r.best_after(k), self.best) for r in self.runs]

    def live(self) -> tuple[float, float]:
        """Median trials and median best-found ratio where the pipeline's stopping rule would stop."""
        stops = [r.live_stop or len(r.scores) for r in self.runs]
        return median([float(s) for s in stops]), median([ratio(r.best_after(s), self.best)
                                                           for r, s in zip(self.runs, stops, strict=True)])


def median(xs: list[float]) -> float:
    """The median; +inf (not reached) sorts last, so a median that lands on it is 'not reached'."""
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return math.nan
    if n % 2:
        return s[n // 2]
    a, b = s[n // 2 - 1], s[n // 2]
    return math.inf if math.isinf(a) or math.isinf(b) else (a + b) / 2


def quantile(sorted_xs: list[float], q: float) -> float:
    """Nearest-rank quantile (works with +inf entries)."""
    if not sorted_xs:
        return math.nan
    i = max(0, math.ceil(q * len(sorted_xs)) - 1)
    return sorted_xs[i]


def code_version() -> str:
    """What a replayed search depends on besides the landscape: the proposers, the space, the objective
    and selection rules, the landscape's reading (landscape_file), this module, the search
    (haqa.agent.search: its stopping rule), and the Optuna and llama-cpp-python versions."""
    import hashlib
    import inspect
    from importlib import metadata

    from haqa.agent import llm, proposers, select, space, tpe
    from haqa.agent import search as search_module
    from haqa.benchmarks import landscape_file

    h = hashlib.sha256()
    for mod in (proposers, llm, tpe, space, obj, select, landscape_file):
        h.update(inspect.getsource(mod).encode())
    h.update(Path(__file__).read_bytes())
    h.update(inspect.getsource(search_module).encode())
    for dist in ("optuna", "llama_cpp_python"):
        try:
            h.update(metadata.version(dist).encode())
        except metadata.PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


class RunCache:
    """Replayed searches kept by content (landscape, proposer, seed, budget, code, LLM model) under
    haqa's cache: an interrupted `haqa bench search` (the LLM replays take hours on 2 cores) goes on
    where it stopped, and anything that changed is replayed again."""

    def __init__(self, root: Path | None = None):
        from haqa import paths

        self.root = root or paths.cache_home() / "replays"
        self.version = code_version()

    def key(self, land: Landscape, name: str, seed: int, budget: int, model: str | None) -> str:
        import hashlib

        blob = json.dumps([land.sha256, name, seed, budget, self.version, model if name == "llm" else None])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, key: str, name: str, land: Landscape) -> Run | None:
        f = self.root / f"{key}.json"
        try:
            return Run.from_dict(name, json.loads(f.read_text()), land)
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, run: Run) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        part = self.root / f"{key}.json.part"
        part.write_text(json.dumps(run.as_dict()))
        part.replace(self.root / f"{key}.json")


def run_all(land: Landscape, proposers: list[str], *, seeds: int = 20, llm_seeds: int | None = None,
            budget: int = 20, backend=None, progress=None, cache: RunCache | None = None) -> dict[str, Summary]:
    """Every proposer on one landscape: `seeds` seeds each (1 for the deterministic ones)."""
    best, _ = land.best()
    out: dict[str, Summary] = {}
    model = getattr(backend, "model", None)
    for name in proposers:
        n = 1 if name in DETERMINISTIC else (llm_seeds if name == "llm" and llm_seeds is not None else seeds)
        runs = []
        for seed in range(n):
            key = cache.key(land, name, seed, budget, model) if cache else None
            run = cache.get(key, name, land) if cache else None
            if run is None:
                space = land.space()
                proposer = make_proposer(name, land, space, seed, backend=backend)
                with _quiet():
                    run = replay(land, proposer, budget=budget, seed=seed)
                if cache:
                    cache.put(key, run)
            runs.append(run)
            if progress:
                progress(name, seed, run)
        out[name] = Summary(name, runs, best)
    return out
