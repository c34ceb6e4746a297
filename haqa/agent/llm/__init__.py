"""The LLM agent: its prompt (prompt.py), the backends it runs on (backends.py) and the proposer that
drives the HAQA loop with guardrails (proposer.py)."""

from haqa.agent.llm.backends import (
    Backend,
    EmbeddedBackend,
    OllamaBackend,
    OpenAIBackend,
    default_embedded_model,
    endpoint_backend,
    llm_timeout_s,
    make_backend,
)
from haqa.agent.llm.prompt import SYSTEM, PromptFacts, build_messages, reply_schema, varying_knobs
from haqa.agent.llm.proposer import MAX_BAD_REPLIES, LLMProposer

__all__ = ["MAX_BAD_REPLIES", "SYSTEM", "Backend", "EmbeddedBackend", "LLMProposer", "OllamaBackend",
           "OpenAIBackend", "PromptFacts", "build_messages", "default_embedded_model", "endpoint_backend",
           "llm_timeout_s", "make_backend", "reply_schema", "varying_knobs"]
