"""The bundle writer: run.sh quoting, the lock's file hashes, and atomic replacement."""

from __future__ import annotations

import json
import subprocess

import pytest

from haqa.bundle import write_bundle
from haqa.bundle.run_script import render
from haqa.hashing import sha256_file


def _write(out, tmp_path, **kw):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF fake weights")
    server = tmp_path / "fake-server"
    server.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    server.chmod(0o755)
    args = dict(model=model, model_name="m-Q4_0.gguf", server_binary=server, lock={"schema": 1},
                server_args=["--threads", "2"], label="m@t", alias="m")
    args.update(kw)
    return write_bundle(out, **args)


def test_run_sh_quotes_every_value_and_honours_host_and_port(tmp_path):
    out = _write(tmp_path / "b", tmp_path, server_args=["--threads", "2", "--alias2", "it's $(rm -rf /)"])
    text = (out / "run.sh").read_text()
    assert subprocess.run(["sh", "-n", str(out / "run.sh")]).returncode == 0
    argv = subprocess.run([str(out / "run.sh"), "--host", "0.0.0.0", "--port", "9999", "--extra"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "9999"
    assert "it's $(rm -rf /)" in argv  # passed as one literal argument
    assert argv[-1] == "--extra"
    assert argv[argv.index("--model") + 1].endswith("/m-Q4_0.gguf")
    assert "'it'\"'\"'s $(rm -rf /)'" in text


def test_run_sh_defaults_to_loopback(tmp_path):
    out = _write(tmp_path / "b", tmp_path)
    argv = subprocess.run([str(out / "run.sh")], capture_output=True, text=True, check=True).stdout.splitlines()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_lock_lists_hashes_of_the_bundle_files(tmp_path):
    out = _write(tmp_path / "b", tmp_path)
    lock = json.loads((out / "haqa.lock.json").read_text())
    for name, digest in lock["files"].items():
        assert sha256_file(out / name) == digest


def test_failed_write_keeps_the_previous_bundle(tmp_path):
    out = _write(tmp_path / "b", tmp_path, lock={"schema": 1, "generation": "old"})
    with pytest.raises(FileNotFoundError):
        _write(tmp_path / "b", tmp_path, server_binary=tmp_path / "missing-binary", lock={"generation": "new"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")) == []  # no debris


def test_rewrite_replaces_the_bundle_whole(tmp_path):
    _write(tmp_path / "b", tmp_path, model_name="old.gguf")
    out = _write(tmp_path / "b", tmp_path, model_name="new.gguf")
    assert (out / "new.gguf").exists() and not (out / "old.gguf").exists()


def test_render_is_plain_posix_sh():
    text = render("x@y", "a b.gguf", "x", ["--ctx-size", "4096"])
    assert text.startswith("#!/bin/sh\n") and "'a b.gguf'" in text


def test_service_files_checksums_and_tarball(tmp_path):
    import plistlib
    import tarfile

    from haqa.runtime import RuntimeConfig

    config = RuntimeConfig(threads=4, ctx_size=4096, n_gpu_layers=0, batch_size=512)
    out = _write(tmp_path / "m@t", tmp_path, config=config, recipe="m",
                 documents={"REPORT.md": b"# report\n", "pareto.png": b"\x89PNG"})
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./m-Q4_0.gguf" in modelfile and "PARAMETER num_ctx 4096" in modelfile
    assert "PARAMETER num_thread 4" in modelfile and "PARAMETER num_batch 512" in modelfile
    unit = (out / "haqa-m.service").read_text()
    assert "ExecStart=%h/.local/share/haqa/bundles/m@t/run.sh --host 127.0.0.1" in unit
    plist = plistlib.loads((out / "dev.haqa.m.plist").read_bytes())
    assert plist["Label"] == "dev.haqa.m" and "--host 127.0.0.1" in plist["ProgramArguments"][-1]
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"m-Q4_0.gguf", "bin/llama-server", "run.sh", "Modelfile", "haqa-m.service",
                         "dev.haqa.m.plist", "haqa.lock.json", "REPORT.md", "pareto.png"}
    for name, digest in sums.items():
        assert sha256_file(out / name) == digest
    assert oct((out / "Modelfile").stat().st_mode & 0o777) == "0o644"
    assert oct((out / "run.sh").stat().st_mode & 0o777) == "0o755"
    with tarfile.open(tmp_path / "m@t.tar.gz") as tar:
        assert "m@t/run.sh" in tar.getnames() and "m@t/SHA256SUMS" in tar.getnames()


def test_ctrl_c_midway_keeps_the_previous_bundle(tmp_path, monkeypatch):
    from haqa.bundle import writer

    out = _write(tmp_path / "b", tmp_path, lock={"schema": 1, "generation": "old"})
    calls = []

    def interrupted(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return "0" * 64

    monkeypatch.setattr(writer, "sha256_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "b", tmp_path, lock={"generation": "new"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")] == []


def test_killed_midway_keeps_the_previous_bundle(tmp_path):
    """SIGKILL leaves no chance to clean up: the old bundle must still be whole, and the next write works."""
    import os
    import signal
    import sys
    import time

    out = _write(tmp_path / "b", tmp_path, lock={"schema": 1, "generation": "old"})
    script = f"""
import time, haqa.bundle.writer as w
from pathlib import Path
from tests.test_bundle_writer import _write
real = w.sha256_file
def slow(p):
    Path({str(tmp_path / 'started')!r}).touch(); time.sleep(60); return real(p)
w.sha256_file = slow
_write(Path({str(tmp_path / 'b')!r}), Path({str(tmp_path)!r}), lock={{"generation": "new"}})
"""
    from tests.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        assert sha256_file(out / name) == digest
    _write(tmp_path / "b", tmp_path, lock={"generation": "newer"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "newer"
