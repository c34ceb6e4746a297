"""Shared fixtures. Fast tests use temporary catalogs and tiny GGUFs written with the gguf package;
tests marked `slow` use the real llama.cpp build and the real SmolLM2 model from haqa's cache."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from haqa.cli import cli
from haqa.probe import local_facts
from tests.support.bundles import CONFIG, LABEL, RECIPE, make_bundle
from tests.support.files import write_tiny_gguf
from tests.support.homes import REAL_HOME, shared_home
from tests.support.sshd import SSHD, device_env, start_server


class Project:
    """A project folder (the current directory) with targets/ and recipes/ to write files into."""

    def __init__(self, root: Path):
        self.root = root

    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p



def pytest_configure(config):
    """A shell without job control starts a background command (`make test &`, `nohup ... &`) with SIGINT
    ignored (POSIX), and every process it starts inherits that: the Ctrl-C tests would then press a key
    nobody hears. Their processes get Ctrl-C's default back (a child of a handler gets SIG_DFL at exec)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def own_haqa_home(request, tmp_path_factory, monkeypatch):
    """A fast test gets a HAQA_HOME of its own (a test may set another), sharing only the pinned llama.cpp
    source with the real one: every deploy reads its list of architectures, and fetching the 75 MB sdist took
    seconds per test (it is downloaded into the real cache once, if `make prepare` has not). Slow tests keep
    the real home, where `make prepare` put the toolchain and the model."""
    if request.node.get_closest_marker("slow") is None:
        home = shared_home(tmp_path_factory.mktemp("haqa-home"), REAL_HOME, ("sources",))
        monkeypatch.setenv("HAQA_HOME", str(home))

@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    (tmp_path / "targets" / "families").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return Project(tmp_path)


@pytest.fixture
def haqa():
    """Run the real click CLI in-process; returns (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if not Path(SSHD).exists():
        if os.environ.get("CI"):
            pytest.fail("sshd is missing: .ci/run installs openssh-server before the tests")
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    directory = tmp_path_factory.mktemp("sshd")
    server = start_server(directory, env=device_env(directory))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def device_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("device-home")


# -- bundles (tests/support/bundles.py makes them) ----------------------------------------------

@pytest.fixture
def small_bundle(tmp_path) -> Path:
    """A tiny GGUF, and a placeholder llama-server: for tests that must refuse before anything runs."""
    placeholder = tmp_path / "placeholder-server"
    placeholder.write_text("#!/bin/sh\necho 'placeholder: never started by these tests' >&2\nexit 1\n")
    return make_bundle(tmp_path / "dist" / LABEL, write_tiny_gguf(tmp_path / "tiny.gguf"), placeholder,
                       peak_bytes=64 * 2**20)


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
