"""Quality on the device by KL divergence against reference logits (llama-perplexity).

Reference logits come once from the highest-precision source available (the recipe's source GGUF),
on the recipe's corpus, and are cached per (source, corpus, context, chunks, llama.cpp commit); the
chunk count bounds their size (n_chunks x ctx/2 x n_vocab x 2 bytes). Each candidate (quant type and
KV-cache types) is then scored against them: mean KLD, top-token agreement, PPL ratio.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import PurePath

from haqa import ui
from haqa.errors import ToolFailed
from haqa.measure.corpus import Corpus
from haqa.runner.base import Runner
from haqa.runtime import RuntimeConfig
from haqa.toolchain.build import Toolchain

QUALITY_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class QualitySettings:
    ctx: int = 512
    chunks: int = 8


@dataclass(frozen=True)
class Quality:
    """Measured against the reference logits; ± values are llama-perplexity's standard errors."""

    kld_mean: float
    kld_err: float
    kld_p99: float | None
    same_top_p: float  # percent of tokens whose most likely next token matches the reference
    same_top_p_err: float
    ppl_ratio: float  # PPL(candidate) / PPL(reference)
    ppl_ratio_err: float
    ppl: float
    ppl_base: float
    tokens_scored: int
    corpus_sha256: str
    reference: str

    def as_dict(self) -> dict:
        return {**asdict(self), "basis": "measured (llama-perplexity --kl-divergence)"}

    @classmethod
    def from_dict(cls, d: dict) -> Quality:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


_NUM = r"(-?[0-9.]+(?:e[-+]?\d+)?)"
# An uncertainty may print as "-nan": llama-perplexity takes sqrt(var(Q) + var(base) - 2 cov), which rounds
# below zero when the candidate's log-likelihoods equal the reference's (the source's own type on a CPU
# that computes both the same way): no spread to the printed precision.
_UNCERTAINTY = r"(-?[0-9.]+(?:e[-+]?\d+)?|[-+]?nan)"


def parse_kld_output(text: str) -> dict:
    """The statistics block llama-perplexity prints after `--kl-divergence`."""
    def grab(label: str, two: bool = True) -> tuple[float, float] | float:
        pattern = re.escape(label) + r"\s*:\s*" + _NUM + (r"\s*±\s*" + _UNCERTAINTY if two else "")
        m = re.search(pattern, text)
        if not m:
            raise ValueError(f"llama-perplexity output lacks '{label}'")
        if not two:
            return float(m.group(1))
        spread = m.group(2)
        return float(m.group(1)), 0.0 if spread.lstrip("+-") == "nan" else float(spread)

    kld, kld_err = grab("Mean    KLD")
    same, same_err = grab("Same top p")
    ratio, ratio_err = grab("Mean PPL(Q)/PPL(base)")
    ppl, _ = grab("Mean PPL(Q)")
    base, _ = grab("Mean PPL(base)")
    try:
        p99 = grab("99.0%   KLD", two=False)
    except ValueError:
        p99 = None
    return dict(kld_mean=kld, kld_err=kld_err, kld_p99=p99, same_top_p=same, same_top_p_err=same_err,
                ppl_ratio=ratio, ppl_ratio_err=ratio_err, ppl=ppl, ppl_base=base)


def reference_logits(runner: Runner, toolchain: Toolchain, source: PurePath, source_sha256: str, corpus: Corpus,
                     settings: QualitySettings, threads: int) -> PurePath:
    """The reference logits file on the device, computed once per (source, corpus, settings, commit)."""
    key = hashlib.sha256(
        f"{source_sha256}:{corpus.sha256}:{settings.ctx}:{settings.chunks}:{toolchain.commit}".encode()
    ).hexdigest()[:16]
    ref = runner.dir("results", "kld-reference", f"{key}.kld")
    if runner.exists(ref):
        return ref
    device_corpus = runner.dir("corpora", corpus.path.name)
    runner.put(corpus.path, device_corpus)
    runner.mkdir(ref.parent)
    part = ref.with_name(ref.name + ".part")
    ui.note(f"computing reference logits ({settings.chunks} chunks of {settings.ctx} tokens of {corpus.name})")
    argv = [str(toolchain.bin("llama-perplexity")), "-m", str(source), "-f", str(device_corpus),
            "-c", str(settings.ctx), "--chunks", str(settings.chunks), "-t", str(threads), "-ngl", "0",
            "--kl-divergence-base", str(part)]
    log = runner.local_dir("logs") / f"kld-reference-{key}.log"
    log.write_text("")
    result = runner.run(argv, timeout=QUALITY_TIMEOUT_S, log_path=log)
    if not result.ok:
        raise ToolFailed(argv, result.returncode, result.stderr_tail, timed_out=result.timed_out)
    runner.move(part, ref)
    return ref


def _kv_args(cache_type_k: str, cache_type_v: str) -> list[str]:
    """KV-cache flags, with flash attention as RuntimeConfig decides it (a quantized V cache needs it)."""
    fa = RuntimeConfig(threads=1, ctx_size=0, cache_type_k=cache_type_k, cache_type_v=cache_type_v).effective_flash_attn
    return ["-ctk", cache_type_k, "-ctv", cache_type_v, "-fa", fa]


def measure_quality(runner: Runner, toolchain: Toolchain, candidate: PurePath, reference: PurePath, corpus: Corpus,
                    settings: QualitySettings, *, threads: int, cache_type_k: str = "f16", cache_type_v: str = "f16",
                    n_gpu_layers: int = 0) -> Quality:
    argv = [str(toolchain.bin("llama-perplexity")), "-m", str(candidate), "-c", str(settings.ctx),
            "--chunks", str(settings.chunks), "-t", str(threads), "-ngl", str(n_gpu_layers),
            *_kv_args(cache_type_k, cache_type_v), "--kl-divergence-base", str(reference), "--kl-divergence"]
    log = runner.local_dir("logs") / f"kld-{PurePath(candidate).stem}-{cache_type_k}-{cache_type_v}.log"
    log.write_text("")
    result = runner.run(argv, timeout=QUALITY_TIMEOUT_S, log_path=log)
    if not result.ok:
        raise ToolFailed(argv, result.returncode, result.stderr_tail, timed_out=result.timed_out)
    try:
        stats = parse_kld_output(log.read_text(errors="replace"))
    except ValueError as e:
        raise ToolFailed(argv, result.returncode, f"{e}\n{result.stderr_tail}") from None
    return Quality(**stats, tokens_scored=settings.chunks * (settings.ctx // 2 - 1), corpus_sha256=corpus.sha256,
                   reference=PurePath(reference).name)
