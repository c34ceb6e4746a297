"""Replay proposers against measured landscapes, at equal trial budgets.

A landscape (haqa.benchmarks.landscape) holds a measurement for every point of a reduced search
space. The replay runs the live search loop on that reduced space with a lookup in place of the
device: suggest(history) -> the stored measurement of that point -> an Observation built exactly as
the pipeline builds it (select.within_budget, objective.score and objective.noise) -> observe().
The proposers are the live agent's own classes (haqa.agent.proposers, haqa.agent.llm,
haqa.agent.tpe), constructed as haqa.pipeline constructs them, on the landscape's space (the memory
model's pruned points stay refused), so a proposer can never name a point the landscape lacks.

Metrics per proposer and landscape: the number of measured trials until one is within 95 % of the
best feasible stored point (feasible: measured, and within the quality budget), over seeds; and the
best-found ratio after 5, 10 and 20 trials.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from haqa.agent import objective as obj
from haqa.agent.proposers import GridProposer, HeuristicProposer, Observation, Proposer, RandomProposer
from haqa.agent.select import Trial, within_budget
from haqa.agent.space import Candidate, SearchSpace
from haqa.config.schema import Objective
from haqa.config.schema import Quality as QualityBudget
from haqa.errors import UserError
from haqa.measure.bench import BenchResult
from haqa.measure.quality import Quality

PROPOSERS = ["heuristic", "llm", "random", "grid", "tpe"]
DETERMINISTIC = {"heuristic", "grid"}  # seeds do not change them: replayed once
BUDGETS = (5, 10, 20)
REACH = 0.95


def observation(cand: Candidate, trial: Trial, *, budget: QualityBudget, objective: Objective, prompt_tokens: int,
                synthetic: bool) -> Observation:
    """What a proposer sees of a finished trial: the pipeline's rule (haqa/pipeline.py, `observation`
    inside `_deploy_on`), as a function the pipeline can call too."""
    if not trial.ok:
        return Observation(cand, False, cause=trial.cause)
    ok, _ = within_budget(trial, budget, synthetic=synthetic)
    return Observation(cand, True, decode=trial.bench.decode.mean, prefill=trial.bench.prefill.mean,
                       kld=trial.quality.kld_mean if trial.quality else None, within_budget=ok,
                       score=obj.score(trial.bench, objective, prompt_tokens) if ok else None,
                       noise=obj.noise(trial.bench, objective))


def ratio(score: float | None, best: float) -> float:
    """How close a score is to the best (1.0 = the best); works for negative objectives (ttft) too."""
    if score is None:
        return 0.0
    return score / best if best > 0 else best / score


class Landscape:
    """A landscape file, with its points as the pipeline's Trials and Observations."""

    def __init__(self, data: dict, path: Path | None = None):
        if data.get("kind") != "haqa-landscape":
            raise UserError(f"{path or 'data'} is not a haqa landscape file")
        self.data, self.path = data, path
        r = data["recipe"]
        self.budget = QualityBudget(**r["quality_budget"])
        self.objective = Objective(**r["objective"])
        self.prompt_tokens = int(r["workload"]["prompt_tokens"])
        self.synthetic = bool(data["synthetic"])
        self.label = data["label"]
        self.dims = data["space"]["dims"]
        self.ctx_size = int(data["space"]["ctx_size"])
        self.weight_bytes = {q: float(b) for q, b in data["weight_bytes"].items()}
        self._by_values = {_values_key(p["values"]): p for p in data["points"]}
        self._index = {_values_key(p["values"]): i for i, p in enumerate(data["points"])}
        import hashlib

        self.sha256 = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def index(self, cand: Candidate) -> int:
        """The point's position in the file's `points` list."""
        return self._index[_values_key(cand.values())]

    @classmethod
    def load(cls, path: Path) -> "Landscape":
        try:
            return cls(json.loads(Path(path).read_text()), Path(path))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the landscape {path}: {e}") from None

    @property
    def complete(self) -> bool:
        return bool(self.data.get("complete"))

    def has_feasible(self) -> bool:
        return any(o.score is not None for _, o in self.observations())

    def space(self) -> SearchSpace:
        """The reduced space; points the memory model pruned (or not measured yet) are refused."""
        def fits(cand: Candidate) -> tuple[bool, str]:
            p = self._by_values.get(_values_key(cand.values()))
            if p is None:
                return False, "not a point of this landscape"
            if p["status"] == "pruned":
                return False, p.get("error") or "pruned by the memory model"
            if p["status"] == "pending":
                return False, "not measured in this landscape"
            return True, "fits"

        return SearchSpace(dims={k: list(v) for k, v in self.dims.items()}, ctx_size=self.ctx_size, fits=fits)

    def point(self, cand: Candidate) -> dict:
        p = self._by_values.get(_values_key(cand.values()))
        if p is None or p["status"] not in ("ok", "failed"):
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
                           prompt_tokens=self.prompt_tokens, synthetic=self.synthetic)

    def observations(self) -> list[tuple[dict, Observation]]:
        space = self.space()
        out = []
        for p in self.data["points"]:
            if p["status"] in ("ok", "failed"):
                out.append((p, self.observe(space.make(p["values"]))))
        return out

    def best(self) -> tuple[float, dict]:
        feasible = [(o.score, p) for p, o in self.observations() if o.score is not None]
        if not feasible:
            raise UserError(f"the landscape {self.label} has no feasible point")
        return max(feasible, key=lambda sp: sp[0])


def values_name(values: dict) -> str:
    """A point's name as Candidate.name writes it."""
    from haqa.agent.space import KNOBS

    return " ".join(f"{k}={values[k]}" for k in KNOBS)


def _values_key(values: dict) -> str:
    from haqa.benchmarks.landscape import values_key

    return values_key(values)


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
    def from_dict(cls, proposer: str, d: dict, land: Landscape) -> "Run":
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
    """The live search loop (haqa.pipeline._deploy_on) with the landscape in place of the device.

    It runs to `budget` trials (or until the proposer has nothing left); the pipeline's stopping rule
    (max_trials, patience beyond the noise) is evaluated alongside and recorded, not applied."""
    search = land.data["recipe"]["search"]
    patience = patience or int(search.get("patience", 4))
    max_trials = max_trials or int(search.get("max_trials", 8))
    run = Run(proposer=proposer.name, seed=seed)
    from haqa.pipeline import staleness

    history: list[Observation] = []
    started = time.monotonic()
    while len(run.scores) < budget:
        proposal = proposer.suggest(history)
        if proposal is None:
            run.stop = "the proposer has nothing left to try"
            break
        cand = proposal.candidate
        o = land.observe(cand)
        history = [h for h in history if h.candidate.key != cand.key] + [o]
        proposer.observe(o)
        run.scores.append(o.score)
        run.names.append(cand.name)
        run.points.append(land.index(cand))
        # the pipeline's stopping rule: the trial budget, or patience without progress beyond the noise
        if run.live_stop is None and (len(run.scores) >= max_trials or staleness(history) >= patience):
            run.live_stop = len(run.scores)
    run.seconds = time.monotonic() - started
    run.fallbacks = getattr(proposer, "fallbacks", 0)
    run.replies = getattr(proposer, "replies", 0)
    return run


def make_proposer(name: str, land: Landscape, space: SearchSpace, seed: int, backend=None) -> Proposer:
    """The live agent's proposers, constructed as haqa.pipeline._make_proposer constructs them."""
    heuristic = HeuristicProposer(space, land.weight_bytes)
    if name == "heuristic":
        return heuristic
    if name == "grid":
        return GridProposer(space)
    if name == "random":
        return RandomProposer(space, seed=seed)
    if name == "tpe":
        from haqa.agent.tpe import TPEProposer

        return TPEProposer(space, seed=seed)
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
                                                           for r, s in zip(self.runs, stops)])


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
    and selection rules, this module, the pipeline's stopping rule, and the Optuna and llama-cpp-python
    versions."""
    import hashlib
    import inspect
    from importlib import metadata

    from haqa import pipeline
    from haqa.agent import llm, proposers, select, space, tpe

    h = hashlib.sha256()
    for mod in (proposers, llm, tpe, space, obj, select):
        h.update(inspect.getsource(mod).encode())
    h.update(Path(__file__).read_bytes())
    h.update(inspect.getsource(pipeline.staleness).encode())
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


# ---------------------------------------------------------------- tables for docs/BENCHMARKS.md

def _fmt_trials(x: float) -> str:
    return "not reached" if math.isinf(x) else f"{x:g}"


def _describe_point(values: dict, dims: dict) -> str:
    varying = [k for k in dims if len(dims[k]) > 1 and k != "quant"]
    return values["quant"] + " " + ", ".join(f"{k} {values[k]}" for k in varying)


def landscape_facts(land: Landscape) -> dict:
    """Counts, the best point, and how noisy the measurements were."""
    obs = land.observations()
    best, best_point = land.best()
    ok = [(p, o) for p, o in obs if o.ok]
    near = sum(1 for _, o in obs if o.score is not None and ratio(o.score, best) >= REACH - 1e-12)
    rse = sorted(p["bench"]["decode"]["rse"] for p, _ in ok)
    checks = [h for h in land.data["anchor"]["history"] if h.get("event") == "check"]
    repeats = []
    for r in land.data.get("repeats", []):
        first = land._by_values.get(_values_key(r["values"]))
        if r.get("bench") and first and first.get("bench"):
            repeats.append(r["bench"]["decode"]["mean"] / first["bench"]["decode"]["mean"])
    moved = [abs(p["bench"]["decode"]["mean"] / sup["decode_mean"] - 1) for p in land.data["points"]
             if p["status"] == "ok" for sup in p.get("superseded", [])]
    statuses = [p["status"] for p in land.data["points"]]
    return {
        "points": len(statuses), "measured": len(obs), "ok": len(ok), "failed": statuses.count("failed"),
        "pruned": statuses.count("pruned"), "feasible": sum(o.score is not None for _, o in obs),
        "over_budget": sum(1 for _, o in ok if not o.within_budget), "near_best": near,
        "best": best, "best_point": best_point, "median_decode_rse": statistics.median(rse) if rse else None,
        "anchor_checks": len(checks), "anchor_max_change": max((abs(h["change"]) for h in checks), default=None),
        "anchor_drifts": sum(1 for h in checks if not h.get("ok", True)),
        "repeat_ratios": repeats, "remeasured_moves": moved,
        "contended": sum(1 for p in land.data["points"] if p.get("contended")),
    }


def landscape_table(land: Landscape, summaries: dict[str, Summary], budget: int) -> str:
    d = land.data
    f = landscape_facts(land)
    hw = d["target"]["facts"]["hardware"]
    gpu = f", GPU {hw['gpu']['name'] or hw['gpu']['kind']}" if hw["gpu"]["kind"] != "none" else ""
    machine = f"{hw.get('cpu_model') or hw['arch']} ({hw['arch']}), {hw['cores']} cores, {hw['ram_gib']:g} GiB RAM{gpu}"
    model = d["model"]
    kind = "synthetic weights (speed only; the quality budget does not apply)" if land.synthetic else "real weights"
    dims = land.dims
    grid = " x ".join(f"{k} {{{', '.join(str(v) for v in vals)}}}" for k, vals in dims.items() if len(vals) > 1)
    fixed = ", ".join(f"{k} {vals[0]}" for k, vals in dims.items() if len(vals) == 1)
    bp = f["best_point"]
    bd = bp["bench"]["decode"]
    obj_text = obj.describe(land.objective, land.prompt_tokens)
    budget_text = "none (synthetic)" if land.synthetic else f"mean KLD <= {land.budget.max_kld}"
    lines = [
        f"### {land.label}: {model['source']} ({model['n_params'] / 1e6:.0f}M parameters, {model['n_layers']} layers, "
        f"{kind})",
        "",
        f"Measured by `{d['command']}` on {machine}, {d['created'][:10]}, llama.cpp {d['llama_cpp']['commit'][:8]}, "
        f"in {d['wall_s'] / 60:.0f} min; data: `{_rel(land.path)}`.",
        "",
        *([] if land.complete else [
            f"**Incomplete**: {f['measured']} of {f['points'] - f['pruned']} points measured when the run stopped. "
            f"The measuring order was shuffled, so they are a uniformly random subset; the replay runs on them "
            f"only (the others are refused like pruned points), and the best is the best of them. A proposer "
            f"refused the points it wants is handicapped (the heuristic most): no fair comparison.", ""]),
        f"- grid: {grid} (fixed: {fixed}); {f['points']} points: {f['ok']} measured, {f['failed']} failed, "
        f"{f['pruned']} pruned by the memory model; {f['over_budget']} over the quality budget ({budget_text})",
        f"- objective: {obj_text}; best feasible point: {_describe_point(bp['values'], dims)}: "
        f"{bd['mean']:.1f} ± {bd['stddev']:.1f} tok/s decode (n={bd['repetitions']}); "
        f"{f['near_best']} of {f['feasible']} feasible points are within 95 % of it",
    ]
    noise = []
    if f["median_decode_rse"] is not None:
        noise.append(f"median relative standard error of a point's decode mean {f['median_decode_rse'] * 100:.1f} %")
    if f["anchor_max_change"] is not None:
        noise.append(f"drift guard anchor: {f['anchor_checks']} checks, largest change {f['anchor_max_change'] * 100:.1f} %"
                     f" ({f['anchor_drifts']} over the 10 % tolerance, whose points were measured again)")
    if f["remeasured_moves"]:
        mv = sorted(f["remeasured_moves"])
        noise.append(f"points measured again after an anchor alarm moved by a median {median(mv) * 100:.1f} % "
                     f"(at most {mv[-1] * 100:.1f} %; {len(mv)} re-measurements recorded)")
    if f["repeat_ratios"]:
        noise.append("the best points measured again at the end came out at "
                     + ", ".join(f"{r * 100:.0f} %" for r in f["repeat_ratios"]) + " of their first reading")
    if noise:
        lines.append("- noise: " + "; ".join(noise))
    search = d["recipe"]["search"]
    lines += [
        "",
        f"| proposer | runs | reached 95 % | trials to 95 %: median (IQR) | to 90 %: median | best found / best, "
        f"after 5 | after 10 | after {budget} | recipe's stopping rule (max_trials {search['max_trials']}, patience "
        f"{search['patience']}): trials, best found / best |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summaries.items():
        lo, hi = s.iqr_to_reach()
        med = s.median_to_reach()
        iqr = "" if s.seeds == 1 else f" ({_fmt_trials(lo)}-{_fmt_trials(hi)})"
        runs = f"{s.seeds}" + (" (deterministic)" if name in DETERMINISTIC else "")
        cells = []
        for k in (5, 10, budget):
            r = s.ratios(k)
            cells.append(f"{median(r):.3f}" + ("" if s.seeds == 1 else f" (min {min(r):.3f})"))
        live_n, live_r = s.live()
        lines.append(f"| {name} | {runs} | {s.reached}/{s.seeds} | {_fmt_trials(med)}{iqr} "
                     f"| {_fmt_trials(median(s.to_reach(0.90)))} | {' | '.join(cells)} "
                     f"| {live_n:g}, {live_r:.3f} |")
    return "\n".join(lines)


def _rel(path: Path | None) -> str:
    if path is None:
        return "(in memory)"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def summary_table(results: list[tuple[Landscape, dict[str, Summary]]]) -> str:
    names = list(dict.fromkeys(n for _, s in results for n in s))
    lines = ["| proposer | " + " | ".join(land.label for land, _ in results) + " |",
             "|---|" + "---:|" * len(results)]
    for n in names:
        cells = []
        for _, sums in results:
            s = sums.get(n)
            cells.append("-" if s is None else f"{_fmt_trials(s.median_to_reach())} ({s.reached}/{s.seeds})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    baselines = ("random", "grid", "tpe")
    for agent in ("llm", "heuristic"):
        verdicts = []
        for land, sums in results:
            if agent not in sums:
                continue
            mine = sums[agent].median_to_reach()
            beaten = [n for n in baselines if n in sums and not mine < sums[n].median_to_reach()]
            why = []
            if mine > 8:
                why.append(f"median {_fmt_trials(mine)} trials" if math.isfinite(mine) else "95 % not reached")
            if beaten:
                why.append("not fewer than " + ", ".join(beaten))
            verdicts.append(f"{land.label} {'met' if not why else 'not met (' + '; '.join(why) + ')'}")
        if verdicts:
            who = ("the LLM agent (`--agent auto` without an endpoint: the embedded model)" if agent == "llm"
                   else "the heuristic (`--agent heuristic`, and the LLM agent's fallback)")
            lines += ["", f"Goal (issue 7), {who}: 95 % of the best in at most 8 trials (median), fewer than every "
                          f"baseline: " + "; ".join(verdicts) + "."]
    return "\n".join(lines)


INTRO = """Each landscape (haqa/benchmarks/landscape.py) is every point of a reduced but real search space,
measured with the pipeline's own functions (llama-quantize, llama-bench under the pipeline's
repetition policy, llama-perplexity KLD against the cached reference logits, once per quant and KV
type) in a shuffled order under the drift guard, on a quiet machine (a point during which other
processes used more than 10 % of the CPU is measured again). The replay (haqa/benchmarks/replay.py)
runs the live search loop on the landscape's reduced space with the stored measurement in place of
the device: `suggest(history)`, the stored trial turned into an Observation by the pipeline's rule
(quality budget, objective score, noise), `observe()`. The proposers are the agent's own classes,
constructed as the pipeline constructs them:

- **heuristic**: HeuristicProposer, with the bytes read per token of each quant predicted by the memory model;
- **llm**: LLMProposer with the embedded backend (SmolLM2-135M-Instruct in llama-cpp-python, replies
  constrained to the space's JSON schema, guardrails, and the heuristic after 3 refused replies in a
  row). `--agent auto`, the default, uses it when no OpenAI-compatible or Ollama endpoint is configured;
- **random**: uniformly random untried points; **grid**: every point in a fixed order (quant first);
- **tpe**: Optuna's TPESampler (multivariate, as llama-optimus configures it; Optuna's default 10
  random start-up trials) over every knob as a categorical parameter, through ask/tell
  (haqa/agent/tpe.py): a failed or over-budget trial is told -inf (ranked like llama-optimus's
  0 tok/s), a point the guardrails refuse is told FAIL and TPE is asked again, a point measured
  before is told its value again (not re-measured).

Every search runs the full trial budget; a trial counts whether it succeeded, failed or came out over
the quality budget. "Trials to 95 %" is the first trial whose feasible objective is at least 95 % of
the best feasible stored point; a search that never gets there counts as "not reached" (sorted last,
so a median that lands on one reads "not reached"); IQR by nearest rank; "to 90 %" likewise, for a
threshold outside the measurement noise. "Best found / best" is the
best feasible objective found so far over the best stored one (0 while nothing feasible was found).
The last column applies the recipe's own stopping rule (max_trials; patience: trials without
improvement beyond twice the measurement noise) to the same searches: where a live deploy would have
stopped, and with what. The best stored point is one measurement; the noise line under each
landscape says how far to trust it.
"""


def search_report(results: list[tuple[Landscape, dict[str, Summary]]], *, seeds: int, llm_seeds: int, budget: int,
                  quick: bool = False, backend=None, skipped: list[str] | None = None) -> str:
    parts = [INTRO]
    seeds_line = (f"Seeds: {seeds} per landscape for random and tpe; heuristic and grid are deterministic (a seed "
                  f"changes nothing they do), so each is replayed once")
    if any("llm" in s for _, s in results):
        model = getattr(backend, "model", "the embedded model")
        seeds_line += (f"; llm: {llm_seeds} seeds only (its sampling is seeded; each reply of {model} takes "
                       f"seconds on this machine's cores, so 20 seeds x {budget} trials x every landscape would take hours)")
    parts.append(seeds_line + ".")
    if quick:
        parts.append("**Quick mode**: 3 seeds and no LLM; this checks the harness, not the figures.")
    if skipped:
        parts.append(f"Not replayed: {', '.join(skipped)}.")
    parts += ["", "Median trials to reach 95 % of the best (searches that reached it / searches):", "",
              summary_table(results)]
    for land, sums in results:
        parts += ["", landscape_table(land, sums, budget)]
        if "llm" in sums:
            runs = sums["llm"].runs
            steps = sum(len(r.scores) for r in runs)
            fb = sum(r.fallbacks for r in runs)
            replies = sum(r.replies for r in runs)
            parts.append(f"\nllm: {replies} replies asked for over {steps} steps; {fb} steps ({fb / max(steps, 1):.0%}) "
                         f"went to the heuristic after {3} refused replies in a row.")
        if "tpe" in sums:
            fb = sum(r.fallbacks for r in sums["tpe"].runs)
            if fb:
                parts.append(f"\ntpe: {fb} steps went to a random untried point after TPE named only refused or "
                             f"measured points in 200 asks.")
    return "\n".join(parts)
