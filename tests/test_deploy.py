"""One real `haqa deploy` on the local target, and its bundle checked the way a user would use it."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haqa.hashing import sha256_file
from haqa.paths import cache_home
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow
HAQA = [sys.executable, "-m", "haqa"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A haqa home that shares the built toolchain and fetched models but no measurements, so the
    deploy below measures every candidate for real instead of reading earlier results."""
    real = cache_home()
    home = tmp_path_factory.mktemp("haqa-home")
    for sub in ("sources", "src", "toolchains", "models"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (home / sub).symlink_to(real / sub)
    return home


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
    feasible = [t for t in lock["trials"] if t["status"] == "ok" and t["within_budget"]]
    assert decode["mean"] == max(t["bench"]["decode"]["mean"] for t in feasible)  # objective: decode tok/s
    quality = lock["metrics"]["quality"]
    assert quality["kld_mean"] <= lock["recipe"]["quality_budget"]["max_kld"] and quality["basis"].startswith("measured")
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


def test_bundled_gguf_loads_in_llama_cpp_python(bundle):
    from llama_cpp import Llama

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
