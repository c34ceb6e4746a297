"""The context decision (haqa/agent/context.py) with the real memory gate on catalog targets and model
shapes of real dimensions (an 8B llama: 32 layers, 8 KV heads of 128): milliseconds, no llama.cpp."""

from __future__ import annotations

import dataclasses

import pytest

from haqa.agent.context import STEP, ContextDecider, choose_context
from haqa.agent.space import Candidate
from haqa.config import load_target
from haqa.config.schema import Workload
from haqa.errors import UserError
from haqa.model import memory
from haqa.model.budget import MemoryGate, host_budget_bytes
from haqa.runtime import RuntimeConfig


def _shape(weights_gib: float) -> memory.ModelShape:
    tensor = int(weights_gib * 2**30)
    return memory.ModelShape(architecture="llama", n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=8,
                             head_dim_k=128, head_dim_v=128, n_vocab=32000, tensor_bytes=tensor,
                             token_embd_bytes=tensor // 50, tied_embeddings=False, layer_bytes=tensor * 9 // 10)


WORKLOAD = Workload(min_context=2048, prompt_tokens=512, gen_tokens=128)
CAND = Candidate("Q4_0", RuntimeConfig(threads=4, ctx_size=2048))


def _gate(target: str = "rpi5-8gb", weights_gib: float = 4.0) -> MemoryGate:
    return MemoryGate(load_target(target), lambda q: _shape(weights_gib))


def test_without_context_the_deployment_gets_min_context():
    assert choose_context(CAND, WORKLOAD, _gate(), train_context=131072).tokens == 2048


def test_max_is_the_largest_step_that_fits_and_the_next_does_not():
    gate = _gate()
    choice = choose_context(CAND, WORKLOAD.model_copy(update={"context": "max"}), gate, train_context=131072)
    budget = host_budget_bytes(gate.target)
    assert choice.tokens % STEP == 0 and choice.tokens > WORKLOAD.min_context
    at = dataclasses.replace(CAND.config, ctx_size=choice.tokens)
    above = dataclasses.replace(CAND.config, ctx_size=choice.tokens + STEP)
    assert gate(Candidate("Q4_0", at))[0] and not gate(Candidate("Q4_0", above))[0]
    assert choice.predicted_bytes <= budget < choice.next_bytes
    assert "the largest context that fits" in choice.why and "over the" in choice.why
    # a quantized KV cache (q8_0: about half of f16's bytes per token) gets a larger context
    q8 = Candidate("Q4_0", dataclasses.replace(CAND.config, cache_type_k="q8_0", cache_type_v="q8_0"))
    assert choose_context(q8, WORKLOAD.model_copy(update={"context": "max"}), gate,
                          train_context=131072).tokens > choice.tokens


def test_max_stops_at_the_models_training_context():
    choice = choose_context(CAND, WORKLOAD.model_copy(update={"context": "max"}), _gate("h100-sxm-80gb"),
                            train_context=8192)
    assert choice.tokens == 8192 and "training context (8192)" in choice.why


def test_a_number_that_does_not_fit_is_a_clear_error_and_one_that_fits_is_kept():
    gate = _gate()
    assert choose_context(CAND, WORKLOAD.model_copy(update={"context": 4096}), gate, train_context=None).tokens == 4096
    with pytest.raises(UserError) as e:
        choose_context(CAND, WORKLOAD.model_copy(update={"context": 1_000_000}), gate, train_context=None)
    assert "[workload] context = 1000000 does not fit with Q4_0" in e.value.message and "max" in e.value.hint


def test_without_a_training_context_max_doubles_then_bisects():
    gate = _gate()
    with_train = choose_context(CAND, WORKLOAD.model_copy(update={"context": "max"}), gate, train_context=10**7)
    without = choose_context(CAND, WORKLOAD.model_copy(update={"context": "max"}), gate, train_context=None)
    assert without.tokens == with_train.tokens


def test_the_decider_decides_once_per_configuration_and_deploys_with_it():
    decider = ContextDecider(WORKLOAD.model_copy(update={"context": 8192}), _gate(), train_context=131072)
    config = decider.deployed("Q4_0", CAND.config)
    assert config.ctx_size == 8192 and dataclasses.replace(config, ctx_size=2048) == CAND.config
    assert decider.choice("Q4_0", config) is decider.choice("Q4_0", CAND.config)  # keyed at the search's context
    assert decider.choice("Q4_0", CAND.config).as_dict()["tokens"] == 8192


@pytest.mark.parametrize("context, says", [(1024, "is below min_context = 2048"), ("min", "context"),
                                            (True, "context")])
def test_a_bad_context_in_a_recipe_is_refused(context, says):
    with pytest.raises(ValueError, match=says):
        Workload(min_context=2048, prompt_tokens=512, gen_tokens=128, context=context)
