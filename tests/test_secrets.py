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
import socket
import sqlite3
import struct
import subprocess
import sys
import tarfile
import threading
import time
import http.server
from pathlib import Path

import pytest

from haqa import secrets
from tests.conftest import REPO, free_port, write_tiny_gguf
from tests.test_ship import LABEL, make_bundle

HAQA = [sys.executable, "-m", "haqa"]
API_KEY = "haqa-canary-key-7d41c9e0b2a8f356"  # no known key shape: only its being OPENAI_API_KEY masks it
UPSTREAM = "Bearer upstream-5e8a21f0c7d94b36"  # a token the endpoint adds of its own: only its shape masks it
HF_TOKEN = "hf_standin_" + "q7" * 15


# -- a hostile HTTP server ---------------------------------------------------------------------------

class Hostile:
    """An HTTP/1.1 server on 127.0.0.1: `answer(method, path, headers, body)` returns (status, content
    type, body bytes), or "reset" to drop the connection with a TCP reset instead of answering."""

    def __init__(self, answer):
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests.append((self.command, self.path))
                reply = answer(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if reply == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                status, kind, data = reply
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = _handle

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "Hostile":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(status: int, obj) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj).encode()


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
                 "quant=Q4_K_M kv_type=q8_0 threads=2", "https://huggingface.co/me/smollm2-haqa",
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

@pytest.fixture
def small_bundle(tmp_path) -> Path:
    placeholder = tmp_path / "placeholder-server"
    placeholder.write_text("#!/bin/sh\nexit 1\n")
    return make_bundle(tmp_path / "dist" / LABEL, write_tiny_gguf(tmp_path / "tiny.gguf"), placeholder,
                       peak_bytes=64 * 2**20)


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
        return _json(status, {"error": f"the server broke; request had Authorization: {headers.get('authorization')}"})
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
    with Hostile(answer) as hub:
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
    with Hostile(lambda *a: _json(500, {})) as hub:
        proc = _ship_to_hub(small_bundle, tmp_path, hub.url, repo=repo)
    assert proc.returncode == 2 and f"--to-hf {repo!r} is not a Hugging Face repo name" in proc.stderr, proc.stderr
    assert "namespace/name" in proc.stderr and not hub.requests
    _no_traceback(proc.stderr)


NOT_OLLAMA = {
    "an HTML page": (lambda *a: (200, "text/html", b"<html>a router's login page</html>"), "does not answer as Ollama does"),
    "a 500": (lambda *a: _json(500, {"detail": "boom"}), "does not answer as Ollama does"),
    "a reset": (lambda *a: "reset", "no Ollama server answers"),
    # answers /api/tags as Ollama does, then nothing else (like llama-server's Ollama-compatible routes)
    "tags only": (lambda m, p, h, b: _json(200, {"models": []}) if p == "/api/tags" else (404, "text/html", b"<p>no"),
                  "refused to create"),
}


@pytest.mark.parametrize("case", NOT_OLLAMA)
def test_an_ollama_host_that_is_not_ollama_is_a_clear_error(small_bundle, haqa, case):
    answer, says = NOT_OLLAMA[case]
    with Hostile(answer) as server:
        code, out, err = haqa("ship", str(small_bundle), "--ollama", "--ollama-host", server.url)
    assert code == 2 and says in err, err
    _no_traceback(err)
