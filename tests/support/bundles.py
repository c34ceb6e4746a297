"""Bundles for tests: one as `haqa deploy` writes it from a real deploy's lock (tests/data), one of
placeholder files, and the edits a careless or hostile hand makes to a bundle (with SHA256SUMS kept
consistent, as anyone can)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from haqa.bundle import write_bundle
from haqa.bundle.lock import parse
from haqa.hashing import sha256_file
from haqa.probe import local_facts
from haqa.runtime import RuntimeConfig
from tests.support.files import DATA

# The lock of a real deploy of SmolLM2 (read-only: copy it before changing it).
DEPLOYED = json.loads((DATA / "lock-smollm2-135m.json").read_text())


def lock_with(**marks):
    """A real deploy's lock (tests/data) with these keys added, to tell one bundle written from another."""
    return parse({**DEPLOYED, **marks}, DATA / "lock-smollm2-135m.json")


def fake_bundle(out, tmp_path, **kw):
    """A bundle of placeholder files (fake weights, a server that prints its arguments) with a real lock."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF fake weights")
    server = tmp_path / "fake-server"
    server.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    server.chmod(0o755)
    args = dict(model=model, model_name="m-Q4_0.gguf", server_binary=server,
                server_args=["--threads", "2"], label="m@t", alias="m")
    args.update(kw)
    return write_bundle(out, lock=lock_with(**args.pop("lock", {})), **args)


RECIPE = "smollm2-135m"
LABEL = f"{RECIPE}@local"
CONFIG = RuntimeConfig(threads=2, ctx_size=512, batch_size=512)


def make_bundle(out: Path, model: Path, server: Path, *, peak_bytes: int) -> Path:
    """A bundle as `haqa deploy` writes it: the lock of a real deploy (tests/data), made for this machine
    (the `local` target) with the model, flags and predicted peak given here."""
    facts = local_facts()
    target = {"name": "local", "os": facts.pop("os"), "hardware": facts, "limits": {"memory_headroom_gib": 1.0}}
    lock = copy.deepcopy(DEPLOYED)
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


def append_to_sums(bundle: Path, data: bytes) -> None:
    with open(bundle / "SHA256SUMS", "ab") as f:
        f.write(data)


def lock_a_folder(bundle: Path) -> None:
    (bundle / "haqa.lock.json").unlink()
    (bundle / "haqa.lock.json").mkdir()


# Broken locks, each with the message it gets (tests/bundle/test_from_lock.py gives them to `deploy --from-lock` too).
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
    pytest.param(lock_a_folder, "haqa.lock.json is a folder, where SHA256SUMS lists a file", id="lock a folder"),
    pytest.param(lambda b: append_to_sums(b, b"\xff\xfe\n"), "SHA256SUMS is not UTF-8 text", id="sums not UTF-8"),
]
