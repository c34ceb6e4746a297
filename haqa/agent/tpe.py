"""Optuna's TPE sampler behind haqa's Proposer interface: the baseline llama-optimus uses.

llama-optimus (github.com/BrunoArsioli/llama-optimus) tunes llama.cpp flags with
`optuna.samplers.TPESampler(multivariate=True)` in a study that maximises tok/s, and its objective
returns 0.0 when llama-bench fails. This proposer does the same over haqa's search space, through
optuna's ask/tell interface so that haqa's loop (the pipeline, or a replay) does the measuring:

- every knob of the space is one categorical parameter with the space's own values;
- a measured, feasible trial is told its objective score (higher is better);
- a trial that failed (oom, crash, timeout) or was over the quality budget is told -inf: below every
  feasible score, which for a tok/s objective ranks exactly like llama-optimus's 0.0 (TPE only
  uses the ranking of values) and stays below for a time-to-first-token objective, whose scores
  are negative;
- a point that haqa's guardrails refuse before anything runs (a quantized V cache without flash
  attention, a ubatch above the batch, a point the memory model prunes) is told FAIL: nothing was
  measured, and TPE leaves failed trials out of its model; TPE is asked again;
- a point measured before is not measured again: it is told the value it got the first time (the
  way Optuna's maintainers suggest skipping duplicates, optuna/optuna#2021) and TPE is asked again.
  After MAX_ASKS refused or repeated asks in a row, the step goes to a uniformly random untried
  point, and the rationale says so.

Trials in the history that this proposer did not suggest (a resumed search, a re-measurement after
drift) are added to the study as completed trials before the next ask.
"""

from __future__ import annotations

import math
import random
import warnings

from haqa.agent.proposers import Observation, Proposal, Proposer
from haqa.agent.space import KNOBS, Rejected, SearchSpace

MAX_ASKS = 200
INFEASIBLE = -math.inf


def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class TPEProposer(Proposer):
    """Tree-structured Parzen Estimator (Optuna), multivariate as llama-optimus configures it; the
    first `n_startup_trials` (Optuna's default 10) are random points."""

    name = "tpe"

    def __init__(self, space: SearchSpace, seed: int = 0, *, multivariate: bool = True, n_startup_trials: int = 10):
        super().__init__(space)
        optuna = _quiet_optuna()
        self._optuna = optuna
        self.seed = seed
        self.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=multivariate,
                                                  n_startup_trials=n_startup_trials)
        self.study = optuna.create_study(direction="maximize", sampler=self.sampler)
        self.knobs = [k for k in KNOBS if k in space.dims]
        self.distributions = {k: optuna.distributions.CategoricalDistribution(list(space.dims[k])) for k in self.knobs}
        self.rng = random.Random(seed)
        self._pending: dict[str, object] = {}  # candidate key -> the optuna trial asked for it
        self._values: dict[str, float] = {}  # candidate key -> the value told for it
        self.refused = 0  # asks refused by the guardrails (told FAIL)
        self.repeats = 0  # asks that named a measured point (told its value again)
        self.fallbacks = 0  # steps that went to a random untried point

    @staticmethod
    def value(obs: Observation) -> float:
        return obs.score if obs.ok and obs.within_budget and obs.score is not None else INFEASIBLE

    def _sync(self, history: list[Observation]) -> None:
        """Add observations that did not come through suggest()/observe() (resume, re-measurement)."""
        for o in history:
            if o.candidate.key in self._values:
                continue
            values = o.candidate.values()
            self.study.add_trial(self._optuna.trial.create_trial(
                params={k: values[k] for k in self.knobs}, distributions=self.distributions, value=self.value(o)))
            self._values[o.candidate.key] = self.value(o)

    def suggest(self, history):
        self._sync(history)
        done = {o.candidate.key for o in history}
        for _ in range(MAX_ASKS):
            trial = self.study.ask()
            values = {k: trial.suggest_categorical(k, list(self.space.dims[k])) for k in self.knobs}
            try:
                cand = self.space.make(values)
                self.space.check(cand)
            except Rejected:
                self.refused += 1
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                continue
            if cand.key in done:
                self.repeats += 1
                self.study.tell(trial, self._values.get(cand.key, INFEASIBLE))
                continue
            self._pending[cand.key] = trial
            return Proposal(cand, f"TPE (Optuna, seed {self.seed}) after {len(history)} measured trial(s)", self.name)
        left = [c for c in self.space.grid() if c.key not in done]
        if not left:
            return None
        self.fallbacks += 1
        cand = self.rng.choice(left)
        return Proposal(cand, f"TPE named only refused or measured points in {MAX_ASKS} asks: a random untried point",
                        self.name)

    def observe(self, obs: Observation) -> None:
        value = self.value(obs)
        trial = self._pending.pop(obs.candidate.key, None)
        if trial is None:  # measured without an ask of ours (a random fallback step, a re-measurement)
            values = obs.candidate.values()
            self.study.add_trial(self._optuna.trial.create_trial(
                params={k: values[k] for k in self.knobs}, distributions=self.distributions, value=value))
        else:
            self.study.tell(trial, value)
        self._values[obs.candidate.key] = value
