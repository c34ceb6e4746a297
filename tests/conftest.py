"""Shared fixtures. Fast tests use temporary catalogs and tiny GGUFs written with the gguf package;
tests marked `slow` use the real llama.cpp build and the real SmolLM2 model from haqa's cache."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from haqa.cli import cli
from haqa.config.schema import Connect
from tests.support.sshd import SSHD, start_server

REPO = Path(__file__).resolve().parent.parent


class Project:
    """A project folder (the current directory) with targets/ and recipes/ to write files into."""

    def __init__(self, root: Path):
        self.root = root

    def write(self, rel: str, text: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
        return p



@pytest.fixture(autouse=True)
def own_haqa_home(request, tmp_path_factory, monkeypatch):
    """A fast test never writes into the real haqa cache: it gets a HAQA_HOME of its own (a test may set
    another). Slow tests keep the real one, where `make prepare` put the toolchain and the model."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("HAQA_HOME", str(tmp_path_factory.mktemp("haqa-home")))

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


def write_tiny_gguf(path: Path, arch: str = "llama", file_type: int = 1) -> Path:
    """A small, valid GGUF (metadata and two F32 tensors): enough for the parsers, not for inference."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_file_type(file_type)
    w.add_context_length(256)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def shared_home(home: Path, real: Path, shared: tuple[str, ...]) -> Path:
    """A haqa home of a test's own whose `shared` folders (sources, models, toolchains ...) are links
    into the real home `real`: what is costly to make is shared, while the trial store starts empty."""
    home.mkdir(parents=True, exist_ok=True)
    for sub in shared:
        (real / sub).mkdir(parents=True, exist_ok=True)
        if not (home / sub).exists():
            (home / sub).symlink_to(real / sub)
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_env(directory: Path) -> dict[str, str]:
    """The loopback device's session environment: this machine's compiler cache (CCACHE_DIR, when it is
    set here: the device is this machine and user) and a ccache stats log of the device's own."""
    env = {"CCACHE_STATSLOG": str(directory / "ccache-stats.log")}
    if os.environ.get("CCACHE_DIR"):
        env["CCACHE_DIR"] = os.environ["CCACHE_DIR"]
    return env


def ccache_log(log: Path) -> dict[str, list[str]]:
    """ccache's counter updates per compiled file, from a stats log (CCACHE_STATSLOG):
    {"../src/ggml.c": ["direct_cache_hit", ...], ...}."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("# "):
            current = entries.setdefault(line[2:], [])
        elif line.strip():
            current.append(line.strip())
    return entries


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


def connect_for(sshd, device_home, **over) -> Connect:
    fields = dict(kind="ssh", host="127.0.0.1", port=sshd.port, user=sshd.user, key=str(sshd.client_key),
                  known_hosts=str(sshd.known_hosts), workdir=str(device_home), reconnects=3, connect_timeout_s=10)
    fields.update(over)
    return Connect(**fields)
