"""`haqa ship`: a bundle checked, uploaded by hash, started and health-checked on a device.

The device is this machine behind the real OpenSSH server of conftest (no user systemd there, so the
server runs as a detached process). The slow tests ship a real bundle: the real SmolLM2 GGUF and the
static llama-server from the cached toolchain, answering a real chat completion through the openai
client. Fast tests ship a small bundle (a tiny GGUF, and a placeholder where llama-server goes, which
they never start) to check what is refused before anything runs. Neither an Ollama server nor the
Hugging Face Hub can run here, so stand-in HTTP servers record the exact requests their clients send.
"""

from __future__ import annotations

import http.client
import http.server
import json
import time
import urllib.request

import pytest

from haqa.probe import local_facts
from tests.support.bundles import LABEL, edit_lock
from tests.support.http import StandIn, json_answer
from tests.support.net import free_port
from tests.support.ship import no_traceback
from tests.support.sshd import connect_for

# -- fast: runner forwarding, refusals, clients ---------------------------------------------------

def test_forward_reaches_a_port_on_the_device_and_closes_a_refused_one(sshd, tmp_path):
    from haqa.runner.ssh import SshRunner

    runner = SshRunner(connect_for(sshd, tmp_path), label="loop")
    try:
        with StandIn(json_answer(lambda m, p, b: (200, {"path": p}))) as web:
            port = int(web.url.rsplit(":", 1)[1])
            with runner.forward(port) as (host, local_port):
                assert local_port != port
                with urllib.request.urlopen(f"http://{host}:{local_port}/x", timeout=10) as r:
                    assert json.load(r) == {"path": "/x"}
        with runner.forward(free_port()) as (host, local_port):
            start = time.monotonic()
            with pytest.raises((OSError, http.client.HTTPException)):
                urllib.request.urlopen(f"http://{host}:{local_port}/", timeout=10)
            assert time.monotonic() - start < 5  # refused at once, not after a timeout
    finally:
        runner.close()


@pytest.mark.parametrize("damage, message", [
    (lambda b: ((b / "run.sh").unlink(), (b / "run.sh").write_text("#!/bin/sh\nexec evil\n")),
     "run.sh does not match SHA256SUMS"),
    (lambda b: (b / "Modelfile").unlink(), "Modelfile is listed in SHA256SUMS but missing"),
    (lambda b: (b / "SHA256SUMS").write_text((b / "SHA256SUMS").read_text() + f"{'0' * 64}  ../../.ssh/x\n"),
     "not a plain path inside the bundle"),
])
def test_a_damaged_bundle_is_refused_before_anything_is_uploaded(small_bundle, device, haqa, damage, message):
    damage(small_bundle)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop")
    assert code == 2, err
    assert message in err and "hint:" in err, err
    no_traceback(err)
    assert not device.parent.exists()  # nothing reached the device


@pytest.mark.parametrize("change, reason", [
    (lambda lock: lock["target"]["facts"].update(os="macos"), "the bundle is for macos, the device runs linux"),
    (lambda lock: lock["target"]["facts"]["hardware"].update(arch="aarch64"),
     "the bundled llama-server is a native aarch64 program, the device's CPU is x86_64"),
    (lambda lock: lock["target"]["facts"]["hardware"]["cpu_features"].append("sve2"),
     "built for the CPU it was measured on (GGML_NATIVE), which has sve2"),
    (lambda lock: lock["metrics"]["memory"]["deployment_predicted"].update(host_bytes=4096 * 2**30),
     "the memory model predicts a peak of 4096.00 GiB in RAM (context 512); with the target's 1 GiB headroom "
     "that needs 4097.00 GiB, and the device has"),
])
def test_a_device_the_bundle_does_not_fit_is_refused_with_the_reason(small_bundle, device, haqa, change, reason):
    if local_facts()["arch"] != "x86_64":
        pytest.skip("the expected messages name this machine as x86_64")
    edit_lock(small_bundle, change)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop")
    assert code == 2, err
    assert f"{LABEL} cannot run on loop: " in err and reason in err, err
    assert "hint: deploy the recipe for this device" in err
    no_traceback(err)
    assert not device.parent.exists()


def test_a_port_in_use_on_the_device_is_refused(small_bundle, device, haqa):
    with StandIn(json_answer(lambda m, p, b: (200, {"status": "ok"}))) as other:
        port = other.url.rsplit(":", 1)[1]
        code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", port)
    assert code == 2, err
    assert f"port {port} on loop is already in use (something answered HTTP 200)" in err and "--port" in err
    no_traceback(err)
    assert not (device / "server.pid").exists()


@pytest.mark.parametrize("args, message", [
    ([], "say where to ship the bundle"),
    (["--target", "loop", "--ollama-name", "x"], "--ollama-host and --ollama-name go with --ollama"),
    (["--ollama"], "--ollama needs --target"),
    (["--target", "loop", "--host", "a b"], "is not an address"),
    (["--ollama", "--ollama-host", "127.0.0.1:11434"], "is not an http(s) URL"),
])
def test_bad_options_get_one_clear_message(small_bundle, device, haqa, args, message):
    code, out, err = haqa("ship", str(small_bundle), *args)
    assert code == 2 and message in err, err
    no_traceback(err)


def test_a_bad_hub_repo_name_is_refused_before_the_device_is_touched(small_bundle, device, haqa):
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--to-hf", "not a valid name!")
    assert code == 2 and "is not a Hugging Face repo name" in err, err
    assert "reading the facts" not in err and not device.parent.exists()
    no_traceback(err)
