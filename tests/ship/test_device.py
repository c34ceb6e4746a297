"""The real bundle (the SmolLM2 GGUF and the cached static llama-server) shipped to the loopback
device: started, health-checked with a real chat completion, its log shown when it fails, and Ollama
on the device reached through the SSH forward."""

from __future__ import annotations

import json
import os

import pytest

from haqa.hashing import sha256_file
from tests.support.bundles import LABEL, RECIPE, make_bundle
from tests.support.files import write_tiny_gguf
from tests.support.http import StandIn, json_answer, ollama_answer
from tests.support.net import free_port
from tests.support.ship import alive, no_traceback, tok_per_s


@pytest.mark.slow
def test_ship_to_the_ssh_device_starts_the_server_and_passes_the_health_check(real_bundle, device, haqa):
    from openai import OpenAI

    port = free_port()
    code, out, err = haqa("ship", str(real_bundle), "--target", "loop", "--port", str(port))
    assert code == 0, err
    files = len((real_bundle / "SHA256SUMS").read_text().splitlines())
    assert f"uploaded {files} file(s), 0 already on the device" in err
    assert "started llama-server as a detached process" in err and "no user systemd on the device" in err
    assert tok_per_s(err) > 0 and "client-side" in out and "one chat completion through the openai client" in err
    assert out.startswith(f"{LABEL} on loop: http://127.0.0.1:{port}/v1 (detached process")
    for name in ("run.sh", "bin/llama-server"):
        assert os.access(device / name, os.X_OK)
    assert oct((device / "haqa.lock.json").stat().st_mode & 0o777) == "0o644"
    first = int((device / "server.pid").read_text())
    assert alive(first)
    # The server answers on the device's own port too (the device is this machine).
    models = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30).models.list()
    assert [m.id for m in models.data] == [RECIPE]

    code, out, err = haqa("ship", str(real_bundle), "--target", "loop", "--port", str(port))
    assert code == 0, err
    assert f"uploaded 0 file(s), {files} already on the device (same sha256)" in err
    assert "stopped the running server" in err and tok_per_s(err) > 0
    second = int((device / "server.pid").read_text())
    assert second != first and alive(second) and not alive(first)


@pytest.mark.slow
def test_a_server_that_fails_to_start_shows_its_log(real_parts, tmp_path, device, haqa):
    """The real llama-server, given a GGUF it cannot run (tensors but no vocabulary), exits; ship says
    so with the tail of its log and exits non-zero."""
    _, server = real_parts
    bundle = make_bundle(tmp_path / "bad" / LABEL, write_tiny_gguf(tmp_path / "tiny.gguf"), server,
                         peak_bytes=64 * 2**20)
    code, out, err = haqa("ship", str(bundle), "--target", "loop", "--port", str(free_port()), "--wait", "60")
    assert code == 2, err
    assert "llama-server stopped before it answered /health; the last lines of its log:" in err
    assert "failed to load model" in err or "error" in err.lower()
    assert "hint: the server is installed as a detached process" in err
    no_traceback(err)


@pytest.mark.slow
def test_ollama_on_the_device_is_reached_through_the_ssh_forward(real_bundle, device, haqa):
    """No Ollama server can run here, so a stand-in listens on the device's Ollama port (this machine's
    11434) and records what the ollama client sends through the SSH port forward."""
    try:
        standin = StandIn(json_answer(ollama_answer), port=11434)
    except OSError:
        pytest.skip("port 11434 is in use on this machine")
    with standin:
        code, out, err = haqa("ship", str(real_bundle), "--target", "loop", "--port", str(free_port()), "--ollama",
                              "--ollama-name", "smol-test")
    assert code == 0, err
    assert "ollama: smol-test" in out and tok_per_s(err) > 0
    digest = sha256_file(real_bundle / f"{RECIPE}-Q4_1.gguf")
    paths = [r["path"] for r in standin.requests]
    assert paths == ["/api/tags", f"/api/blobs/sha256:{digest}", "/api/create"]
    assert json.loads(standin.requests[-1]["body"])["model"] == "smol-test"
