"""One real `haqa deploy` on the local target, and its bundle checked the way a user would use it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haqa.hashing import sha256_file
from haqa.paths import cache_home
from tests.support.files import REPO
from tests.support.homes import shared_home
from tests.support.net import free_port

pytestmark = pytest.mark.slow
HAQA = [sys.executable, "-m", "haqa"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A haqa home that shares the built toolchain, the fetched models and the reference logits (caches
    keyed by content) but no measurements, so the deploy below measures every candidate for real instead
    of reading earlier results."""
    return shared_home(tmp_path_factory.mktemp("haqa-home"), cache_home(),
                       ("sources", "src", "toolchains", "models", "corpora", "results"))


def run_haqa(home: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([*HAQA, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HAQA_HOME": str(home)})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, home) -> Path:
    out = tmp_path_factory.mktemp("dist") / "smollm2-135m@local"
    proc = run_haqa(home, "deploy", "--target", "local", "--recipe", "smollm2-135m", "--out", str(out),
                    "--agent", "heuristic", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    assert "chose" in proc.stderr and "bundle written" in proc.stderr
    assert len(re.findall(r": decode .*\[measured\]", proc.stderr)) >= 3, proc.stderr
    return out


def test_bundle_has_gguf_lock_and_script(bundle):
    lock = json.loads((bundle / "haqa.lock.json").read_text())
    quant = lock["model"]["file_type"]
    gguf_file = bundle / f"smollm2-135m-{quant}.gguf"
    assert gguf_file.is_file() and os.access(bundle / "run.sh", os.X_OK)
    assert lock["model"]["sha256"] == sha256_file(gguf_file) == lock["files"][gguf_file.name]
    assert lock["llama_cpp"]["commit"] and lock["llama_cpp"]["cmake_options"]["BUILD_SHARED_LIBS"] == "OFF"
    assert quant in ["Q8_0", "Q4_1", "Q4_K_M", "Q4_0"]
    decode = lock["metrics"]["bench"]["decode"]
    assert decode["basis"] == "measured" and decode["repetitions"] >= 3 and decode["stddev"] >= 0
    assert decode["depth"] == lock["recipe"]["workload"]["prompt_tokens"]
    comparison = lock["comparison"]
    assert lock["metrics"]["speed_basis"].startswith("the side-by-side re-measurement")
    assert decode["repetitions"] == comparison["rounds"] * comparison["repetitions_per_round"]
    tuned = comparison["contenders"]["tuned"]
    assert tuned["quant"] == quant
    assert tuned["config"] == {k: v for k, v in lock["runtime"].items() if k != "server_args"}
    finalists = [c for name, c in comparison["contenders"].items() if name.startswith("finalist")] + [tuned]
    assert tuned["decode"]["median"] > 0 and len(finalists) == comparison["finalists"]
    quality = lock["metrics"]["quality"]
    assert quality["kld_mean"] <= lock["recipe"]["quality_budget"]["max_kld"]
    assert quality["basis"].startswith("measured")
    assert 0 < quality["same_top_p"] <= 100 and lock["quality_method"]["corpus"] == "python-docs"
    assert lock["metrics"]["bench"]["peak_rss_bytes"] > lock["model"]["size_bytes"]
    assert lock["runtime"]["threads"] >= 1 and lock["runtime"]["ctx_size"] == 2048
    assert lock["selection"]["proposer"] == "heuristic" and 3 <= lock["selection"]["trials"] <= 6
    assert all(t["proposer"] == "heuristic" and t["rationale"] for t in lock["trials"])
    assert lock["selection"]["pareto_front"]
    assert lock["drift_guard"]["history"][0]["event"] == "baseline"
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert sha256_file(bundle / name) == digest
    assert f"PARAMETER num_ctx {lock['runtime']['ctx_size']}" in (bundle / "Modelfile").read_text()
    assert (bundle / "haqa-smollm2-135m.service").exists() and (bundle / "dev.haqa.smollm2-135m.plist").exists()
    assert bundle.with_name(bundle.name + ".tar.gz").exists()


def test_report_compares_with_the_default_and_the_unquantized_model(bundle):
    lock = json.loads((bundle / "haqa.lock.json").read_text())
    comparison = lock["comparison"]
    default, unquantized = comparison["contenders"]["default"], comparison["contenders"]["unquantized"]
    assert default["quant"] == "Q4_K_M" and unquantized["quant"] == "F16"
    for side in (default, unquantized):
        assert len(side["decode"]["per_round"]) == comparison["rounds"] == 3
        assert side["decode"]["basis"].startswith("measured") and side["peak_rss_bytes"] > 0
        assert side["quality"]["kld_mean"] >= 0
    assert unquantized["peak_rss_bytes"] > default["peak_rss_bytes"]  # F16 weights are about 3x Q4_K_M's
    assert default["quality"]["kld_mean"] > unquantized["quality"]["kld_mean"]
    for name in ("tuned/default", "tuned/unquantized"):
        ratio = comparison["ratios"][name]
        assert ratio["decode"]["rounds"] == 3
        assert ratio["decode"]["min"] <= ratio["decode"]["median"] <= ratio["decode"]["max"]
    report = (bundle / "REPORT.md").read_text()
    assert "| tuned/default | x" in report and "| tuned/unquantized | x" in report
    assert "![decode speed against KLD for every trial](pareto.png)" in report
    for trial in lock["trials"]:
        assert trial["name"] in report
    png = (bundle / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert {"REPORT.md", "pareto.png"} <= set(lock["files"])


def test_the_bundles_llama_server_was_load_tested_against_the_default_deployment(bundle):
    """The final word ends with the load test of llama-server with the bundle's flags (the deployed
    context included) against the default deployment's, and the lock and REPORT.md say what decided."""
    lock = json.loads((bundle / "haqa.lock.json").read_text())
    assert lock["schema"] == 3
    assert lock["selection"]["context"]["tokens"] == lock["runtime"]["ctx_size"] == 2048
    assert lock["selection"]["context"]["why"] == "the recipe's min_context"
    load = lock["comparison"]["load_test"]
    assert load["rounds"] == 3 and load["concurrency"] == 1 and load["requests_per_client"] == 2
    shipped = load["contenders"]["default" if "default deployment is chosen" in load["decided"] else "tuned"]
    assert shipped["server_args"] == lock["runtime"]["server_args"] and shipped["quant"] == lock["model"]["file_type"]
    for side in load["contenders"].values():
        assert len(side["request_s"]["per_round"]) == 3 and side["requests_per_round"] == 2
        assert 0 < side["ttft_s"]["median"] < side["request_s"]["median"]
        assert side["decode_tps"]["median"] > 0 and side["peak_rss_bytes"] > 0
    report = (bundle / "REPORT.md").read_text()
    assert "## Through llama-server: the load test" in report and f"What decided: {load['decided']}." in report
    if "default" in load["contenders"]:
        assert load["contenders"]["default"]["quant"] == "Q4_K_M"
        ratio = load["ratios"]["tuned/default"]["request_s"]
        assert ratio["rounds"] == 3 and ratio["min"] <= ratio["median"] <= ratio["max"]
        assert "| tuned/default | x" in report.split("## Through llama-server")[1]


def test_bundled_gguf_loads_in_llama_cpp_python(bundle):
    from haqa.toolchain.bindings import llama_class

    Llama = llama_class()  # noqa: N806 - the bindings' class, with this machine's llama.cpp library
    gguf_file = next(bundle.glob("*.gguf"))
    llm = Llama(model_path=str(gguf_file), n_ctx=256, n_threads=2, verbose=False)
    try:
        assert llm.n_vocab() == 49152
        assert llm.tokenize(b"hello")
    finally:
        llm.close()


def test_run_sh_serves_a_chat_completion(bundle):
    from openai import OpenAI

    port = free_port()
    proc = subprocess.Popen([str(bundle / "run.sh"), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                models = client.models.list()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                    pytest.fail(f"llama-server did not come up on port {port}:\n{out[-3000:]}")
                time.sleep(0.5)
        assert any(m.id == "smollm2-135m" for m in models.data)
        reply = client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0)
        assert reply.choices[0].message.content.strip()
        assert reply.usage.completion_tokens > 0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_second_deploy_reuses_every_cache(bundle, home):
    start = time.monotonic()
    proc = run_haqa(home, "deploy", "--target", "local", "--recipe", "smollm2-135m", "--out", str(bundle),
                    "--agent", "heuristic", timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "quantizing" not in proc.stderr and "building llama.cpp" not in proc.stderr
    assert "measuring" not in proc.stderr and "reference logits" not in proc.stderr
    assert "resuming:" in proc.stderr and "0 new trial(s)" in proc.stderr
    assert time.monotonic() - start < 60


def test_from_lock_reproduces_the_choice_without_searching(bundle, home, tmp_path):
    out = tmp_path / "again"
    proc = run_haqa(home, "deploy", "--from-lock", str(bundle), "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "(no search)" in proc.stderr and "matches the lock" in proc.stderr
    assert "measuring" not in proc.stderr and "comparison round" not in proc.stderr
    old, new = (json.loads((d / "haqa.lock.json").read_text()) for d in (bundle, out))
    assert new["model"]["sha256"] == old["model"]["sha256"] == sha256_file(next(out.glob("*.gguf")))
    assert new["runtime"] == old["runtime"] and new["trials"] == old["trials"]
    check = new["reproduced_from_lock"]
    assert check["weights_match_lock"] and check["decode_ratio_to_lock"] > 0
    assert new["metrics"]["bench"]["decode"]["repetitions"] >= 3 and new["metrics"]["quality"]["kld_mean"] >= 0
    assert "## Reproduced from a lock" in (out / "REPORT.md").read_text()


def test_context_max_deploys_the_largest_context_that_fits_and_measures_its_depth(home, tmp_path):
    """`context = "max"` on this machine as a device with 1.2 GiB of RAM (1 GiB of it headroom): the bundle
    gets the largest context the memory model lets Q4_1 have there (below SmolLM2's training context, 8192),
    the predictions for it and for one step more are recorded, and decode is measured at its depth."""
    text = (REPO / "recipes" / "smollm2-135m.toml").read_text()
    text = text.replace('name = "smollm2-135m"', 'name = "smollm2-ctx"')
    text = re.sub(r'(?m)^quants = .*$', 'quants = ["Q4_1"]\ncompare_rounds = 0', text)  # the source's own
    text = re.sub(r"(?m)^max_trials = .*$", "max_trials = 1", text)
    text = text.replace("[workload]\n", '[workload]\ncontext = "max"\n')
    for folder in ("recipes", "targets"):
        (tmp_path / folder).mkdir()
    (tmp_path / "recipes" / "smollm2-ctx.toml").write_text(text)
    (tmp_path / "targets" / "local-small.toml").write_text(
        'name = "local-small"\ndescription = "this machine, as a device with 1.2 GiB of RAM"\ndetect = true\n'
        '[hardware]\nram_gib = 1.2\n[connect]\nkind = "local"\n[limits]\nmemory_headroom_gib = 1.0\n')
    out = tmp_path / "dist"
    proc = subprocess.run([*HAQA, "deploy", "--target", "local-small", "--recipe", "smollm2-ctx", "--out", str(out),
                           "--agent", "heuristic"], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "HAQA_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    lock = json.loads((out / "haqa.lock.json").read_text())
    context = lock["selection"]["context"]
    tokens, budget = context["tokens"], 0.2 * 2**30
    assert tokens == lock["runtime"]["ctx_size"] and tokens % 256 == 0 and 2048 < tokens < 8192
    assert context["why"].startswith("the largest context that fits; ") and f"{tokens + 256} does not" in context["why"]
    assert context["predicted_host_bytes"] <= budget < context["next_step_predicted_host_bytes"]
    assert lock["runtime"]["server_args"][lock["runtime"]["server_args"].index("--ctx-size") + 1] == str(tokens)
    check = context["depth_check"]
    assert check["depth"] == tokens - 64 and check["decode"]["depth"] == tokens - 64
    assert 0 < check["decode"]["mean"] and check["at_search_depth_tps"] > 0
    assert f"context: {tokens} tokens" in proc.stderr and f"measuring decode at depth {tokens - 64}" in proc.stderr
    assert f"Context: {tokens} tokens" in (out / "REPORT.md").read_text()
