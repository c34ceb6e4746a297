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
    threads_batch: int | None = None  # prompt processing threads (llama-server -tb); None: same as threads
    repack: bool = True  # CPU weight repacking (llama.cpp default on)
    load_mode: str = "auto"  # auto | mmap | none | mlock | mmap+mlock
    poll: int = 50  # busy-wait level 0..100

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def prefill_threads(self) -> int:
        return self.threads_batch or self.threads

    @property
    def effective_flash_attn(self) -> str:
        # A quantized V cache needs flash attention (llama-context.cpp refuses it otherwise).
        return "on" if self.cache_type_v not in ("f16", "f32", "bf16") else self.flash_attn

    def describe(self) -> str:
        """The flags in one short line, for reports."""
        return (f"t={self.threads}/{self.prefill_threads} ngl={self.n_gpu_layers} fa={self.flash_attn} "
                f"b={self.batch_size}/{self.ubatch_size} kv={self.cache_type_k} "
                f"repack={'on' if self.repack else 'off'} lm={self.load_mode} poll={self.poll}")

    def bench_args(self, *, prefill: bool = False) -> list[str]:
        """llama-bench flags. It uses one thread count for a whole test, so prefill tests get the
        batch threads and decode tests the generation threads, as llama-server would use them."""
        return ["-t", str(self.prefill_threads if prefill else self.threads), "-ngl", str(self.n_gpu_layers),
                "-b", str(self.batch_size), "-ub", str(self.ubatch_size),
                "-ctk", self.cache_type_k, "-ctv", self.cache_type_v, "-fa", self.effective_flash_attn,
                "--repack", "1" if self.repack else "0", "-lm", self.load_mode, "--poll", str(self.poll)]

    def server_args(self) -> list[str]:
        # One slot and no host-RAM prompt cache: llama-server's defaults (4 slots, 8 GiB cache) are
        # sized for servers, not for small devices.
        return ["--threads", str(self.threads), "--threads-batch", str(self.prefill_threads),
                "--ctx-size", str(self.ctx_size),
                "--n-gpu-layers", str(self.n_gpu_layers), "--batch-size", str(self.batch_size),
                "--ubatch-size", str(self.ubatch_size), "--cache-type-k", self.cache_type_k,
                "--cache-type-v", self.cache_type_v, "--flash-attn", self.effective_flash_attn,
                "--repack" if self.repack else "--no-repack", "--load-mode", self.load_mode, "--poll", str(self.poll),
                "--parallel", "1", "--cache-ram", "0"]
