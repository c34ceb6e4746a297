"""haqa installed from its wheel, away from the checkout: the wheel carries the catalog (targets/,
recipes/) and haqa/data, and the haqa that runs is the installed one. And a deploy's install leaves out
the embedded extra (llama-cpp-python): `--agent embedded` then says how to install it.

The wheel is built from the repository with pip (the build backend comes from pip's cache or PyPI);
it is installed without dependencies into a fresh virtualenv that borrows the dependencies already
installed beside this interpreter (a .pth line naming their site-packages: the .pth files there,
such as an editable haqa's, are not processed), so nothing else is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from haqa.errors import UserError
from haqa.paths import cache_home
from tests.support.files import REPO
from tests.support.homes import shared_home


def run(argv: list, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_embedded_agent_without_llama_cpp_python_names_the_install_command(monkeypatch):
    from haqa.agent.llm import make_backend

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as after a plain `pip install haqa`
    monkeypatch.setenv("HAQA_EMBEDDED_MODEL", "/nonexistent/model.gguf")
    with pytest.raises(UserError) as caught:
        make_backend("embedded")
    assert caught.value.exit_code == 2
    assert "llama-cpp-python" in caught.value.message and "'.[embedded]'" in str(caught.value)



def test_deploy_with_the_embedded_agent_and_no_bindings_is_refused_before_any_work(monkeypatch, haqa):
    from haqa import pipeline

    def work_started(*args, **kwargs):
        raise AssertionError("the deploy started before the missing bindings were named")

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setattr(pipeline, "deploy", work_started)
    code, _, err = haqa("deploy", "--agent", "embedded")
    assert code == 2 and "'.[embedded]'" in err and "Traceback" not in err

def test_the_embedded_extra_holds_the_one_llama_cpp_python_pin():
    from haqa.toolchain import LLAMA_CPP_PYTHON_VERSION

    text = (REPO / "pyproject.toml").read_text()
    assert text.count("llama-cpp-python==") == 1
    assert f'embedded = ["llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]' in text
    dependencies = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "llama-cpp-python" not in dependencies


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", out, REPO],
        cwd=out)
    (built,) = out.glob("haqa-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    """A fresh virtualenv with the wheel installed and this interpreter's dependencies borrowed."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root / "env"], cwd=root)
    env_dir = root / "env"
    python = env_dir / "bin" / "python"
    purelib = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip()
    )
    (purelib / "_haqa_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "-q", wheel], cwd=root)
    return env_dir


def clean_env(home: Path) -> dict:
    """The environment of a user who has never seen the checkout: no PYTHONPATH, no catalog paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HAQA_TARGETS_PATH", "HAQA_RECIPES_PATH")}
    return {**env, "HAQA_HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")}


@pytest.mark.slow
def test_the_wheel_carries_the_catalog_and_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("targets", "recipes"):
        for f in (REPO / kind).rglob("*.toml"):
            assert f"haqa/catalog/{f.relative_to(REPO).as_posix()}" in names, f
    for f in (REPO / "haqa" / "data").glob("*.json"):
        assert f"haqa/data/{f.name}" in names, f
    assert not any(n.startswith(("tests/", "targets/", "recipes/")) for n in names)


@pytest.mark.slow
def test_the_installed_haqa_lists_its_catalog_and_estimates_from_outside_the_checkout(venv, tmp_path):
    home = shared_home(tmp_path / "haqa-home", cache_home(), ("sources",))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(home)
    where = run([venv / "bin" / "python", "-c", "import haqa, haqa.paths; print(haqa.__file__); "
                 "print(haqa.paths.builtin_catalog_dir())"], cwd=elsewhere, env=env).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), f"haqa did not come from the wheel: {where}"
    assert Path(where[1]).name == "catalog"

    for kind in ("targets", "recipes"):
        listing = run([venv / "bin" / "haqa", kind, "list"], cwd=elsewhere, env=env).stdout
        for f in (REPO / kind).glob("*.toml"):
            assert f.stem in listing, (kind, f.stem, listing)
        assert str(REPO) not in listing, listing
    estimate = run([venv / "bin" / "haqa", "estimate", "--target", "rpi5-8gb", "--recipe", "synth-tiny"],
                   cwd=elsewhere, env=env)
    assert "synth-tiny on rpi5-8gb" in estimate.stdout and "Q4_K_M" in estimate.stdout, estimate.stdout
