"""Publishing a bundle to Ollama and the Hugging Face Hub; neither can run here, so stand-in HTTP
servers record the exact requests their clients send."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from haqa.hashing import sha256_file
from tests.support.bundles import LABEL, RECIPE
from tests.support.files import REPO
from tests.support.http import StandIn, json_answer, ollama_answer
from tests.support.net import free_port
from tests.support.ship import no_traceback


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
    no_traceback(err)


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
    no_traceback(proc.stderr)
