"""The memory gate: whether a candidate fits a device, by the memory model (haqa/model/memory.py), within
the device's RAM less its headroom and its GPU's memory less the driver's share, and what out-of-memory
trials on the device taught it. Deploy, reproduce, the landscape and `haqa estimate` all ask here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from haqa import ui
from haqa.config.schema import Hardware, Target
from haqa.model import memory
from haqa.runtime import RuntimeConfig

GPU_HEADROOM_GIB = 0.5  # the CUDA context and the driver's own allocations

ShapeFor = Callable[[str], memory.ModelShape]


def predicted_peak(target: Target, shape: memory.ModelShape, config: RuntimeConfig, *, tokens: int,
                   bench_depth: int = 0) -> memory.MemoryEstimate:
    """The memory model's peak (host and GPU) for `shape` run with `config` over `tokens` of context."""
    hw = target.hardware
    return memory.predict(shape, n_ctx=tokens, ubatch=config.ubatch_size, batch=config.batch_size,
                          type_k=config.cache_type_k, type_v=config.cache_type_v, n_gpu_layers=config.n_gpu_layers,
                          unified_memory=hw.gpu.unified_memory, arch=hw.arch, cpu_features=hw.cpu_features,
                          bench_depth=bench_depth)


def model_shapes(model_path: Path, source_type: str) -> ShapeFor:
    """shape_for(quant): the model's shape as that quant type (the source's own, else estimated), each
    computed once."""
    shapes: dict[str, memory.ModelShape] = {}

    def shape_for(quant: str) -> memory.ModelShape:
        if quant not in shapes:
            shapes[quant] = (memory.ModelShape.from_gguf(model_path) if quant == source_type
                             else memory.estimate_quantized(model_path, quant))
        return shapes[quant]

    return shape_for


def host_budget_bytes(target: Target) -> float:
    """The RAM a deployment may use: the device's less the target's headroom."""
    return (target.hardware.ram_gib - target.limits.memory_headroom_gib) * 2**30


def gpu_budget_bytes(target: Target) -> float | None:
    """The memory of a discrete GPU less the driver's share; None without one (or with unified memory,
    which the host budget covers)."""
    gpu = target.hardware.gpu
    if gpu.kind == "none" or gpu.unified_memory or not gpu.memory_gib:
        return None
    return (gpu.memory_gib - GPU_HEADROOM_GIB) * 2**30


def decode_bandwidth_gbs(hw: Hardware) -> float | None:
    """The memory bandwidth decode streams the weights through: the GPU's where there is one with a
    figure, else the host's (both quoted from the target file)."""
    if hw.gpu.kind != "none" and hw.gpu.mem_bandwidth_gbs:
        return hw.gpu.mem_bandwidth_gbs
    return hw.mem_bandwidth_gbs


@dataclass
class MemoryGate:
    """fits(candidate) -> (ok, why): the candidate's predicted peak within the host and GPU budgets, and
    not at least as large (host and GPU) as that of a candidate that ran out of memory on the device."""

    target: Target
    shape_for: ShapeFor
    out_of_memory: list[tuple[float, float, str]] = field(default_factory=list)  # host, GPU, which
    _noted: set[str] = field(default_factory=set)

    def need(self, cand) -> memory.MemoryEstimate:
        return predicted_peak(self.target, self.shape_for(cand.quant), cand.config, tokens=cand.config.ctx_size)

    def within_budget(self, cand) -> tuple[bool, str]:
        """The memory model's verdict alone, without what the device taught it."""
        need = self.need(cand)
        host = host_budget_bytes(self.target)
        if need.host > host:
            return False, (f"the memory model predicts {need.host / 2**30:.2f} GiB for {cand.quant} with KV "
                           f"{cand.config.cache_type_k}, over the {host / 2**30:.2f} GiB budget")
        gpu = gpu_budget_bytes(self.target)
        if gpu is not None and need.gpu > gpu:
            return False, (f"the memory model predicts {need.gpu / 2**30:.2f} GiB of GPU memory for {cand.quant} "
                           f"with {cand.config.n_gpu_layers} layers offloaded, over the GPU's {gpu / 2**30:.2f} GiB")
        return True, "fits"

    def __call__(self, cand) -> tuple[bool, str]:
        ok, why = self.within_budget(cand)
        if not ok:
            return False, why
        need = self.need(cand)
        for host, gpu, failed in self.out_of_memory:
            if need.host >= host and need.gpu >= gpu:
                why = (f"the memory model predicts {need.host / 2**30:.3f} GiB for {cand.quant} with KV "
                       f"{cand.config.cache_type_k}, at least the {host / 2**30:.3f} GiB predicted for {failed}, "
                       f"which ran out of memory on the device")
                if cand.quant not in self._noted:
                    self._noted.add(cand.quant)
                    ui.note(f"memory model: skipping {cand.quant} ({cand.config.describe()}): {why}")
                return False, why
        return True, "fits"

    def learn_out_of_memory(self, cand, origin: str) -> None:
        """`cand` ran out of memory on the device: what needs at least as much is not run."""
        need = self.need(cand)
        failed = f"{cand.quant} ({cand.config.describe()})"
        self.out_of_memory.append((need.host, need.gpu, failed))
        ui.note(f"memory model: {failed} ran out of memory on the device {origin} at a predicted "
                f"{need.host / 2**30:.3f} GiB; candidates predicted to need at least as much are skipped")
