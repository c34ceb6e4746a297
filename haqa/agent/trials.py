"""One candidate measured on the device: quantized (cached), timed with llama-bench, scored for quality
with llama-perplexity's KLD against the source, with the memory model's prediction beside the measured
peak; and the key that says which stored measurement of it is still valid."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from haqa import ui
from haqa.agent.select import Trial
from haqa.agent.space import Candidate
from haqa.config.schema import Target, Workload
from haqa.errors import ToolFailed, failure_cause
from haqa.measure.bench import BenchResult, SpeedPolicy, run_bench
from haqa.measure.quality import QualitySettings, measure_quality
from haqa.measure.quantize import quantize
from haqa.model import memory
from haqa.model.budget import ShapeFor, predicted_peak

SPEED_POLICY = SpeedPolicy()


def speed_policy(recipe) -> SpeedPolicy:
    """The recipe's [search] repetitions, max_repetitions and rse_target (SPEED_POLICY by default)."""
    s = recipe.search
    return SpeedPolicy(repetitions=s.repetitions, rse_target=s.rse_target, max_repetitions=s.max_repetitions)


@dataclass
class DeviceTrials:
    """measure(candidate) -> Trial on `runner`'s device. A tool that fails gives a failed Trial with its
    cause (oom, timeout, crash, error); a lost connection or a full disk is raised."""

    runner: object
    toolchain: object
    device_source: object  # the source GGUF's path on the device
    model: object  # the resolved source model (path, sha256)
    source_type: str
    synthetic: bool
    reference: object | None  # the reference logits on the device; None for synthetic weights
    corpus: object
    settings: QualitySettings
    workload: Workload
    target: Target
    shape_for: ShapeFor
    policy: SpeedPolicy = SPEED_POLICY
    # KLD depends on the weights and the KV-cache types only (llama-perplexity gets no other knob): a candidate
    # that differs in threads, batch sizes, flash attention, repacking or polling reuses the measurement.
    _qualities: dict = dataclasses.field(default_factory=dict, repr=False)

    def key(self, cand: Candidate) -> str:
        """What keeps a stored trial valid: the candidate, the source, the toolchain, the reference, the
        workload and the speed policy."""
        blob = json.dumps({"cand": cand.key, "source": self.model.sha256, "toolchain": self.toolchain.key,
                           "reference": self.reference.name if self.reference else None,
                           "workload": self.workload.model_dump(), "policy": dataclasses.asdict(self.policy)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def prepare(self, quant: str):
        """The candidate GGUF on the device (quantized once, then cached) and its sha256."""
        candidate, _ = quantize(self.runner, self.toolchain, self.device_source, self.model.sha256,
                                self.source_type, quant, expected_bytes=int(self.shape_for(quant).tensor_bytes))
        return candidate, self.runner.sha256(candidate)

    def __call__(self, cand: Candidate) -> Trial:
        config, w = cand.config, self.workload
        try:
            candidate, sha = self.prepare(cand.quant)
            known = (sha, config.cache_type_k, config.cache_type_v) in self._qualities
            tools = "llama-bench" + ("" if self.synthetic else " (its KLD is known)" if known else
                                     " and llama-perplexity")
            ui.note(f"measuring {cand.quant} (KV {config.cache_type_k}, {config.threads} threads, "
                    f"fa {config.flash_attn}, ub {config.ubatch_size}, repack {config.repack}) with {tools}")
            bench = run_bench(self.runner, self.toolchain, candidate, config, prompt_tokens=w.prompt_tokens,
                              gen_tokens=w.gen_tokens, policy=self.policy,
                              log_path=self.runner.local_dir("logs") / f"bench-{cand.key}.log")
            quality = None if self.synthetic else self.quality(candidate, sha, config)
            return Trial(cand.quant, config, bench, quality, sha, memory=self.memory_record(candidate, cand, bench))
        except ToolFailed as e:
            ui.note(f"{cand.quant}: failed ({failure_cause(e)}): {str(e).splitlines()[0]}")
            return Trial(cand.quant, config, None, error=str(e)[-2000:], cause=failure_cause(e))

    def quality(self, candidate, sha: str, config):
        """The candidate's KLD, measured once per (weights, KV-cache types) in this run."""
        kv = (sha, config.cache_type_k, config.cache_type_v)
        if kv not in self._qualities:
            self._qualities[kv] = measure_quality(self.runner, self.toolchain, candidate, self.reference, self.corpus,
                                                  self.settings, threads=config.prefill_threads,
                                                  cache_type_k=config.cache_type_k, cache_type_v=config.cache_type_v)
        return self._qualities[kv]

    def memory_record(self, candidate, cand: Candidate, bench: BenchResult) -> dict:
        """The memory model's predictions (the deployment, the llama-bench runs) beside the measured peak."""
        config, w = cand.config, self.workload
        shape = (memory.ModelShape.from_gguf(Path(candidate)) if self.runner.shares_filesystem
                 else self.shape_for(cand.quant))
        runs = [predicted_peak(self.target, shape, config, tokens=w.prompt_tokens),
                predicted_peak(self.target, shape, config, tokens=w.prompt_tokens + w.gen_tokens,
                               bench_depth=w.prompt_tokens)]
        bench_pred = max(r.host for r in runs)
        deploy_pred = predicted_peak(self.target, shape, config, tokens=config.ctx_size)
        rec = {"deployment_predicted": deploy_pred.as_dict(), "bench_predicted_bytes": round(bench_pred),
               "bench_measured_bytes": bench.peak_rss_bytes,
               "basis": f"{deploy_pred.basis}; measured: peak RSS of the llama-bench runs"}
        if bench.peak_rss_bytes:
            rec["bench_prediction_error"] = round((bench_pred - bench.peak_rss_bytes) / bench.peak_rss_bytes, 4)
        return rec
