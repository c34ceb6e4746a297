"""Where a bundle may be written (`--out`): a new or empty folder, or a bundle haqa wrote there before,
with its `<folder>.tar.gz`. haqa replaces only what it made; a folder with anyone else's files, the
current or the home folder, a file or a symbolic link is refused, with what is there and what to pass.

A folder is a bundle haqa wrote when its SHA256SUMS lists haqa.lock.json and every file in the folder
(true of bundles from every haqa version; a file added to a bundle makes it someone's again). A tarball
is haqa's when its pax header carries haqa's comment, or, for tarballs written before there was one,
when its first member is the bundle folder beside it."""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from pathlib import Path

from haqa.bundle.lock.read import LOCK_NAME as LOCK
from haqa.bundle.verify import SUMS
from haqa.errors import UserError

TAR_COMMENT = "haqa bundle"  # the pax `comment` of every tarball haqa writes, then the folder's name
IGNORED = {".DS_Store"}  # written by macOS Finder into any folder it shows: nobody's data
_SUM_LINE = re.compile(r"^[0-9a-f]{64}  (.+)$")
_HINT = "pass a new or empty folder (the default is dist/<recipe>@<target>)"


def check_destination(out: Path) -> Path:
    """`out` made absolute (its parent resolved, `out` itself not followed), once it is sure that writing
    the bundle there replaces nothing but an earlier bundle of haqa's. UserError otherwise."""
    raw = Path(out)
    path = raw.resolve() if raw.name in ("", "..") else raw.absolute().parent.resolve() / raw.name
    shown = f"--out {out}"
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if cwd.is_relative_to(path):
        what = "the current folder" if path == cwd else f"{path}, a folder that holds the current folder"
        raise UserError(f"{shown} is {what}: writing the bundle there would replace all of it",
                        hint=f"{_HINT}, or a new folder inside this one such as dist/bundle")
    if home.is_relative_to(path):
        what = "your home folder" if path == home else f"{path}, a folder that holds your home folder"
        raise UserError(f"{shown} is {what}: writing the bundle there would replace all of it", hint=_HINT)
    if path.is_symlink():
        raise UserError(f"{shown}: {path} is a symbolic link (to {os.readlink(path)}); haqa replaces only a "
                        "bundle folder it wrote, never a link", hint=f"{_HINT}, or the folder the link points to")
    if path.exists() and not path.is_dir():
        raise UserError(f"{shown}: {path} is a file, not a bundle folder; haqa will not replace it", hint=_HINT)
    if path.is_dir():
        _refuse_foreign_folder(path, shown)
    _refuse_foreign_tarball(path, shown)
    return path


def foreign_files(folder: Path) -> list[str] | None:
    """What in `folder` haqa did not write, as paths relative to it: empty for a bundle haqa wrote (or an
    empty folder), None when the folder holds files but no SHA256SUMS that lists haqa.lock.json."""
    entries = [p for p in folder.iterdir() if p.name not in IGNORED]
    if not entries:
        return []
    listed = _listed(folder / SUMS)
    if listed is None or LOCK not in listed:
        return None
    parents = {n.rsplit("/", i)[0] for n in listed for i in range(1, n.count("/") + 1)}
    foreign = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in sorted(dirs):
            rel = (base / name).relative_to(folder).as_posix()
            if (base / name).is_symlink() or rel not in parents:
                foreign.append(rel + "/")
                dirs.remove(name)  # not descended into: one entry says enough
        for name in sorted(files):
            rel = (base / name).relative_to(folder).as_posix()
            ours = rel in listed or rel == SUMS or name in IGNORED
            if not ours or (base / name).is_symlink() or not (base / name).is_file():
                foreign.append(rel)
    return foreign


def _listed(sums: Path) -> set[str] | None:
    """The names a SHA256SUMS lists; None when it is missing or not in `<sha256>  <name>` lines."""
    if sums.is_symlink() or not sums.is_file():
        return None
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    names = set()
    for line in lines:
        m = _SUM_LINE.match(line)
        if not m:
            return None
        names.add(m.group(1))
    return names


def _refuse_foreign_folder(path: Path, shown: str) -> None:
    try:
        foreign = foreign_files(path)
        if foreign == []:
            return
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir()) if foreign is None else foreign
    except OSError as e:
        raise UserError(f"{shown}: {path} cannot be read ({e.strerror}), so haqa cannot tell that it is a bundle "
                        "it wrote; it will not replace it", hint=_HINT) from None
    listing = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    if foreign is None:
        what = f"{path} is a folder that is not a haqa bundle (it holds {listing})"
    else:
        what = f"{path} is a haqa bundle that also holds files haqa did not write ({listing})"
    raise UserError(f"{shown}: {what}; haqa replaces only a bundle it wrote, whose {SUMS} lists every file in it",
                    hint=f"{_HINT}, or move those files out of {path}")


def _refuse_foreign_tarball(folder: Path, shown: str) -> None:
    tarball = folder.with_name(folder.name + ".tar.gz")
    if not tarball.is_symlink() and not tarball.exists():
        return
    if tarball.is_symlink() or not tarball.is_file():
        kind = "a symbolic link" if tarball.is_symlink() else "not a file"
        raise UserError(f"{shown}: the bundle's tarball would be written to {tarball}, which is {kind}; "
                        "haqa will not replace it", hint=f"{_HINT}, or move {tarball} away")
    if not is_haqa_tarball(tarball, folder):
        raise UserError(f"{shown}: the bundle's tarball would be written to {tarball}, which haqa did not write "
                        f"(it is not the tarball of a bundle at {folder}); haqa will not replace it",
                        hint=f"{_HINT}, or move {tarball} away")


def is_haqa_tarball(tarball: Path, folder: Path) -> bool:
    """Whether `tarball` is one haqa wrote for `folder`: its pax comment says so (read from the first
    block alone), or it is an older one of haqa's, whose first member is `folder`, a bundle haqa wrote."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            first = tar.next()
            comment = tar.pax_headers.get("comment", "")
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False
    if comment == f"{TAR_COMMENT} {folder.name}":
        return True
    return (not comment and first is not None and first.isdir() and first.name == folder.name
            and folder.is_dir() and not folder.is_symlink() and foreign_files(folder) == [])
