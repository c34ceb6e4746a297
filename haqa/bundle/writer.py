"""Write dist/<recipe>@<target>/ and dist/<recipe>@<target>.tar.gz together: both are staged in a
hidden folder beside them, then moved into place by renames that Ctrl-C cannot cut in half.

A failed or interrupted write leaves no half-written bundle, and the previous pair stays as it was.
A SIGKILL leaves a staging folder, which the next write into that folder removes. The bundle owns its
files: the model is a copy (or a reflink), never a hard link into haqa's cache."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from haqa import ui
from haqa.bundle import run_script, services
from haqa.bundle.destination import LOCK, SUMS, TAR_COMMENT, check_destination
from haqa.bundle.lock import Lock
from haqa.errors import UserError
from haqa.hashing import sha256_file
from haqa.runtime import RuntimeConfig
from haqa.secrets import redact_bytes, redact_obj

STAGE = "haqa-new-"  # staging folders are `.<bundle>.haqa-new-XXXXXXXX` beside the bundle
FICLONE = 0x40049409  # linux/fs.h, _IOW(0x94, 9, int): share the source's blocks copy-on-write


def write_bundle(out_dir: Path, *, model: Path, model_name: str, server_binary: Path, lock: Lock,
                 server_args: list[str], label: str, alias: str, config: RuntimeConfig | None = None,
                 recipe: str | None = None, documents: dict[str, bytes] | None = None,
                 model_sha256: str | None = None) -> Path:
    """The bundle folder, plus `<folder>.tar.gz` beside it. Every file is listed in SHA256SUMS.

    `documents` are extra files by name (REPORT.md, pareto.png). `model_sha256` is the hash the model
    was measured with: a model whose bytes differ is refused, and nothing is written."""
    # No secret in the lock, the documents or the tarball, whatever text produced them (haqa/secrets.py).
    lock = Lock.model_validate(redact_obj(lock.to_dict()))
    documents = {name: redact_bytes(data) for name, data in (documents or {}).items()}
    out_dir = check_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(out_dir.parent):
        clean_leftovers(out_dir)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{STAGE}", dir=out_dir.parent))
        try:
            folder = stage / out_dir.name
            folder.mkdir()
            _fill(folder, model=model, model_name=model_name, server_binary=server_binary, lock=lock,
                  server_args=server_args, label=label, alias=alias, config=config, recipe=recipe,
                  documents=documents, model_sha256=model_sha256)
            _tarball(folder, stage / f"{out_dir.name}.tar.gz")
            _commit(stage, out_dir)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                free = shutil.disk_usage(out_dir.parent).free
                raise UserError(f"not enough disk space in {out_dir.parent} for the bundle {out_dir.name} and its "
                                f"tarball ({free / 2**20:.0f} MiB free there)",
                                hint="free space there, or pass --out on a larger disk") from None
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)  # after a commit, the previous bundle is in there
    return out_dir


def _fill(folder: Path, *, model: Path, model_name: str, server_binary: Path, lock: Lock, server_args: list[str],
          label: str, alias: str, config: RuntimeConfig | None, recipe: str | None,
          documents: dict[str, bytes] | None, model_sha256: str | None) -> None:
    """Every file of the bundle, written into `folder`, with the lock and SHA256SUMS."""
    clone_or_copy(model, folder / model_name)
    (folder / "bin").mkdir()
    shutil.copy2(server_binary, folder / "bin" / "llama-server")
    script = folder / "run.sh"
    script.write_text(run_script.render(label, model_name, alias, server_args))
    script.chmod(0o755)
    names = [model_name, "bin/llama-server", "run.sh"]
    if config is not None:
        name, installed = recipe or alias, services.InstallFolder.default(label)
        unit, agent = f"{services.service_name(name)}.service", f"{services.agent_label(name)}.plist"
        (folder / "Modelfile").write_text(services.modelfile(model_name, config, label))
        (folder / unit).write_text(services.systemd_unit(name, label, installed))
        (folder / agent).write_bytes(services.launchd_plist(name, label, installed))
        names += ["Modelfile", unit, agent]
    for name, data in (documents or {}).items():
        (folder / name).write_bytes(data)
        names.append(name)
    files = {name: sha256_file(folder / name) for name in names}
    if model_sha256 is not None and files[model_name] != model_sha256:
        raise UserError(f"{model} is not the file that was measured (sha256 {files[model_name][:16]}..., measured "
                        f"{model_sha256[:16]}...): it changed after it was measured; no bundle was written",
                        hint="run the same command again: haqa checks its cached files and makes a changed one again")
    (folder / LOCK).write_text(lock.model_copy(update={"files": files}).dumps())
    sums = sorted(names + [LOCK])
    (folder / SUMS).write_text("".join(f"{sha256_file(folder / n)}  {n}\n" for n in sums))
    for p in folder.rglob("*"):
        if p.is_file() and p.name not in ("run.sh", "llama-server"):
            p.chmod(0o644)
    os.chmod(folder, 0o755)


def clone_or_copy(src: Path, dst: Path) -> None:
    """`dst` as a file of its own: a reflink where the filesystem has them (Btrfs, XFS, bcachefs: instant,
    and a later write to either file leaves the other as it was), else a full copy. Never a hard link,
    through which editing the bundle would edit haqa's cache."""
    if sys.platform.startswith("linux"):
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                return
            except OSError:
                pass  # no reflinks here (ext4, tmpfs, another filesystem): copied below
    shutil.copyfile(src, dst)


def _tarball(folder: Path, out: Path) -> None:
    """`out`, the gzip tarball of `folder` under the folder's name, marked as haqa's in its pax header.

    Stored, not compressed (gzip level 0, which every gzip reader takes): quantized weights do not compress.
    The SmolLM2 Q4_K_M bundle (115 MiB) took 4.4 s at level 1 for a 103 MiB file, 0.7 s stored for 114 MiB;
    an 8B model's bundle would spend minutes of a small device's CPU to save a few per cent."""
    with tarfile.open(out, "w:gz", compresslevel=0, format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": f"{TAR_COMMENT} {folder.name}"}) as tar:
        tar.add(folder, arcname=folder.name)


def _commit(stage: Path, out_dir: Path) -> None:
    """Move the staged folder and tarball into place, the previous bundle into the stage (removed with it).
    Checked once more first: a folder or file may have appeared at `out_dir` while the bundle was staged."""
    check_destination(out_dir)
    tarball = out_dir.with_name(out_dir.name + ".tar.gz")
    with _signals_deferred():
        if out_dir.exists():
            os.replace(out_dir, stage / "previous")
        os.replace(stage / out_dir.name, out_dir)
        os.replace(stage / tarball.name, tarball)


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Remove what killed writes of `out_dir` left beside it: staging folders, and the `.part` tarball
    that earlier versions of haqa wrote after the folder. Returns what was removed."""
    stage = re.compile(rf"^\.{re.escape(out_dir.name)}\.{STAGE}[a-z0-9_]{{8}}$")
    removed = []
    for p in out_dir.parent.iterdir():
        if stage.match(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif p.name == f".{out_dir.name}.tar.gz.part" and p.is_file() and not p.is_symlink():
            p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def _writer_lock(parent: Path) -> Iterator[None]:
    """One bundle writer at a time in `parent` (an flock on the folder itself, so no lock file is left):
    a second writer's clean-up would otherwise remove the first one's staging folder."""
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.note(f"another haqa is writing a bundle into {parent}: waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without locks (some network ones): written unlocked
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the block runs, then delivered. Python-level handlers rather than
    a signal mask: a mask covers one thread, and a signal that another thread (paramiko's) takes still
    interrupts the main one. Outside the main thread nothing can be installed, and nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])  # handled now, as it would have been when it came
