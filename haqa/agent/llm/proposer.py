"""The LLM proposer: the HAQA loop, with its guardrails.

A reply that does not parse, names a value outside the space, repeats a trial, or is refused by the
memory model is refused, and the reason goes back in the next prompt. After MAX_BAD_REPLIES refusals
in a row the heuristic takes the step, and the log says so. Nothing the LLM writes reaches a command:
haqa builds every argv from the validated knob values; the rationale is stored as text only. A refusal
reason (an endpoint's error text, which may echo the API key) and a rationale are redacted of secrets
(haqa/secrets.py) before they go into the next prompt, the log or the trial store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from haqa import ui
from haqa.agent.llm.backends import Backend
from haqa.agent.llm.prompt import PromptFacts, build_messages, reply_schema
from haqa.agent.proposers import HeuristicProposer, Observation, Proposal, Proposer
from haqa.agent.space import Rejected, SearchSpace
from haqa.secrets import redact

MAX_BAD_REPLIES = 3


@dataclass
class LLMProposer(Proposer):
    space: SearchSpace
    backend: Backend
    facts: PromptFacts
    fallback: HeuristicProposer
    refusals: list[str] = field(default_factory=list)
    bad_in_a_row: int = 0
    fallbacks: int = 0
    replies: int = 0
    failures_in_a_row: int = 0  # the backend raised (down, timed out), as opposed to a bad reply
    unavailable: str | None = None  # set once the backend failed MAX_BAD_REPLIES times in a row

    name = "llm"

    def __post_init__(self):
        Proposer.__init__(self, self.space)

    def parse(self, text: str, history: list[Observation]) -> Proposal:
        """Validate a reply; Rejected with the reason (which goes back into the next prompt)."""
        try:
            data = json.loads(text)
        except (ValueError, TypeError):
            raise Rejected(f"the reply was not JSON: {str(text)[:120]!r}") from None
        if not isinstance(data, dict) or not isinstance(data.get("candidate"), dict):
            raise Rejected("the reply lacks a 'candidate' object")
        cand = self.space.make(data["candidate"])  # Rejected when outside the space
        self.space.check(cand)  # constraints and the memory model
        if cand.key in {o.candidate.key for o in history}:
            raise Rejected(f"{cand.name} was already measured")
        rationale = redact(str(data.get("rationale", "")))[:300]
        return Proposal(cand, rationale, f"llm:{self.backend.name}")

    def suggest(self, history):
        if self.unavailable:  # an endpoint that is down or too slow is not asked again in this run
            return self._fallback(history, f"LLM unavailable: {self.unavailable}", "heuristic (llm unavailable)")
        while self.bad_in_a_row < MAX_BAD_REPLIES:
            messages = build_messages(self.space, self.facts, history, self.refusals)
            self.replies += 1
            try:
                text = self.backend.complete(messages, reply_schema(self.space),
                                             temperature=0.2 + 0.4 * self.bad_in_a_row)
            except Exception as e:
                reason = f"the {self.backend.name} backend failed: {type(e).__name__}: {redact(str(e))[:160]}"
                self.failures_in_a_row += 1
                if self.failures_in_a_row >= MAX_BAD_REPLIES:
                    self.unavailable = reason
                    ui.note(f"agent: the {self.backend.name} backend failed {MAX_BAD_REPLIES} times in a row; "
                            "the heuristic proposes for the rest of this run")
            else:
                self.failures_in_a_row = 0
                try:
                    proposal = self.parse(text, history)
                    self.bad_in_a_row = 0
                    return proposal
                except Rejected as e:
                    reason = redact(str(e))
            self.bad_in_a_row += 1
            self.refusals.append(reason)
            ui.note(f"agent: refused an LLM reply ({reason})")
        self.bad_in_a_row = 0
        if self.unavailable:
            return self._fallback(history, f"LLM unavailable: {self.unavailable}", "heuristic (llm unavailable)")
        ui.note(f"agent: {MAX_BAD_REPLIES} bad LLM replies in a row; the heuristic takes this step")
        return self._fallback(history, f"heuristic after {MAX_BAD_REPLIES} bad LLM replies", "heuristic (llm fallback)")

    def _fallback(self, history, why: str, label: str) -> Proposal | None:
        self.fallbacks += 1
        proposal = self.fallback.suggest(history)
        if proposal is None:
            return None
        return Proposal(proposal.candidate, f"[{why}] {proposal.rationale}", label)
