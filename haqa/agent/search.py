"""The search: resume from the trial store, the propose-measure-observe loop, drift re-runs, the stop rule
and the one rule for what a proposer sees of a trial.

It knows nothing of llama.cpp or devices: a deploy drives it with a `measure` that runs the candidate on
the device (haqa/pipeline.py), the replay with one that reads a landscape's stored measurements
(haqa/benchmarks/replay.py), and the fast tests with plain functions (tests/agent/test_search.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from haqa import ui
from haqa.agent import objective as obj
from haqa.agent.proposers import Observation, Proposer
from haqa.agent.select import Trial, within_budget
from haqa.agent.space import Candidate, SearchSpace
from haqa.config.schema import Objective, Workload
from haqa.config.schema import Quality as QualityBudget
from haqa.measure.bench import BenchResult
from haqa.measure.quality import Quality

# Failures that say nothing about the candidate: recorded, then measured again by the next run.
ENVIRONMENT_CAUSES = ("connection", "disk")
MAX_ATTEMPTS_UNDER_DRIFT = 2  # a third measurement under drift is kept: the side-by-side re-measures anyway


def observation(cand: Candidate, trial: Trial, *, budget: QualityBudget, objective: Objective, workload: Workload,
                synthetic: bool) -> Observation:
    """What a proposer sees of a finished trial: speed, quality, whether it is within the quality budget,
    and the workload's limits, and its objective score (only when within them) with the score's noise."""
    if not trial.ok:
        return Observation(cand, False, cause=trial.cause)
    ok, _ = within_budget(trial, budget, synthetic=synthetic, limits=workload)
    return Observation(cand, True, decode=trial.bench.decode.mean, prefill=trial.bench.prefill.mean,
                       kld=trial.quality.kld_mean if trial.quality else None, within_budget=ok,
                       score=obj.score(trial.bench, objective, workload) if ok else None,
                       noise=obj.noise(trial.bench, objective, workload))


def staleness(history: Iterable[Observation]) -> int:
    """Trials since the last improvement beyond noise (a score better than the best so far by more than
    twice its relative standard error, and at least 1 %), over the history in measurement order."""
    best, stale = None, 0
    for o in history:
        if o.score is not None and (best is None or o.score > best * (1 + max(2 * o.noise, 0.01))):
            best, stale = o.score, 0
        else:
            stale += 1
            if o.score is not None and best is not None:
                best = max(best, o.score)
    return stale


@dataclass(frozen=True)
class StopRule:
    """When a search stops: `max_trials` valid trials, `patience` trials without progress beyond the noise,
    `max_seconds` of wall clock, or `max_new` trials measured by this run (a replay's budget). Trials
    queued to be measured again are measured first."""

    max_trials: int
    patience: int
    max_seconds: float | None = None
    max_new: int | None = None

    def reason(self, *, trials: int, history: list[Observation], elapsed: float, queued: bool = False,
               new_trials: int = 0) -> str | None:
        if self.max_new is not None and new_trials >= self.max_new:
            return "trial budget reached"
        if trials >= self.max_trials and not queued:
            return "trial budget reached"
        if self.max_seconds is not None and elapsed > self.max_seconds:
            return "wall-clock budget reached"
        stale = staleness(history)  # from the valid history alone, so a resumed search agrees with the first
        if stale >= self.patience and not queued:
            return f"converged: no improvement beyond noise in {stale} trials"
        return None


@dataclass(frozen=True)
class Finished:
    """A trial that counts: the candidate, its measurement, and who proposed it why."""

    candidate: Candidate
    trial: Trial
    proposer: str
    rationale: str


def trial_from_record(rec, cand: Candidate) -> Trial:
    """A trial as the store kept it (haqa/agent/store.py), back as the Trial it was."""
    if rec.status != "ok":
        return Trial(cand.quant, cand.config, None, error=rec.error, cause=rec.cause, model_sha256=rec.model_sha256)
    return Trial(cand.quant, cand.config, BenchResult.from_dict(rec.bench),
                 Quality.from_dict(rec.quality) if rec.quality else None, rec.model_sha256, memory=rec.memory)


def _no_environment_cause(error: BaseException) -> str | None:
    return None


@dataclass
class Search:
    """One search over a space. `measure(candidate) -> Trial` measures (a failed measurement is a Trial with
    a cause, never an exception); `observe(candidate, trial)` is the `observation` rule bound to a recipe;
    `key(candidate)` says which stored trials are still valid. With a `store`, every trial is recorded
    when it ends and `resume` reads the valid ones back; with a `drift` guard, the trials measured while
    its anchor moved are measured again; with a `gate`, out-of-memory trials teach the memory gate.
    `environment_cause(error)` names errors of the device rather than the candidate (a lost connection,
    a full disk): such a trial is recorded failed with that cause, and the error goes on up."""

    proposer: Proposer
    measure: Callable[[Candidate], Trial]
    observe: Callable[[Candidate, Trial], Observation]
    stop: StopRule
    key: Callable[[Candidate], str] = lambda cand: cand.key
    store: object | None = None
    toolchain: str = ""
    gate: object | None = None
    drift: object | None = None
    environment_cause: Callable[[BaseException], str | None] = _no_environment_cause
    on_trial: Callable[[Finished], None] | None = None
    watch: StopRule | None = None  # a second rule, evaluated alongside and recorded, not applied
    clock: Callable[[], float] = time.monotonic

    trials: dict[str, Finished] = field(default_factory=dict)
    history: list[Observation] = field(default_factory=list)
    new_trials: int = 0
    reruns: int = 0
    stop_reason: str = ""
    watch_stopped_at: int | None = None
    _queue: list[tuple[Candidate, str, str]] = field(default_factory=list)
    _fresh: list[tuple[int | None, Candidate, str, str]] = field(default_factory=list)  # since the last check
    _attempts: dict[str, int] = field(default_factory=dict)

    def resume(self, space: SearchSpace) -> int:
        """Every valid stored trial of a candidate in `space` becomes history; a trial that failed for a
        reason outside the candidate is discarded and measured again when proposed. Returns how many."""
        for rec in self.store.all() if self.store is not None else []:
            if rec.status == "discarded":
                continue
            if rec.status == "failed" and rec.cause in ENVIRONMENT_CAUSES:
                self.store.discard(rec.id, f"{rec.cause}: failed in an earlier run for a reason outside the "
                                           "candidate; measured again when proposed")
                continue
            try:
                cand = space.make(rec.candidate)
            except Exception:
                continue
            key = self.key(cand)
            if rec.key != key or key in self.trials:
                continue
            try:
                trial = trial_from_record(rec, cand)
            except (KeyError, TypeError, ValueError, AttributeError):
                ui.note(f"trial store: row {rec.id} ({cand.quant}) is damaged; the candidate is measured again "
                        "if proposed")
                continue
            self.trials[key] = Finished(cand, trial, rec.proposer, rec.rationale or "")
            self.history.append(self.observe(cand, trial))
            if trial.cause == "oom" and self.gate is not None:
                self.gate.learn_out_of_memory(cand, "in an earlier run")
        return len(self.trials)

    def run(self) -> str:
        """Propose, measure and observe until the stop rule says so; returns why it stopped."""
        started = self.clock()
        while True:
            reason = self.stop.reason(trials=len(self.trials), history=self.history,
                                      elapsed=self.clock() - started, queued=bool(self._queue),
                                      new_trials=self.new_trials)
            if reason:
                break
            if self._queue:
                cand, who, why = self._queue.pop(0)
            else:
                proposal = self.proposer.suggest(self.history)
                if proposal is None:
                    reason = "the proposer has nothing left to try"
                    break
                cand, who, why = proposal.candidate, proposal.proposer, proposal.rationale
            self._step(cand, who, why)
        self.stop_reason = reason
        return reason

    def _step(self, cand: Candidate, who: str, why: str) -> None:
        key = self.key(cand)
        if self.drift is not None and not self.drift.ready:
            self.drift.start()
        trial = self._measure(cand, key, who, why)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        row = self._record(key, cand, trial, who, why)
        finished = Finished(cand, trial, who, why)
        self.trials[key] = finished
        self.history = [o for o in self.history if o.candidate.key != cand.key] + [self.observe(cand, trial)]
        self.proposer.observe(self.history[-1])
        self.new_trials += 1
        if trial.cause == "oom" and self.gate is not None:
            self.gate.learn_out_of_memory(cand, "just now")
        if self.on_trial is not None:
            self.on_trial(finished)
        if self.watch is not None and self.watch_stopped_at is None and self.watch.reason(
                trials=self.new_trials, history=self.history, elapsed=0.0):
            self.watch_stopped_at = self.new_trials
        if trial.ok:
            self._fresh.append((row, cand, who, why))
        if self.drift is not None and len(self._fresh) >= self.drift.every:
            self._check_drift()

    def _measure(self, cand: Candidate, key: str, who: str, why: str) -> Trial:
        try:
            return self.measure(cand)
        except Exception as e:
            cause = self.environment_cause(e)
            if cause is not None and self.store is not None:
                # Not the candidate's fault: recorded (never lost), and measured again by the next run.
                self.store.add(key=key, candidate=cand.values(), quant=cand.quant, model_sha256=None,
                               toolchain=self.toolchain, status="failed", cause=cause, error=str(e)[-2000:],
                               proposer=who, rationale=why)
                ui.note(f"{cand.quant}: failed ({cause}); recorded in {self.store.path}; the next run measures "
                        "it again")
            raise

    def _record(self, key: str, cand: Candidate, trial: Trial, who: str, why: str) -> int | None:
        if self.store is None:
            return None
        return self.store.add(key=key, candidate=cand.values(), quant=cand.quant, model_sha256=trial.model_sha256,
                              toolchain=self.toolchain, status="ok" if trial.ok else "failed", cause=trial.cause,
                              error=trial.error, bench=trial.bench.as_dict() if trial.ok else None,
                              quality=trial.quality.as_dict() if trial.quality else None, memory=trial.memory,
                              proposer=who, rationale=why)

    def _check_drift(self) -> None:
        """The anchor is measured again; if it moved, the trials since the last check are measured again
        (each at most MAX_ATTEMPTS_UNDER_DRIFT times: a third measurement is kept rather than loop)."""
        fresh, self._fresh = self._fresh, []
        if self.drift.check():
            return
        again = 0
        for row, cand, who, why in fresh:
            key = self.key(cand)
            if self._attempts.get(key, 0) > MAX_ATTEMPTS_UNDER_DRIFT:
                continue
            if self.store is not None and row is not None:
                self.store.discard(row, "drift: the anchor moved while it was measured")
            self._queue.append((cand, who, why))
            self.trials.pop(key, None)
            self.history = [h for h in self.history if h.candidate.key != cand.key]
            self.reruns += 1
            again += 1
        ui.note(f"drift guard: the anchor moved; {again} of {len(fresh)} trial(s) will be measured again")

    def all_trials(self) -> list[Trial]:
        return [f.trial for f in self.trials.values()]
