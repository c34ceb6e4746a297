"""The bundle writer: run.sh quoting, the lock's file hashes, atomic replacement of the folder and its
tarball together, what it may replace at --out, and a bundle that owns its files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from haqa.bundle import write_bundle
from haqa.bundle.run_script import render
from haqa.hashing import sha256_file
from tests.support.bundles import fake_bundle, lock_with
from tests.support.files import REPO


def test_run_sh_quotes_every_value_and_honours_host_and_port(tmp_path):
    out = fake_bundle(tmp_path / "b", tmp_path, server_args=["--threads", "2", "--alias2", "it's $(rm -rf /)"])
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
    out = fake_bundle(tmp_path / "b", tmp_path)
    argv = subprocess.run([str(out / "run.sh")], capture_output=True, text=True, check=True).stdout.splitlines()
    assert argv[argv.index("--host") + 1] == "127.0.0.1"


def test_lock_lists_hashes_of_the_bundle_files(tmp_path):
    out = fake_bundle(tmp_path / "b", tmp_path)
    lock = json.loads((out / "haqa.lock.json").read_text())
    for name, digest in lock["files"].items():
        assert sha256_file(out / name) == digest


def test_failed_write_keeps_the_previous_bundle(tmp_path):
    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    with pytest.raises(FileNotFoundError):
        fake_bundle(tmp_path / "b", tmp_path, server_binary=tmp_path / "missing-binary", lock={"generation": "new"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")) == []  # no debris


def test_rewrite_replaces_the_bundle_whole(tmp_path):
    fake_bundle(tmp_path / "b", tmp_path, model_name="old.gguf")
    out = fake_bundle(tmp_path / "b", tmp_path, model_name="new.gguf")
    assert (out / "new.gguf").exists() and not (out / "old.gguf").exists()


def test_render_is_plain_posix_sh():
    text = render("x@y", "a b.gguf", "x", ["--ctx-size", "4096"])
    assert text.startswith("#!/bin/sh\n") and "'a b.gguf'" in text


def test_service_files_checksums_and_tarball(tmp_path):
    import plistlib
    import tarfile

    from haqa.runtime import RuntimeConfig

    config = RuntimeConfig(threads=4, ctx_size=4096, n_gpu_layers=0, batch_size=512)
    out = fake_bundle(tmp_path / "m@t", tmp_path, config=config, recipe="m",
                 documents={"REPORT.md": b"# report\n", "pareto.png": b"\x89PNG"})
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./m-Q4_0.gguf" in modelfile and "PARAMETER num_ctx 4096" in modelfile
    assert "PARAMETER num_thread 4" in modelfile and "PARAMETER num_batch 512" in modelfile
    unit = (out / "haqa-m.service").read_text()
    assert 'ExecStart="%h/.cache/haqa/bundles/m@t/run.sh" "--host" "127.0.0.1" "--port" "8080"' in unit
    plist = plistlib.loads((out / "dev.haqa.m.plist").read_bytes())
    assert (plist["Label"] == "dev.haqa.m"
            and plist["ProgramArguments"][-4:] == ["--host", "127.0.0.1", "--port", "8080"])
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

    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    calls = []

    def interrupted(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return "0" * 64

    monkeypatch.setattr(writer, "sha256_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "new"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")] == []


def test_killed_midway_keeps_the_previous_bundle(tmp_path):
    """SIGKILL leaves no chance to clean up: the old bundle must still be whole, and the next write works."""
    import os
    import signal
    import sys
    import time

    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    script = f"""
import time, haqa.bundle.writer as w
from pathlib import Path
from tests.support.bundles import fake_bundle
real = w.sha256_file
def slow(p):
    Path({str(tmp_path / 'started')!r}).touch(); time.sleep(60); return real(p)
w.sha256_file = slow
fake_bundle(Path({str(tmp_path / 'b')!r}), Path({str(tmp_path)!r}), lock={{"generation": "new"}})
"""
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
    fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "newer"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "newer"


# -- what is at --out: haqa replaces only a bundle it wrote ------------------------------------------------

def _snapshot(root):
    """Every path under root (links as links) with its bytes: what a refused write must leave as it was."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


def _user_folder(tmp_path):
    (tmp_path / "b" / "data").mkdir(parents=True)
    (tmp_path / "b" / "notes.txt").write_text("my notes")
    (tmp_path / "b" / "data" / "x.csv").write_text("1,2\n")


def _bundle_plus_a_user_file(tmp_path):
    out = fake_bundle(tmp_path / "b", tmp_path)
    (out / "my-notes.txt").write_text("mine")


def _a_file(tmp_path):
    (tmp_path / "b").write_text("a file of mine")


def _a_symlink_to_a_bundle(tmp_path):
    fake_bundle(tmp_path / "real", tmp_path)
    (tmp_path / "b").symlink_to(tmp_path / "real")


def _someone_elses_tarball(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "b", arcname="b")
    shutil.rmtree(tmp_path / "b")  # a user's own b.tar.gz, with no bundle beside it


def _a_tarball_that_is_a_symlink(tmp_path):
    fake_bundle(tmp_path / "b", tmp_path)
    (tmp_path / "elsewhere.tar.gz").write_bytes(b"mine")
    (tmp_path / "b.tar.gz").unlink()
    (tmp_path / "b.tar.gz").symlink_to(tmp_path / "elsewhere.tar.gz")


@pytest.mark.parametrize("setup, says", [
    (_user_folder, "is a folder that is not a haqa bundle (it holds data/, notes.txt)"),
    (_bundle_plus_a_user_file, "also holds files haqa did not write (my-notes.txt)"),
    (_a_file, "is a file, not a bundle folder"),
    (_a_symlink_to_a_bundle, "is a symbolic link"),
    (_someone_elses_tarball, "which haqa did not write"),
    (_a_tarball_that_is_a_symlink, "which is a symbolic link"),
])
def test_what_haqa_did_not_write_at_out_is_refused_and_kept(tmp_path, setup, says):
    from haqa.errors import UserError

    setup(tmp_path)
    fake_bundle(tmp_path / "other", tmp_path)  # the inputs (m.gguf, fake-server) exist before the snapshot
    before = _snapshot(tmp_path)
    with pytest.raises(UserError) as e:
        fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "new"})
    assert says in e.value.message and "--out" in e.value.message
    assert "pass a new or empty folder" in e.value.hint
    assert _snapshot(tmp_path) == before


def test_an_empty_folder_and_a_bundle_of_an_older_haqa_are_replaced(tmp_path):
    (tmp_path / "b").mkdir()
    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "first"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "first"
    # a bundle as the haqa before this check wrote it: the same folder, and a tarball with no pax comment
    (tmp_path / "b.tar.gz").unlink()
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz", compresslevel=1) as tar:
        tar.add(out, arcname="b")
    (out / ".DS_Store").write_bytes(b"Finder")  # what macOS adds to a folder it shows
    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "second"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "second"
    _assert_pair_matches(out)


def test_a_folder_that_appears_while_the_bundle_is_staged_is_kept(tmp_path, monkeypatch):
    from haqa.bundle import writer
    from haqa.errors import UserError

    real = writer.sha256_file

    def meanwhile(path):
        if not (tmp_path / "b").exists():
            (tmp_path / "b").mkdir()
            (tmp_path / "b" / "mine.txt").write_text("made while haqa worked")
        return real(path)

    monkeypatch.setattr(writer, "sha256_file", meanwhile)
    with pytest.raises(UserError, match="not a haqa bundle"):
        fake_bundle(tmp_path / "b", tmp_path)
    assert (tmp_path / "b" / "mine.txt").read_text() == "made while haqa worked"
    assert not (tmp_path / "b.tar.gz").exists() and _leftovers(tmp_path) == []


# -- the bundle owns its files ----------------------------------------------------------------------------

def test_editing_the_bundle_leaves_the_cached_model_as_it_was(tmp_path):
    cached = tmp_path / "cache" / "models" / "Q4_0-abc.gguf"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"GGUF measured weights")
    out = fake_bundle(tmp_path / "b", tmp_path, model=cached)
    bundled = out / "m-Q4_0.gguf"
    assert bundled.stat().st_ino != cached.stat().st_ino and cached.stat().st_nlink == 1
    with open(bundled, "r+b") as f:  # an edit in place, as an editor or a script would make it
        f.write(b"EDIT")
    assert cached.read_bytes() == b"GGUF measured weights"


def test_a_model_that_is_not_the_measured_one_is_not_bundled(tmp_path):
    from haqa.errors import UserError

    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    measured = sha256_file(out / "m-Q4_0.gguf")
    (tmp_path / "m.gguf").write_bytes(b"GGUF other bytes")
    with pytest.raises(UserError, match="is not the file that was measured"):
        write_bundle(tmp_path / "b", model=tmp_path / "m.gguf", model_name="m-Q4_0.gguf",
                     server_binary=tmp_path / "fake-server", lock=lock_with(generation="new"), server_args=[],
                     label="m@t", alias="m", model_sha256=measured)
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    _assert_pair_matches(out)
    assert _leftovers(tmp_path) == []


# -- the folder and its tarball change together -----------------------------------------------------------

def _assert_pair_matches(folder):
    """The tarball beside `folder` holds exactly the folder's files, byte for byte, under its name."""
    with tarfile.open(folder.with_name(folder.name + ".tar.gz")) as tar:
        assert tar.getmembers()[0].name == folder.name
        packed = {m.name.removeprefix(folder.name + "/"): tar.extractfile(m).read()
                  for m in tar.getmembers() if m.isfile()}
    on_disk = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert packed == on_disk


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".b.") or p.name.endswith(".part"))


def _child(script: str):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO)


def _wait_for(path, proc):
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)


SLOW_TARBALL = """
    import time, tarfile
    from pathlib import Path
    from tests.support.bundles import fake_bundle
    real = tarfile.TarFile.addfile
    def slow(self, *args, **kwargs):
        Path({started!r}).touch(); time.sleep(60); return real(self, *args, **kwargs)
    tarfile.TarFile.addfile = slow
    fake_bundle(Path({out!r}), Path({tmp!r}), lock={{"generation": "new"}})
"""


def test_ctrl_c_while_the_tarball_is_written_keeps_the_old_folder_and_tarball(tmp_path):
    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    proc = _child(SLOW_TARBALL.format(started=str(tmp_path / "started"), out=str(out), tmp=str(tmp_path)))
    _wait_for(tmp_path / "started", proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=30) != 0
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    _assert_pair_matches(out)
    assert _leftovers(tmp_path) == []


def test_killed_while_the_tarball_is_written_the_old_pair_stays_and_the_next_write_cleans_up(tmp_path):
    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    proc = _child(SLOW_TARBALL.format(started=str(tmp_path / "started"), out=str(out), tmp=str(tmp_path)))
    _wait_for(tmp_path / "started", proc)
    proc.kill()
    proc.wait()
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "old"
    _assert_pair_matches(out)
    fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "newer"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "newer"
    _assert_pair_matches(out)
    assert _leftovers(tmp_path) == []


def test_ctrl_c_between_the_renames_waits_until_both_are_in_place(tmp_path, monkeypatch):
    from haqa.bundle import writer

    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    real, renames = os.replace, []

    def replace(src, dst):
        renames.append(dst)
        if len(renames) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C as the first rename starts
        real(src, dst)

    monkeypatch.setattr(writer.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "new"})
    monkeypatch.undo()
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "new"
    _assert_pair_matches(out)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("renames_done", [1, 2])
def test_killed_between_the_renames_the_next_write_repairs_the_pair(tmp_path, renames_done):
    """SIGKILL cannot be deferred: between two renames it leaves the folder gone or newer than the tarball,
    and a staging folder; the next write puts a matching pair in place and removes the rest."""
    out = fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "old"})
    proc = _child(f"""
        import os, signal
        from pathlib import Path
        from tests.support.bundles import fake_bundle
        real, done = os.replace, []
        def replace(src, dst):
            real(src, dst)
            done.append(dst)
            if len(done) == {renames_done}:
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        fake_bundle(Path({str(out)!r}), Path({str(tmp_path)!r}), lock={{"generation": "new"}})
    """)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    fake_bundle(tmp_path / "b", tmp_path, lock={"generation": "newer"})
    assert json.loads((out / "haqa.lock.json").read_text())["generation"] == "newer"
    _assert_pair_matches(out)
    assert _leftovers(tmp_path) == []
