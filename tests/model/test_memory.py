"""The memory model: formulas against worked examples, and predictions against measured peaks."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from haqa.model import memory
from haqa.model.synth import PRESETS
from tests.support.files import write_tiny_gguf

KIB = 1024


def _llama8b() -> memory.ModelShape:
    s = PRESETS["llama-3.1-8b"]
    return memory.ModelShape(architecture="llama", n_layer=s.n_layer, n_embd=s.n_embd, n_ff=s.n_ff, n_head=s.n_head,
                             n_head_kv=s.n_head_kv, head_dim_k=s.head_dim, head_dim_v=s.head_dim, n_vocab=s.n_vocab,
                             tensor_bytes=4_000_000_000, token_embd_bytes=282_000_000, tied_embeddings=False,
                             layer_bytes=3_400_000_000)


@pytest.mark.parametrize("kv,per_token_kib", [("f16", 128), ("q8_0", 68), ("q4_0", 36)])
def test_kv_cache_matches_the_worked_example(kv, per_token_kib):
    """32 layers x 8 KV heads x 128 dims (grouped-query attention): 128 KiB per token in f16."""
    assert memory.kv_bytes(_llama8b(), 1, kv, kv) == per_token_kib * KIB
    assert memory.kv_bytes(_llama8b(), 4096, kv, kv) == per_token_kib * KIB * 4096


def test_context_is_padded_to_256_cells():
    assert memory.padded(1) == 256 and memory.padded(256) == 256 and memory.padded(257) == 512


def test_repack_rules_follow_the_cpu():
    shape = dataclasses.replace(_llama8b(), matrices=(("token_embd.weight", "Q4_0", 100, 128256),
                                                      ("blk.0.ffn_up.weight", "Q4_0", 10, 14336),
                                                      ("blk.0.attn_v.weight", "Q6_K", 5, 1024)))
    assert shape.repacked_bytes("x86_64", ["avx2"]) == 10  # never token_embd; Q6_K has no x86 layout
    assert shape.repacked_bytes("aarch64", ["neon", "dotprod"]) == 15  # dotprod repacks Q6_K too
    assert shape.repacked_bytes("aarch64", ["neon"]) == 0  # Pi 4: no dotprod, no repack


def test_gpu_layers_move_weights_and_kv_off_the_host():
    shape = _llama8b()
    cpu = memory.predict(shape, n_ctx=4096)
    half = memory.predict(shape, n_ctx=4096, n_gpu_layers=16)
    assert half.gpu == pytest.approx((shape.layer_bytes + cpu.kv) / 2)
    assert half.host == pytest.approx(cpu.host - half.gpu)
    unified = memory.predict(shape, n_ctx=4096, n_gpu_layers=16, unified_memory=True)
    assert unified.gpu == 0 and unified.host == pytest.approx(cpu.host)


def test_roofline_is_bandwidth_over_bytes_per_token():
    shape = _llama8b()
    tps = memory.roofline_decode_tps(shape, 100.0, n_ctx=0)
    assert tps == pytest.approx(100e9 / (shape.tensor_bytes - shape.token_embd_bytes))


def test_shape_is_read_from_gguf_metadata(tmp_path):
    shape = memory.ModelShape.from_gguf(write_tiny_gguf(tmp_path / "t.gguf"))
    assert shape.architecture == "llama" and shape.tied_embeddings


@pytest.mark.slow
def test_predictions_are_within_bounds_of_measured_peaks():
    """A few real llama-bench runs on SmolLM2: the prediction is within 10 % of the measured peak."""
    from haqa.benchmarks.memory import CONFIGS, Point, _kwargs
    from haqa.config import find_file, load_recipe, load_target
    from haqa.measure import peak_rss
    from haqa.measure.quantize import quantize
    from haqa.model.source import resolve_model
    from haqa.runner import LocalRunner
    from haqa.toolchain import ensure_toolchain

    runner, target = LocalRunner(), load_target("local")
    toolchain = ensure_toolchain(runner, target)
    src = resolve_model(load_recipe("smollm2-135m"), find_file("recipes", "smollm2-135m").parent)
    for quant, cfg in (("Q4_0", CONFIGS[0]), ("Q8_0", CONFIGS[3]), ("Q4_K_M", CONFIGS[6])):
        path, _ = quantize(runner, toolchain, src.path, src.sha256, "Q4_1", quant)
        point = Point(model=quant, **cfg)
        argv = [str(toolchain.bin("llama-bench")), "-m", str(path), *point.args(), "-r", "1", "-t", "2", "-o", "json"]
        result = runner.run(peak_rss.wrap(sys.executable, argv), timeout=600)
        measured = peak_rss.parse(result.stderr_tail)
        predicted = memory.predict(memory.ModelShape.from_gguf(Path(path)), **_kwargs({"point": point.__dict__})).total
        assert abs(predicted - measured) / measured < 0.10, (quant, point.label(), predicted, measured)


@pytest.mark.slow
def test_estimate_of_an_unquantized_type_is_close_to_the_real_file():
    from haqa.config import find_file, load_recipe
    from haqa.model.source import resolve_model

    src = resolve_model(load_recipe("smollm2-135m"), find_file("recipes", "smollm2-135m").parent)
    from haqa.config import load_target
    from haqa.measure.quantize import quantize
    from haqa.runner import LocalRunner
    from haqa.toolchain import ensure_toolchain

    runner = LocalRunner()
    toolchain = ensure_toolchain(runner, load_target("local"))
    real, _ = quantize(runner, toolchain, src.path, src.sha256, "Q4_1", "Q8_0")
    est = memory.estimate_quantized(src.path, "Q8_0")
    assert est.tensor_bytes == pytest.approx(memory.ModelShape.from_gguf(Path(real)).tensor_bytes, rel=0.05)


@pytest.mark.slow
def test_estimate_command_lists_candidates_with_predicted_labels(haqa):
    code, out, _ = haqa("estimate", "--target", "rpi4-4gb", "--recipe", "smollm2-135m")
    assert code == 0 and "Q8_0" in out and "predicted" in out and "fits" in out


@pytest.mark.slow
def test_bench_harness_quick(tmp_path):
    """`haqa bench all --quick` runs every benchmark's harness end to end and writes the document
    (figures not checked)."""
    import subprocess

    out = tmp_path / "BENCH.md"
    proc = subprocess.run([sys.executable, "-m", "haqa", "bench", "all", "--quick", "--out", str(out),
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert ("Command: `haqa bench all --quick`" in text and "| SmolLM2-135M Q8_0 |" in text
            and "llama.cpp 0c1e5709" in text)
    assert (tmp_path / "memory-grid-quick.json").exists()
    assert "## Tuned against what users run today" in text and "- tuned / (a) default: decode x" in text
    assert "| synth-tiny |" in text and "roofline bound tok/s" in text  # table 4 with this machine's bandwidth
    assert "## A GPU target: synthetic Llama-3.1-8B on an NVIDIA H100" in text  # table 5, from docs/data/gpu
    assert (tmp_path / "tuned-quick" / "synth-tiny@local.json").exists()
