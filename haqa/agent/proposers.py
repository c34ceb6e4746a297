"""Proposers behind one interface: `suggest(history)` gives the next candidate with a rationale;
`observe(observation)` tells it what was measured. heuristic (model-based), random and grid here;
the LLM proposer is in haqa/agent/llm/.
"""

from __future__ import annotations

import abc
import itertools
import random
from dataclasses import dataclass

from haqa.agent.space import DEFAULT_QUANT, Candidate, SearchSpace


@dataclass(frozen=True)
class Observation:
    """What the proposers see of a finished trial."""

    candidate: Candidate
    ok: bool
    decode: float | None = None
    prefill: float | None = None
    kld: float | None = None
    within_budget: bool = False
    score: float | None = None  # the objective (higher is better), when ok and within budget
    noise: float = 0.0  # relative standard error of the score's main measurement
    cause: str | None = None  # why it failed


@dataclass(frozen=True)
class Proposal:
    candidate: Candidate
    rationale: str
    proposer: str


class Proposer(abc.ABC):
    name: str

    def __init__(self, space: SearchSpace):
        self.space = space

    @abc.abstractmethod
    def suggest(self, history: list[Observation]) -> Proposal | None:
        """The next candidate to measure, or None when this proposer has nothing left to try."""

    def observe(self, obs: Observation) -> None:  # noqa: B027 - a default: most proposers learn nothing from a result
        pass

    def _untried(self, history: list[Observation]):
        done = {o.candidate.key for o in history}
        return lambda c: c.key not in done


class GridProposer(Proposer):
    """Every point in a fixed order (quant first): the exhaustive baseline."""

    name = "grid"

    def suggest(self, history):
        untried = self._untried(history)
        for cand in self.space.grid():
            if untried(cand):
                return Proposal(cand, "next point of the grid", self.name)
        return None


class RandomProposer(Proposer):
    """Uniformly random untried points: the baseline every search must beat."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__(space)
        self.rng = random.Random(seed)
        self._points: list[Candidate] | None = None

    def suggest(self, history):
        if self._points is None:
            self._points = list(self.space.grid())
        untried = self._untried(history)
        left = [c for c in self._points if untried(c)]
        if not left:
            return None
        return Proposal(self.rng.choice(left), "uniformly random untried point", self.name)


# The order in which the heuristic tunes runtime knobs once it has a quant: the ones that move
# decode speed most on CPUs first (thread count, flash attention, repacking), then batch shapes.
TUNING_ORDER = ["threads", "flash_attn", "repack", "kv_type", "ubatch_size", "threads_batch", "poll", "load_mode",
                "batch_size", "n_gpu_layers"]


class HeuristicProposer(Proposer):
    """Model-based, no LLM.

    1. Quant types at llama.cpp's defaults, fastest predicted first (the roofline: fewer bytes read
       per token decode faster). A type is skipped once a higher-precision type was over the quality
       budget (quality falls with bits), or when its roofline bound, scaled by the efficiency seen so
       far, cannot beat the best measured score.
    2. Local search, one knob at a time in TUNING_ORDER, around the best feasible candidate and around
       the best of the default type (Q4_K_M) in turn; when every one-knob neighbour of those is measured,
       around the next best feasible candidate, and so on.
    """

    name = "heuristic"

    def __init__(self, space: SearchSpace, weight_bytes: dict[str, float]):
        super().__init__(space)
        self.weight_bytes = weight_bytes  # quant -> predicted bytes read per token

    def _quant_order(self) -> list[str]:
        return sorted(self.space.dims["quant"], key=lambda q: self.weight_bytes.get(q, float("inf")))

    def suggest(self, history):
        untried = self._untried(history)
        ok = [o for o in history if o.ok]
        feasible = [o for o in ok if o.within_budget and o.score is not None]
        best = max(feasible, key=lambda o: o.score) if feasible else None
        over_budget_bytes = [self.weight_bytes.get(o.candidate.quant, 0) for o in ok if not o.within_budget
                             and o.candidate.config.cache_type_k == "f16"]
        # efficiency: measured decode / (1 / bytes) -> a per-byte constant for this device
        eff = [o.decode * self.weight_bytes[o.candidate.quant] for o in ok
               if o.decode and o.candidate.quant in self.weight_bytes]
        k = max(eff) if eff else None
        defaults = self.space.default_values()
        for quant in self._quant_order():
            qbytes = self.weight_bytes.get(quant, float("inf"))
            if over_budget_bytes and qbytes <= max(over_budget_bytes):
                continue  # a type at least as precise was already over the quality budget
            if best is not None and k is not None and best.candidate.quant != quant and k / qbytes < best.decode * 0.95:
                continue  # cannot beat the best even at the best efficiency seen
            try:
                cand = self.space.make({**defaults, "quant": quant})
            except Exception:
                continue
            if self.space.valid(cand) and untried(cand):
                why = f"measure {quant} at llama.cpp defaults ({qbytes / 2**20:.0f} MiB read per token, predicted)"
                if best:
                    why += f"; best so far {best.candidate.quant} at {best.decode:.1f} tok/s decode"
                return Proposal(cand, why, self.name)
        if best is None:
            for cand in self.space.grid():
                if untried(cand):
                    return Proposal(cand, "no feasible candidate yet: trying the next grid point", self.name)
            return None
        # One knob at a time around the best and around the best of the default type (a flag that helps
        # every type is then also found with the type users trust), knob by knob in turn; once all their
        # one-knob neighbours are measured, around the next best, and so on (a plateau of near-equal points
        # is searched instead of stopping with trials left).
        ranked = sorted(feasible, key=lambda o: o.score, reverse=True)
        anchors = ranked[:1]
        if ranked[0].candidate.quant != DEFAULT_QUANT:
            anchors += [o for o in ranked if o.candidate.quant == DEFAULT_QUANT][:1]
        for knob in TUNING_ORDER:
            for value, around in itertools.product(self.space.dims[knob], anchors):
                cand = self._one_knob(around, knob, value, untried)
                if cand:
                    where = ("the best so far" if around is ranked[0]
                             else f"the best of the default type {DEFAULT_QUANT}")
                    return Proposal(cand, f"from {where} ({around.candidate.quant}, {around.decode:.1f} tok/s), "
                                          f"try {knob}={value}", self.name)
        for around in (o for o in ranked if o not in anchors):
            for knob in TUNING_ORDER:
                for value in self.space.dims[knob]:
                    cand = self._one_knob(around, knob, value, untried)
                    if cand:
                        return Proposal(cand, f"from number {ranked.index(around) + 1} of the measured candidates "
                                              f"({around.candidate.quant}, {around.decode:.1f} tok/s; the better "
                                              f"ones' neighbours are all measured), try {knob}={value}", self.name)
        return None

    def _one_knob(self, around: Observation, knob: str, value, untried) -> Candidate | None:
        """`around` with `knob` set to `value`, when that is a different, valid and untried candidate."""
        base = around.candidate.values()
        if value == base[knob]:
            return None
        try:
            cand = self.space.make({**base, knob: value})
        except Exception:
            return None
        return cand if self.space.valid(cand) and untried(cand) else None
