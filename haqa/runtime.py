"""A llama.cpp runtime configuration and how it maps to the flags of llama-bench and llama-server.

haqa builds every argv itself from these typed values; nothing from a file or a model reply is
passed through as text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int
    ctx_size: int
    n_gpu_layers: int = 0
    batch_size: int = 2048
    ubatch_size: int = 512
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"  # on | off | auto

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def effective_flash_attn(self) -> str:
        # A quantized V cache needs flash attention (llama-context.cpp refuses it otherwise).
        return "on" if self.cache_type_v not in ("f16", "f32", "bf16") else self.flash_attn

    def bench_args(self) -> list[str]:
        return ["-t", str(self.threads), "-ngl", str(self.n_gpu_layers),
                "-b", str(self.batch_size), "-ub", str(self.ubatch_size),
                "-ctk", self.cache_type_k, "-ctv", self.cache_type_v, "-fa", self.effective_flash_attn]

    def server_args(self) -> list[str]:
        # One slot and no host-RAM prompt cache: llama-server's defaults (4 slots, 8 GiB cache) are
        # sized for servers, not for small devices.
        return ["--threads", str(self.threads), "--ctx-size", str(self.ctx_size),
                "--n-gpu-layers", str(self.n_gpu_layers), "--batch-size", str(self.batch_size),
                "--ubatch-size", str(self.ubatch_size), "--cache-type-k", self.cache_type_k,
                "--cache-type-v", self.cache_type_v, "--flash-attn", self.effective_flash_attn,
                "--parallel", "1", "--cache-ram", "0"]
