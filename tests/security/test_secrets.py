"""Secrets are neither printed nor stored nor published (haqa/secrets.py), and publishing fails cleanly.

No real server echoes an API key back, nor can the Hugging Face Hub or Ollama run here, so hostile
stand-ins on 127.0.0.1 play those parts: an OpenAI-compatible endpoint whose 401/500 error bodies echo
the Authorization header they were sent (as a careless proxy or a debugging server does), a Hub that
refuses connections, resets them, answers 500 or HTML, and an HTTP server that is not Ollama. Everything
else is real: the `haqa` CLI in a subprocess, a real deploy with the real llama.cpp tools (slow), the
real llama-server started by a real bundle's run.sh (slow).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from haqa import secrets
from tests.support.files import REPO
from tests.support.http import StandIn, json_reply
from tests.support.net import free_port

HAQA = [sys.executable, "-m", "haqa"]
API_KEY = "haqa-canary-key-7d41c9e0b2a8f356"  # no known key shape: only its being OPENAI_API_KEY masks it
UPSTREAM = "Bearer upstream-5e8a21f0c7d94b36"  # a token the endpoint adds of its own: only its shape masks it
HF_TOKEN = "hf_standin_" + "q7" * 15


# -- a hostile HTTP server ---------------------------------------------------------------------------

def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err


# -- the redaction rules -----------------------------------------------------------------------------

def test_redaction_masks_secret_values_and_credential_shapes_and_nothing_else(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("HAQA_SSH_KEY_PASSPHRASE", "correct horse battery")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", 'pw"0123/456789')
    monkeypatch.setenv("SOME_TOKEN", "short")  # below the minimum length: not a secret by value
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama:s3cr3t-pass@gpu-box:11434")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-token"))  # names a file: the path is not secret
    (tmp_path / "hf-token").write_text("hf_filetoken_abcdefghijkl\n")  # ... its content is
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    secrets.remember("oidc-exchanged-token-4f2a9c")
    cases = {
        f"401: Incorrect API key provided: {API_KEY}.": "401: Incorrect API key provided: ***.",
        f"{{'Authorization': 'Bearer {API_KEY}'}}": "{'Authorization': 'Bearer ***'}",
        "Authorization: Basic dXNlcjpwYXNz": "Authorization: Basic ***",
        f"upstream said {UPSTREAM}": "upstream said Bearer ***",
        "key sk-proj-Ab3dEf6hIj9kLm2nOp5q in a message": "key *** in a message",
        "token hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567 here": "token *** here",
        "cannot reach http://alice:hunter2@proxy:3128/ now": "cannot reach http://***:***@proxy:3128/ now",
        "GET /v1/models?api_key=abc123xyz&x=1": "GET /v1/models?api_key=***&x=1",
        "env: AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG": "env: AWS_SECRET_ACCESS_KEY=***",
        "passphrase correct horse battery was refused": "passphrase *** was refused",
        'pw"0123/456789 and s3cr3t-pass': "*** and ***",
        # ... also as it is written inside a JSON string and a URL
        json.dumps({"password_is": 'pw"0123/456789'}): '{"password_is": "***"}',
        "http://h/login?p=pw%220123%2F456789": "http://h/login?p=***",
        f"the token {HF_TOKEN}; the file has hf_filetoken_abcdefghijkl": "the token ***; the file has ***",
        "got oidc-exchanged-token-4f2a9c": "got ***",
        # a secret cut off by a truncation at either end of a text
        f"Error code: 401 - {API_KEY[:11]}": "Error code: 401 - ***",
        f"{API_KEY[-9:]} was echoed": "*** was echoed",
    }
    for text, expected in cases.items():
        assert secrets.redact(text) == expected, text
    # What is not a secret stays as it is: ordinary words, short values, paths, hashes, knob names.
    untouched = ["short words: false, short, token, key, password, Bearer token",
                 f"the token file is {tmp_path / 'hf-token'}", "sha256 " + "ab" * 32,
                 "quant=Q4_K_M kv_type=q8_0 threads=2 gen_tokens=16 TOKENIZERS_PARALLELISM=false", "https://huggingface.co/me/smollm2-haqa",
                 "the key passphrase is wrong: HAQA_SSH_KEY_PASSPHRASE"]
    for text in untouched:
        assert secrets.redact(text) == text
    nested = secrets.redact_obj({"trials": [{"rationale": f"[LLM unavailable: {API_KEY}]", "kld": 0.01}],
                                 API_KEY: (1, f"Bearer {API_KEY}")})
    assert nested == {"trials": [{"rationale": "[LLM unavailable: ***]", "kld": 0.01}], "***": [1, "Bearer ***"]}
    assert secrets.redact_bytes(b"\x89PNG\r\n\x1a\n\xff" + API_KEY.encode()).startswith(b"\x89PNG")


def test_a_stream_redacts_a_secret_written_in_pieces(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    got = []

    class Sink:
        def write(self, s):
            got.append(s)

        def flush(self):
            pass

    stream = secrets.RedactingStream(lambda: Sink())
    for piece in ("the key ", API_KEY[:8], API_KEY[8:], " leaked\n", "and ", API_KEY):
        stream.write(piece)
    stream.flush()
    assert "".join(got) == "the key *** leaked\nand ***"


def test_an_internal_error_traceback_is_printed_redacted(haqa, monkeypatch):
    """A bug whose exception text holds a secret: the traceback is printed, without the secret."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)

    def boom(*a, **k):
        raise RuntimeError(f"request failed with headers {{'Authorization': 'Bearer {API_KEY}'}} {UPSTREAM}")

    monkeypatch.setattr("haqa.cli._catalog.list_names", boom)
    code, out, err = haqa("recipes", "list")
    assert code == 1 and "Traceback" in err and "RuntimeError: request failed" in err, err
    assert API_KEY not in out + err and UPSTREAM not in out + err
    assert "Bearer ***" in err


# -- publishing: the Hub and Ollama fail with one clear message ------------------------------------

def _ship_to_hub(bundle: Path, tmp_path: Path, endpoint: str, repo: str = "me/smollm2-haqa"):
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": HF_TOKEN, "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf-home"), "HAQA_HOME": str(tmp_path / "haqa-home")}
    return subprocess.run([*HAQA, "ship", str(bundle), "--to-hf", repo], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=180)


def _echo_token(status: int, kind: str = "application/json"):
    """A Hub that fails every request with `status`, echoing the Authorization header it was sent."""
    def answer(method, path, headers, body):
        if kind == "text/html":
            return status, kind, f"<html><body><h1>Oops</h1>{headers.get('authorization')}</body></html>".encode()
        said = f"the server broke; request had Authorization: {headers.get('authorization')}"
        return json_reply(status, {"error": said})
    return answer


HUB_FAILURES = {
    "500 echoing the token": (_echo_token(500), ["the Hub at", "answered HTTP 500", "try again"]),
    "HTML error page": (_echo_token(502, "text/html"), ["answered HTTP 502"]),
    "HTML with 200": (_echo_token(200, "text/html"), ["did not answer as a Hugging Face Hub does", "HF_ENDPOINT"]),
    "connection reset": (lambda *a: "reset", ["the connection to the Hub at", "HF_ENDPOINT"]),
}


@pytest.mark.parametrize("case", HUB_FAILURES)
def test_a_failing_hub_gives_one_clear_message_without_the_token(small_bundle, tmp_path, case):
    answer, says = HUB_FAILURES[case]
    with StandIn(answer) as hub:
        proc = _ship_to_hub(small_bundle, tmp_path, hub.url)
    assert proc.returncode == 2, proc.stderr
    for words in says:
        assert words in proc.stderr, proc.stderr
    _no_traceback(proc.stderr)
    assert HF_TOKEN not in proc.stdout + proc.stderr and HF_TOKEN[:12] not in proc.stderr


def test_a_hub_that_refuses_connections_is_a_clear_error(small_bundle, tmp_path):
    proc = _ship_to_hub(small_bundle, tmp_path, f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2 and "cannot connect to the Hub at http://127.0.0.1:" in proc.stderr, proc.stderr
    assert "HF_ENDPOINT" in proc.stderr
    _no_traceback(proc.stderr)


@pytest.mark.parametrize("repo", ["not a valid name!", "me/x/y", "../x", "me/" + "x" * 100])
def test_an_invalid_hub_repo_name_is_refused_before_anything_is_sent(small_bundle, tmp_path, repo):
    with StandIn(lambda *a: json_reply(500, {})) as hub:
        proc = _ship_to_hub(small_bundle, tmp_path, hub.url, repo=repo)
    assert proc.returncode == 2 and f"--to-hf {repo!r} is not a Hugging Face repo name" in proc.stderr, proc.stderr
    assert "namespace/name" in proc.stderr and not hub.requests
    _no_traceback(proc.stderr)


NOT_OLLAMA = {
    "an HTML page": (lambda *a: (200, "text/html", b"<html>a router's login page</html>"),
                     "does not answer as Ollama does"),
    "a 500": (lambda *a: json_reply(500, {"detail": "boom"}), "does not answer as Ollama does"),
    "a reset": (lambda *a: "reset", "no Ollama server answers"),
    # answers /api/tags as Ollama does, then nothing else (like llama-server's Ollama-compatible routes)
    "tags only": (lambda m, p, h, b: (json_reply(200, {"models": []}) if p == "/api/tags"
                                      else (404, "text/html", b"<p>no")),
                  "refused to create"),
}


@pytest.mark.parametrize("case", NOT_OLLAMA)
def test_an_ollama_host_that_is_not_ollama_is_a_clear_error(small_bundle, haqa, case):
    answer, says = NOT_OLLAMA[case]
    with StandIn(answer) as server:
        code, out, err = haqa("ship", str(small_bundle), "--ollama", "--ollama-host", server.url)
    assert code == 2 and says in err, err
    _no_traceback(err)


# -- slow: a real deploy against a hostile endpoint, and the real server's environment --------------

SHAPE = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 2048,
         "tie_word_embeddings": True}
RECIPE = """\
name = "secret-leak"
[source]
synthetic = "{shape}"
[search]
quants = ["Q8_0", "Q4_0"]
max_trials = 2
patience = 10
compare_rounds = 0
[quality]
max_kld = 0.1
[workload]
min_context = 256
prompt_tokens = 16
gen_tokens = 4
"""


def _echoing_openai(method, path, headers, body):
    """An OpenAI-compatible endpoint that rejects every request, echoing the Authorization header it got
    (401 first, then 500s, which the openai client retries once), with an upstream token of its own."""
    status = 401 if not _echoing_openai.calls else 500
    _echoing_openai.calls += 1
    return json_reply(status, {"error": {"message": f"bad key {headers.get('authorization')} (upstream: {UPSTREAM})",
                                    "type": "invalid_request_error", "code": "invalid_api_key"}})


_echoing_openai.calls = 0


@pytest.fixture
def project(tmp_path) -> Path:
    """A project with the synthetic recipe, and a haqa home sharing the cached toolchain (not the trials)."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "shape.json").write_text(json.dumps(SHAPE))
    (tmp_path / "recipes" / "secret-leak.toml").write_text(RECIPE.format(shape=tmp_path / "shape.json"))
    real = Path(os.environ.get("HAQA_HOME") or Path.home() / ".cache" / "haqa")
    for sub in ("sources", "src", "toolchains"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "home" / sub).parent.mkdir(exist_ok=True)
        (tmp_path / "home" / sub).symlink_to(real / sub)
    return tmp_path


def _written_files(*roots: Path):
    """Every file haqa wrote under roots (not the shared toolchain it links to), and every tarball member."""
    for root in roots:
        for path in root.rglob("*"):
            if any(p.is_symlink() for p in (path, *path.parents)) or not path.is_file():
                continue
            yield str(path), path.read_bytes()
            if path.name.endswith(".tar.gz"):
                with tarfile.open(path) as tar:
                    for m in tar.getmembers():
                        if m.isfile():
                            yield f"{path}:{m.name}", tar.extractfile(m).read()


@pytest.mark.slow
def test_an_endpoint_that_echoes_the_api_key_leaks_it_nowhere(project):
    _echoing_openai.calls = 0
    with StandIn(_echoing_openai) as endpoint:
        proc = subprocess.run(
            [*HAQA, "deploy", "--recipe", "secret-leak", "--agent", "openai", "--out", str(project / "bundle")],
            cwd=project, capture_output=True, text=True, timeout=900,
            env={**os.environ, "PYTHONPATH": str(REPO),  # this checkout's haqa, from the project folder too
                 "HAQA_HOME": str(project / "home"), "OPENAI_BASE_URL": f"{endpoint.url}/v1",
                 "OPENAI_API_KEY": API_KEY, "HAQA_LLM_MODEL": "hostile"})
    assert proc.returncode == 0, proc.stderr
    assert _echoing_openai.calls >= 3, "the endpoint was not asked"
    # the failure is reported (redacted), and the heuristic took over
    assert "the openai backend failed: AuthenticationError" in proc.stderr and "Bearer ***" in proc.stderr
    lock = json.loads((project / "bundle" / "haqa.lock.json").read_text())
    assert any(t["proposer"] == "heuristic (llm unavailable)" and "Bearer ***" in t["rationale"]
               for t in lock["trials"])
    leaks = [API_KEY, API_KEY[:12], API_KEY[-12:], UPSTREAM, UPSTREAM.split()[1]]
    assert not [s for s in leaks if s in proc.stdout + proc.stderr]
    written = dict(_written_files(project))
    for name in ("haqa.lock.json", "REPORT.md", "trials/secret-leak@local.sqlite", "bundle.tar.gz:bundle/REPORT.md"):
        assert any(path.endswith(name) for path in written), f"{name} was not written"
    assert any("/logs/" in path for path in written)
    for path, data in written.items():
        for secret in leaks:
            assert secret.encode() not in data, f"{secret!r} leaked into {path}"
    with sqlite3.connect(project / "home" / "trials" / "secret-leak@local.sqlite") as db:
        stored = " ".join(str(r) for r in db.execute("SELECT rationale, error FROM trials"))
    assert "LLM unavailable" in stored and API_KEY not in stored


SERVER_SECRETS = {"OPENAI_API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN, "HAQA_SSH_KEY_PASSPHRASE": "correct horse battery",
                  "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "my_db_password": "pw-0123456789",
                  "OLLAMA_HOST": "http://ollama:s3cr3t-pass@gpu-box:11434"}


@pytest.mark.slow
def test_run_sh_starts_llama_server_without_the_secrets_of_its_environment(real_bundle):
    """However run.sh is started (systemd, launchd, `haqa ship`, by hand) it execs llama-server without
    the secret variables it was given; llama.cpp's own LLAMA_API_KEY is kept, and protects the server."""
    port = free_port()
    env = {**os.environ, **SERVER_SECRETS, "LLAMA_API_KEY": "server-key-0a1b2c3d", "HAQA_PLAIN_SETTING": "kept"}
    server = subprocess.Popen([str(real_bundle / "run.sh"), "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        exe = Path(f"/proc/{server.pid}/exe")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (exe.exists() and exe.resolve().name == "llama-server"):
            time.sleep(0.05)  # run.sh execs llama-server: the same pid
        assert exe.resolve().name == "llama-server"
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{server.pid}/environ").read_bytes().decode().split("\0") if "=" in item)
        assert not set(SERVER_SECRETS) & set(environ), sorted(environ)
        raw = Path(f"/proc/{server.pid}/environ").read_bytes()
        assert not [v for v in SERVER_SECRETS.values() if v.encode() in raw]
        assert environ["LLAMA_API_KEY"] == "server-key-0a1b2c3d" and environ["HAQA_PLAIN_SETTING"] == "kept"
        assert environ["PATH"] == os.environ["PATH"]
        from openai import AuthenticationError, OpenAI

        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:  # until the model is loaded
            try:
                models = OpenAI(base_url=url, api_key="server-key-0a1b2c3d", max_retries=0, timeout=10).models.list()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert [m.id for m in models.data] == ["smollm2-135m"]
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=url, api_key="wrong", max_retries=0, timeout=10).models.list()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
