"""The context a deployment gets, decided once the configuration is chosen: the recipe's min_context
(the default), the number it asks for, or with `context = "max"` the largest context the memory gate
lets the chosen quant type and KV-cache type have (host RAM less the headroom, a discrete GPU's memory
less the driver's share), up to the model's training context. Contexts are multiples of STEP tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from haqa import ui
from haqa.agent.space import Candidate
from haqa.config.schema import Workload
from haqa.errors import ToolFailed, UserError
from haqa.measure.bench import SpeedPolicy, run_bench
from haqa.runtime import RuntimeConfig

STEP = 256
# One figure at the chosen context's depth, from one llama-bench invocation: it fills the KV cache to the
# depth once and keeps that state between its repetitions, where a top-up (a second invocation) would fill it
# again (the most costly part: minutes for a long context on a small device). It decides nothing.
DEPTH_POLICY = SpeedPolicy(repetitions=3, rse_target=1.0, max_repetitions=3)


@dataclass
class ContextChoice:
    tokens: int
    why: str
    predicted_bytes: float | None = None  # host bytes the memory model predicts at this context
    next_bytes: float | None = None  # ... and one STEP above it, where that did not fit
    depth_check: dict | None = None  # decode measured at this context's depth (above the search's context)

    def as_dict(self) -> dict:
        out = {"tokens": self.tokens, "why": self.why, "predicted_host_bytes": self.predicted_bytes,
               "next_step_predicted_host_bytes": self.next_bytes,
               "basis": "predicted (haqa memory model) within the target's memory budget"}
        if self.depth_check is not None:
            out["depth_check"] = self.depth_check
        return out


def _with_ctx(cand: Candidate, tokens: int) -> Candidate:
    return Candidate(cand.quant, dataclasses.replace(cand.config, ctx_size=tokens))


def choose_context(cand: Candidate, workload: Workload, gate, *, train_context: int | None) -> ContextChoice:
    """The context for `cand` (gate(cand) -> (ok, why), gate.need(cand).host: haqa/model/budget.py)."""
    asked = workload.context
    if asked is None:
        return ContextChoice(workload.min_context, "the recipe's min_context")
    if asked != "max":
        ok, why = gate(_with_ctx(cand, asked))
        if not ok:
            raise UserError(f"[workload] context = {asked} does not fit with {cand.quant}: {why}",
                            hint='lower [workload].context, use context = "max" for the largest that fits, or '
                                 "add a smaller quant type or KV-cache type to the recipe")
        return ContextChoice(asked, f"the recipe asks for {asked}", gate.need(_with_ctx(cand, asked)).host)
    floor = workload.min_context
    ceiling = max(floor, (train_context or floor) // STEP * STEP) if train_context else None
    if ceiling is not None and gate(_with_ctx(cand, ceiling))[0]:
        return ContextChoice(ceiling, f"the model's training context ({train_context}) fits",
                             gate.need(_with_ctx(cand, ceiling)).host)
    lo, hi = floor, ceiling or _first_too_large(cand, gate, floor)
    while hi - lo > STEP:  # lo fits (the search space's own context), hi does not
        mid = (lo + hi) // 2 // STEP * STEP
        lo, hi = (mid, hi) if gate(_with_ctx(cand, mid))[0] else (lo, mid)
    why_not = gate(_with_ctx(cand, hi))[1]
    return ContextChoice(lo, f"the largest context that fits; {hi} does not: {why_not}",
                         gate.need(_with_ctx(cand, lo)).host, gate.need(_with_ctx(cand, hi)).host)


def _first_too_large(cand: Candidate, gate, floor: int) -> int:
    """Without a training context: doubling from the floor to the first context that does not fit."""
    tokens = floor
    while gate(_with_ctx(cand, tokens))[0]:
        tokens *= 2
        if tokens > 2**24:
            return tokens
    return tokens


@dataclass
class ContextDecider:
    """deployed(quant, config) -> the config with the context the deployment gets; each decision once."""

    workload: Workload
    gate: object  # haqa/model/budget.py MemoryGate
    train_context: int | None
    _choices: dict = field(default_factory=dict)

    def choice(self, quant: str, config: RuntimeConfig) -> ContextChoice:
        key = (quant, dataclasses.replace(config, ctx_size=self.workload.min_context))
        if key not in self._choices:
            self._choices[key] = choose_context(Candidate(*key), self.workload, self.gate,
                                                train_context=self.train_context)
        return self._choices[key]

    def deployed(self, quant: str, config: RuntimeConfig) -> RuntimeConfig:
        return dataclasses.replace(config, ctx_size=self.choice(quant, config).tokens)

    def apply(self, winner, *, runner, toolchain, model) -> object:
        """The winner (a Trial) with the context it is deployed with. Above the search's own context, its
        decode speed at that depth is measured once (llama-bench fills the cache to the context less the
        generated tokens); model() is the winner's GGUF on the device."""
        choice, w = self.choice(winner.quant, winner.config), self.workload
        config = self.deployed(winner.quant, winner.config)
        ui.note(f"context: {choice.tokens} tokens ({choice.why})")
        if choice.tokens > w.min_context and choice.depth_check is None:
            depth = choice.tokens - w.gen_tokens
            ui.step(f"measuring decode at depth {depth} (the chosen context less the generated tokens)")
            try:
                bench = run_bench(runner, toolchain, model(), config, prompt_tokens=w.prompt_tokens,
                                  gen_tokens=w.gen_tokens, depth=depth, policy=DEPTH_POLICY,
                                  log_path=runner.local_dir("logs") / "depth-check.log")
                choice.depth_check = {"depth": depth, "decode": bench.decode.as_dict(),
                                      "at_search_depth_tps": round(winner.bench.decode.mean, 3)}
                ui.note(f"decode at depth {depth}: {bench.decode.mean:.1f} tok/s (at depth {w.prompt_tokens}: "
                        f"{winner.bench.decode.mean:.1f})")
            except ToolFailed as e:
                choice.depth_check = {"depth": depth, "error": str(e).splitlines()[0]}
                ui.note(f"decode at depth {depth} could not be measured: {choice.depth_check['error']}")
        return dataclasses.replace(winner, config=config)
