"""`haqa deploy --from-lock` refuses, before anything is built: a bundle whose files do not match its
SHA256SUMS, a lock of the wrong shape, and a locked choice the recipe does not allow.

The bundle is written by the real bundle writer with the lock of a real deploy
(tests/data/lock-smollm2-135m.json) pointed at a project of its own: a recipe `tiny` whose source is a
tiny GGUF, and a target `box`. Every refusal here happens before a runner is made, so nothing runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from haqa.bundle import write_bundle
from haqa.bundle.lock import parse
from haqa.config import fingerprint, load_recipe, load_target
from haqa.errors import UserError
from haqa.hashing import sha256_file
from haqa.model.gguf_facts import read_facts
from haqa.model.source import resolve_model
from haqa.reproduce import deploy_from_lock, read_lock
from haqa.runtime import RuntimeConfig
from tests.support.bundles import DEPLOYED, LOCK_DAMAGE, edit_lock, replace_file
from tests.support.files import write_tiny_gguf
from tests.support.homes import REAL_HOME, shared_home

CONFIG = RuntimeConfig(threads=2, threads_batch=2, ctx_size=1024, cache_type_k="q8_0", cache_type_v="q8_0")

RECIPE = """
name = "tiny"
[source]
path = "{model}"
[search]
quants = ["F16", "Q8_0"]
[quality]
max_kld = 0.1
kv_types = ["f16", "q8_0"]
[workload]
min_context = 512
prompt_tokens = 64
gen_tokens = 16
"""

TARGET = """
name = "box"
os = "linux"
[hardware]
arch = "x86_64"
cores = 2
ram_gib = 8
"""


@pytest.fixture
def bundle(project, tmp_path, monkeypatch) -> Path:
    home, real = tmp_path / "haqa-home", REAL_HOME
    shared_home(home, real, ("sources",))  # the llama.cpp source (its list of architectures) only
    monkeypatch.setenv("HAQA_HOME", str(home))
    model = write_tiny_gguf(tmp_path / "tiny.gguf")
    project.write("recipes/tiny.toml", RECIPE.format(model=model))
    project.write("targets/box.toml", TARGET)
    lock = copy.deepcopy(DEPLOYED)
    lock["target"] = {"name": "box", "sha256": fingerprint(load_target("box")),
                      "facts": load_target("box").model_dump(mode="json")}
    lock["recipe"].update(name="tiny", sha256=fingerprint(load_recipe("tiny")))
    lock["source_model"].update(sha256=sha256_file(model), file_type="F16")
    lock["model"].update(file_type="Q8_0")
    lock["runtime"] = {**CONFIG.as_dict(), "server_args": CONFIG.server_args()}
    placeholder = tmp_path / "placeholder-server"
    placeholder.write_text("#!/bin/sh\nexit 1\n")
    return write_bundle(tmp_path / "dist" / "tiny@box", model=model, model_name="tiny-Q8_0.gguf",
                        server_binary=placeholder, lock=parse(lock, tmp_path / "lock.json"),
                        server_args=CONFIG.server_args(), label="tiny@box", alias="tiny", config=CONFIG, recipe="tiny")


def _nothing_built(tmp_path: Path) -> bool:
    return not (tmp_path / "haqa-home" / "toolchains").exists() and not (tmp_path / "out").exists()


def test_the_locked_choice_passes_the_gate_when_the_recipe_allows_it(bundle):
    """The control for the refusals below: the unedited lock passes."""
    from haqa.reproduce import locked_choice

    lock = read_lock(bundle)
    recipe = load_recipe("tiny")
    model = resolve_model(recipe, Path("recipes"))
    assert locked_choice(lock, load_target("box"), recipe, model, read_facts(model.path)) == ("Q8_0", CONFIG)


def test_a_bundle_with_an_edited_file_is_refused(bundle, tmp_path, haqa):
    (bundle / "run.sh").unlink()
    (bundle / "run.sh").write_text("#!/bin/sh\nexec evil\n")
    for given in (bundle, bundle / "haqa.lock.json"):
        code, out, err = haqa("deploy", "--from-lock", str(given), "--out", str(tmp_path / "out"))
        assert code == 2 and "run.sh does not match SHA256SUMS" in err, err
        assert "Traceback" not in err
    assert _nothing_built(tmp_path)


@pytest.mark.parametrize("change, reason", [
    (lambda lock: lock["model"].update(file_type="Q4_0"),
     "quant='Q4_0' is outside the space; allowed: ['F16', 'Q8_0']"),
    (lambda lock: lock["runtime"].update(ctx_size=256), "context 256 is below the recipe's minimum 512"),
    (lambda lock: lock["runtime"].update(cache_type_k="q4_0", cache_type_v="q4_0"),
     "kv_type='q4_0' is outside the space; allowed: ['f16', 'q8_0']"),
    (lambda lock: lock["runtime"].update(cache_type_v="f16"), "cache_type_v='f16' differs from cache_type_k='q8_0'"),
    (lambda lock: lock["runtime"].update(threads=3), "threads=3 is outside the space; allowed: [1, 2]"),
    (lambda lock: lock["runtime"].update(ctx_size=2**31), "over the 7.00 GiB budget"),
], ids=["quant", "context", "kv type", "kv v", "threads", "memory"])
def test_a_locked_choice_the_recipe_forbids_is_refused_before_anything_is_built(bundle, tmp_path, change, reason):
    edit_lock(bundle, change)
    with pytest.raises(UserError) as e:
        deploy_from_lock(bundle, out=tmp_path / "out")
    assert "is not one recipe tiny allows on box" in e.value.message and reason in e.value.message, e.value.message
    assert "haqa deploy --target box --recipe tiny" in e.value.hint
    assert _nothing_built(tmp_path)


@pytest.mark.parametrize("damage, message", LOCK_DAMAGE)
def test_a_lock_of_the_wrong_shape_gets_one_clear_message(bundle, tmp_path, haqa, damage, message):
    damage(bundle)
    code, out, err = haqa("deploy", "--from-lock", str(bundle), "--out", str(tmp_path / "out"))
    assert code == 2 and message in err and "hint:" in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert _nothing_built(tmp_path)


@pytest.mark.parametrize("name", ["../../../../x", "local\nx", "/etc/passwd.toml"])
def test_a_locked_name_that_is_not_a_name_is_refused(bundle, tmp_path, name):
    """The lock's target name is looked up as a target file when --target is not given."""
    edit_lock(bundle, lambda lock: lock["target"].update(name=name))
    with pytest.raises(UserError, match="'target.name': names are lower case letters"):
        deploy_from_lock(bundle, out=tmp_path / "out")


def test_a_lone_lock_file_is_read_without_sums_and_a_folder_that_is_no_bundle_is_refused(bundle, tmp_path, haqa):
    lone = tmp_path / "copy.lock.json"
    lone.write_bytes((bundle / "haqa.lock.json").read_bytes())
    assert read_lock(lone).recipe.name == "tiny"
    (tmp_path / "haqa.lock.json").mkdir()
    code, out, err = haqa("deploy", "--from-lock", str(tmp_path / "haqa.lock.json"))
    assert code == 2 and "haqa.lock.json is a folder, and not a bundle folder (it has no SHA256SUMS)" in err, err
    replace_file(bundle, "Modelfile", b"FROM ./tiny-Q8_0.gguf\n")  # sums written again: accepted as data
    (bundle / "notes.lock.json").write_bytes(lone.read_bytes())
    with pytest.raises(UserError, match="SHA256SUMS in .* does not list notes.lock.json"):
        read_lock(bundle / "notes.lock.json")
