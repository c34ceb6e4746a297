"""What the LLM proposer is told before it proposes: the device, the model, the objective, the constraints,
and the memory model's and the roofline's predictions for each quant type (each labelled predicted)."""

from __future__ import annotations

from haqa.agent import objective as obj
from haqa.config.schema import Recipe, Target
from haqa.model import memory
from haqa.model.budget import ShapeFor, decode_bandwidth_gbs, host_budget_bytes, predicted_peak
from haqa.runtime import RuntimeConfig


def prompt_facts(target: Target, recipe: Recipe, source_facts, quants, shape_for: ShapeFor,
                 base: RuntimeConfig) -> dict:
    """The LLM proposer's static facts (haqa.agent.llm.PromptFacts' fields), as a dict a landscape file keeps."""
    hw = target.hardware
    bandwidth = decode_bandwidth_gbs(hw)
    predictions = {}
    for q in quants:
        shape = shape_for(q)
        est = predicted_peak(target, shape, base, tokens=base.ctx_size)
        roofline = memory.roofline_decode_tps(shape, bandwidth, n_ctx=base.ctx_size) if bandwidth else None
        predictions[q] = {"predicted_peak_mib": round(est.total / 2**20),
                          "weights_read_per_token_mib": round(shape.tensor_bytes / 2**20),
                          "roofline_decode_tps": round(roofline, 1) if roofline is not None else None}
    return {
        "device": {"name": target.name, "os": target.os, **hw.model_dump(mode="json")},
        "model": {"architecture": source_facts.architecture, "name": source_facts.name,
                  "parameters": source_facts.n_params, "layers": source_facts.n_layers,
                  "source_type": source_facts.file_type, "synthetic": source_facts.synthetic},
        "objective": obj.describe(recipe.objective, recipe.workload),
        "workload": {"prompt_tokens": recipe.workload.prompt_tokens, "gen_tokens": recipe.workload.gen_tokens,
                     "concurrent_users": recipe.workload.concurrency},
        "constraints": {"max_kld": recipe.quality.max_kld, "max_ppl_ratio": recipe.quality.max_ppl_ratio,
                        "min_context": recipe.workload.min_context,
                        "max_ttft_ms": recipe.workload.max_ttft_ms, "min_decode_tps": recipe.workload.min_decode_tps,
                        "memory_budget_gib": round(host_budget_bytes(target) / 2**30, 2)},
        "predictions": predictions,
    }
