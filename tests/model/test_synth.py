"""Synthetic models: real shapes, random weights; they load and bench in llama.cpp, and quality is never reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from haqa.config import load_target
from haqa.errors import UserError
from haqa.measure.bench import SpeedPolicy, run_bench
from haqa.model.gguf_facts import read_facts
from haqa.model.synth import PRESETS, resolve_shape, shape_from_hf_config
from haqa.runner import LocalRunner
from haqa.runtime import RuntimeConfig
from haqa.toolchain import ensure_toolchain


def test_presets_have_the_published_parameter_counts():
    # Published sizes: Llama-3.2-1B 1.24B, 3B 3.21B, Llama-3.1-8B 8.03B, Qwen2.5-1.5B 1.54B.
    expected = {"llama-3.2-1b": 1.24e9, "llama-3.2-3b": 3.21e9, "llama-3.1-8b": 8.03e9, "qwen2.5-1.5b": 1.54e9}
    for name, n in expected.items():
        assert PRESETS[name].n_params() == pytest.approx(n, rel=0.02), name


def test_shape_from_a_hugging_face_config(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
           "max_position_embeddings": 131072, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    assert shape_from_hf_config(p) == PRESETS["llama-3.2-1b"]
    p.write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(UserError, match="not supported"):
        shape_from_hf_config(p)


def test_unknown_shape_suggests_a_preset():
    with pytest.raises(UserError, match="did you mean 'llama-3.2-3b'"):
        resolve_shape("llama-3.2-2b")


@pytest.mark.slow
def test_synthetic_model_loads_and_benches(tmp_path):
    out = tmp_path / "syn.gguf"
    proc = subprocess.run([sys.executable, "-m", "haqa", "synth", "--like", "qwen2.5-1.5b", "--layers", "2",
                           "--quant", "Q4_K_M", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    facts = read_facts(out)
    assert facts.synthetic and facts.architecture == "qwen2" and facts.file_type == "Q4_K_M" and facts.n_layers == 2
    runner = LocalRunner()
    toolchain = ensure_toolchain(runner, load_target("local"))
    result = run_bench(runner, toolchain, out, RuntimeConfig(threads=2, ctx_size=512), prompt_tokens=32, gen_tokens=8,
                       policy=SpeedPolicy(repetitions=2, rse_target=1.0, max_repetitions=2))
    assert result.decode.mean > 0 and result.prefill.mean > 0


@pytest.mark.slow
def test_deploy_of_a_synthetic_recipe_reports_no_quality(project, haqa, tmp_path):
    project.write("recipes/syn.toml", """
        name = "syn"
        [source]
        synthetic = "llama-3.2-1b"
        layers = 2
        [search]
        quants = ["Q8_0", "Q4_0"]
        max_trials = 2
        compare_rounds = 0  # what a synthetic lock says of quality is under test, not the final word
        [quality]
        max_kld = 0.05
        [workload]
        min_context = 512
        prompt_tokens = 32
        gen_tokens = 8
    """)
    code, _, err = haqa("deploy", "--recipe", "syn", "--out", str(tmp_path / "b"), "--agent", "grid")
    assert code == 0, err
    lock = json.loads((tmp_path / "b" / "haqa.lock.json").read_text())
    assert lock["synthetic"] is True and lock["quality_method"].startswith("not measured")
    assert all(t["quality"] is None for t in lock["trials"])
    assert "reference logits" not in err
