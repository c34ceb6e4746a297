"""The proposers haqa knows, by name, and how each is made: `haqa deploy --agent`, the deploy itself,
`haqa bench search --proposer` and the replay all take their names and their proposers from here. The
LLM backends (openai, ollama, embedded) are made by haqa/agent/llm/backends.py; this module names them."""

from __future__ import annotations

from haqa import ui
from haqa.agent.proposers import GridProposer, HeuristicProposer, Proposer, RandomProposer
from haqa.agent.space import SearchSpace
from haqa.errors import UserError

LLM_BACKENDS = ("openai", "ollama", "embedded")
BASELINES = ("heuristic", "random", "grid", "tpe")  # proposers that need no LLM
DEPLOY_BASELINES = ("heuristic", "random", "grid")
AGENTS = ("auto", "llm", *LLM_BACKENDS, *DEPLOY_BASELINES)  # `haqa deploy --agent`
BENCH_PROPOSERS = ("heuristic", "llm", "random", "grid", "tpe")  # `haqa bench search --proposer`
DETERMINISTIC = frozenset({"heuristic", "grid"})  # seeds do not change them


def baseline(name: str, space: SearchSpace, heuristic: HeuristicProposer, *, seed: int = 0) -> Proposer:
    """A proposer that needs no LLM, by name."""
    if name == "heuristic":
        return heuristic
    if name == "random":
        return RandomProposer(space, seed=seed)
    if name == "grid":
        return GridProposer(space)
    if name == "tpe":
        from haqa.agent.tpe import TPEProposer

        return TPEProposer(space, seed=seed)
    raise UserError(f"unknown proposer '{name}'; valid: {', '.join(BASELINES)}")


def describe_baseline(name: str, seed: int) -> str:
    """How the lock and the console name a proposer that needs no LLM."""
    return f"{name} (seed {seed})" if name not in DETERMINISTIC else name


def deploy_proposer(agent: str, space: SearchSpace, heuristic: HeuristicProposer, *, seed: int, threads: int,
                    facts) -> tuple[Proposer, str]:
    """The proposer `haqa deploy --agent AGENT` searches with, and how the lock names it. `facts()` gives
    the LLM proposer's PromptFacts (only computed when an LLM proposes)."""
    if agent in DEPLOY_BASELINES:
        return baseline(agent, space, heuristic, seed=seed), describe_baseline(agent, seed)
    if agent not in AGENTS:
        raise UserError(f"unknown agent '{agent}'; valid: {', '.join(AGENTS)}")
    from haqa.agent.llm import LLMProposer, endpoint_backend, make_backend

    if agent == "auto":
        backend = endpoint_backend()
        if backend is None:
            ui.note("agent: no LLM endpoint answers (OPENAI_BASE_URL, OLLAMA_HOST): the model-based heuristic "
                    "proposes. `--agent embedded` asks the offline SmolLM2-135M instead, which needed more trials "
                    "in the replays of docs/BENCHMARKS.md")
            return heuristic, "heuristic (auto: no LLM endpoint)"
    else:
        backend = make_backend("auto" if agent == "llm" else agent, threads=threads)
    ui.note(f"agent: llm via {backend.name} ({backend.model})")
    proposer = LLMProposer(space=space, backend=backend, facts=facts(), fallback=heuristic)
    return proposer, f"llm:{backend.name} ({backend.model})"
