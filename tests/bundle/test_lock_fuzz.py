"""Property-based: locks broken in generated ways (a value replaced by one of another type or by hostile
text, a key removed or added, the JSON or its UTF-8 damaged) go through the real CLI's
`haqa deploy --from-lock` (a lone lock file, and a bundle whose SHA256SUMS was written again, as
anyone can) and `haqa ship`: each ends with exit 2 and one message, never a traceback.

The lock is a real deploy's (tests/data/lock-smollm2-135m.json) pointed at a project of its own: a
recipe whose source is a tiny GGUF and an SSH target on a closed port of 127.0.0.1, so a lock that
passes every check ends at "cannot reach" instead of building llama.cpp.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haqa.bundle import write_bundle
from haqa.bundle.lock import parse
from haqa.config import fingerprint, load_recipe, load_target
from haqa.hashing import sha256_file
from haqa.runtime import RuntimeConfig
from tests.support.bundles import DEPLOYED
from tests.support.files import write_tiny_gguf
from tests.support.homes import REAL_HOME, shared_home
from tests.support.strategies import scalars

CONFIG = RuntimeConfig(threads=2, threads_batch=2, ctx_size=1024)
TARGET = """
name = "closed"
os = "linux"
[hardware]
arch = "x86_64"
cores = 2
ram_gib = 8
[connect]
kind = "ssh"
host = "127.0.0.1"
port = 1
reconnects = 0
connect_timeout_s = 2
"""
RECIPE = """
name = "tiny"
[source]
path = "{model}"
[search]
quants = ["F16", "Q8_0"]
[quality]
max_kld = 0.1
[workload]
min_context = 512
prompt_tokens = 64
gen_tokens = 16
"""


@pytest.fixture(scope="module")
def fuzz_project(tmp_path_factory):
    """(project root, the good lock, the good bundle): made once, copied per example."""
    root = tmp_path_factory.mktemp("lock-fuzz")
    home, real = root / "haqa-home", REAL_HOME
    shared_home(home, real, ("sources",))  # the llama.cpp source (its list of architectures) only
    (root / "targets").mkdir()
    (root / "recipes").mkdir()
    model = write_tiny_gguf(root / "tiny.gguf")
    (root / "targets" / "closed.toml").write_text(TARGET)
    (root / "recipes" / "tiny.toml").write_text(RECIPE.format(model=model))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HAQA_HOME", str(home))
        target, recipe = load_target("closed"), load_recipe("tiny")
        lock = copy.deepcopy(DEPLOYED)
        lock["target"] = {"name": "closed", "sha256": fingerprint(target), "facts": target.model_dump(mode="json")}
        lock["recipe"].update(name="tiny", sha256=fingerprint(recipe))
        lock["source_model"].update(sha256=sha256_file(model), file_type="F16")
        lock["model"].update(file_type="Q8_0")
        lock["runtime"] = {**CONFIG.as_dict(), "server_args": CONFIG.server_args()}
        placeholder = root / "placeholder-server"
        placeholder.write_text("#!/bin/sh\nexit 1\n")
        bundle = write_bundle(root / "good" / "tiny@closed", model=model, model_name="tiny-Q8_0.gguf",
                              server_binary=placeholder, lock=parse(lock, root / "lock.json"),
                              server_args=CONFIG.server_args(),
                              label="tiny@closed", alias="tiny", config=CONFIG, recipe="tiny")
    return root, json.loads((bundle / "haqa.lock.json").read_text()), bundle


# The parts of a lock the two commands read; the record of the search (trials, comparison, ...) is
# only shown in REPORT.md, so it gets a small share of the examples.
READ = ("schema", "target", "recipe", "model", "runtime", "metrics", "source_model", "llama_cpp", "files", "created")


def _paths(value, prefix=()):
    """Every key path into the lock (list items too, up to a few per list)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if prefix or k in READ:
                yield prefix + (k,)
                yield from _paths(v, prefix + (k,))
            else:
                yield prefix + (k,)
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


@st.composite
def broken_lock(draw, base: dict) -> bytes:
    lock = copy.deepcopy(base)
    where = draw(st.sampled_from(sorted(_paths(lock), key=str)))
    parent = lock
    for k in where[:-1]:
        parent = parent[k]
    how = draw(st.sampled_from(["replace", "replace", "remove", "unknown", "table", "json", "encoding"]))
    if how == "replace":
        parent[where[-1]] = draw(scalars | st.none())
    elif how == "remove":
        del parent[where[-1]]
    elif how == "unknown" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=12))] = draw(scalars)
    elif how == "table":
        parent[where[-1]] = draw(st.sampled_from([{}, [], {"x": 1}, [[]]]))
    data = json.dumps(lock).encode()
    if how in ("json", "encoding"):
        cut = draw(st.integers(0, len(data)))
        junk = [b"{", b"]", b'"', b",", b"\x00"] if how == "json" else [b"\xe9", b"\xff\xfe", b"\xc3"]
        data = data[:cut] + draw(st.sampled_from(junk)) + data[cut:]
    return data


def _rewrite_sums(bundle: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(bundle).as_posix()}\n"
             for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    (bundle / "SHA256SUMS").write_text("".join(lines))


def _clean_refusal(haqa, *args: str) -> str:
    code, out, err = haqa(*args)
    assert "Traceback" not in err and "internal error" not in err, err
    assert code == 2, f"exit {code} for haqa {' '.join(args)}:\n{out}{err}"
    return err


def test_the_unbroken_lock_gets_as_far_as_the_device(fuzz_project, haqa, monkeypatch):
    root, _, bundle = fuzz_project
    monkeypatch.chdir(root)
    monkeypatch.setenv("HAQA_HOME", str(root / "haqa-home"))
    for given_ in (bundle, bundle / "haqa.lock.json"):
        err = _clean_refusal(haqa, "deploy", "--from-lock", str(given_), "--out", str(root / "out"))
        assert "cannot reach closed" in err, err
    assert "cannot reach closed" in _clean_refusal(haqa, "ship", str(bundle), "--target", "closed")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_broken_locks_through_from_lock_and_ship_never_end_in_a_traceback(fuzz_project, haqa, monkeypatch,
                                                                          tmp_path_factory, data):
    root, lock, good = fuzz_project
    monkeypatch.chdir(root)
    monkeypatch.setenv("HAQA_HOME", str(root / "haqa-home"))
    broken = data.draw(broken_lock(lock))
    work = tmp_path_factory.mktemp("example")
    lone = work / "haqa.lock.json"
    lone.write_bytes(broken)
    bundle = work / "bundle" / good.name
    shutil.copytree(good, bundle)
    (bundle / "haqa.lock.json").write_bytes(broken)
    _rewrite_sums(bundle)
    _clean_refusal(haqa, "deploy", "--from-lock", str(lone), "--out", str(work / "out"))
    _clean_refusal(haqa, "deploy", "--from-lock", str(bundle), "--out", str(work / "out"))
    _clean_refusal(haqa, "ship", str(bundle), "--target", "closed")
    assert not (work / "out").exists() and not (root / "haqa-home" / "toolchains").exists()
