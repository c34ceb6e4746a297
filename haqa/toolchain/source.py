"""The llama.cpp source that matches the pinned llama-cpp-python: taken from that release's sdist.

llama-cpp-python vendors llama.cpp (vendor/llama.cpp) in its source distribution, so building the
tools from that tree makes the in-process bindings and the llama.cpp binaries agree on one commit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

from haqa import paths, ui
from haqa.errors import UserError
from haqa.hashing import cached_sha256, memo_beside

# Keep equal to the pin in pyproject.toml (a test checks that they agree).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_ROOT = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
_VENDOR = f"{_ROOT}/vendor/llama.cpp/"
_COMMIT_FILE = f"{_ROOT}/.git/modules/vendor/llama.cpp/HEAD"
# Top-level folders of the llama.cpp tree that a build of the tools does not read.
_NOT_NEEDED = {
    "models", "docs", "media", ".github", ".devops", "benches", "pocs", "tests", "examples", "gguf-py",
    "conversion", "skills", "requirements", "ci", "grammars", "prompts", ".git",
}


def _escapes(rel: str, member: tarfile.TarInfo) -> str | None:
    """Why an archive member named `rel` (relative to the folder it is unpacked into) would be written
    outside that folder, or is not a plain file, folder or link; None when it stays inside."""
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        return "is not a path inside the tree"
    if not (member.isfile() or member.isdir() or member.issym()):
        return "is a hard link, device, FIFO or other special file"
    if member.issym():
        target = PurePosixPath(member.linkname)
        if target.is_absolute() or not _stays_inside(path.parent / target):
            return f"links to {member.linkname!r}, outside the tree"
    return None


def _stays_inside(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return False
    return True


@dataclass(frozen=True)
class LlamaCppSource:
    sdist: Path

    @cached_property
    def sha256(self) -> str:
        return cached_sha256(self.sdist)

    @cached_property
    def commit(self) -> str:
        """The llama.cpp commit, from the sdist's git metadata for vendor/llama.cpp."""
        def read(path: Path) -> str:
            with tarfile.open(path) as tar:
                try:
                    f = tar.extractfile(_COMMIT_FILE)
                except KeyError:
                    f = None
                return f.read().decode().strip() if f else "unknown"

        return memo_beside(self.sdist, ".commit.json", read)

    @cached_property
    def architectures(self) -> list[str]:
        """Model architectures this llama.cpp can load (LLM_ARCH_NAMES in src/llama-arch.cpp), less
        "clip", which only llama-quantize reads."""
        def read(path: Path) -> list[str]:
            with tarfile.open(path) as tar:
                try:
                    text = tar.extractfile(_VENDOR + "src/llama-arch.cpp").read().decode()
                except (KeyError, AttributeError):
                    return []
            table = text.split("LLM_ARCH_NAMES", 1)[-1].split("};", 1)[0]
            return sorted(set(re.findall(r'\{\s*LLM_ARCH_\w+\s*,\s*"([^"]+)"\s*\}', table)) - {"clip"})

        return memo_beside(self.sdist, ".architectures.json", read)

    def _members(self, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
        """The vendored llama.cpp tree's members, renamed relative to it; a member that would land
        outside the tree (an absolute or `..` path, a link pointing out, a device file) is refused."""
        out = []
        for m in tar.getmembers():
            if not m.name.startswith(_VENDOR):
                continue
            rel = m.name[len(_VENDOR):]
            if not rel or rel.split("/", 1)[0] in _NOT_NEEDED:
                continue
            if why := _escapes(rel, m):
                raise UserError(f"{self.sdist}: member {m.name!r} {why}; refusing to unpack this source archive",
                                hint="use the llama-cpp-python sdist from PyPI (unset HAQA_LLAMA_CPP_SDIST to let haqa "
                                     "download it)")
            out.append(m.replace(name=rel, deep=False))
        return out

    def extract(self, dest: Path) -> Path:
        """Unpack the trimmed llama.cpp tree into dest (atomically: a finished tree has .haqa-complete)."""
        marker = dest / ".haqa-complete"
        if marker.exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
        with tarfile.open(self.sdist) as tar:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=self._members(tar), **kwargs)
        (tmp / ".haqa-complete").write_text(f"{self.commit}\n")
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest


    def trimmed_tarball(self) -> Path:
        """The same trimmed tree as a .tar.gz (what is uploaded to a remote device), made once."""
        out = paths.cache_home() / "sources" / f"llama.cpp-{self.commit[:8]}-{self.sha256[:16]}.tar.gz"
        if out.is_file():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        with tarfile.open(self.sdist) as src, tarfile.open(part, "w:gz", compresslevel=6) as dst:
            for m in self._members(src):
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        os.replace(part, out)
        return out


def llama_cpp_source() -> LlamaCppSource:
    """The cached sdist, downloaded with pip on first use ($HAQA_LLAMA_CPP_SDIST points at a local copy)."""
    override = os.environ.get("HAQA_LLAMA_CPP_SDIST")
    if override:
        p = Path(override).expanduser()
        if not p.is_file():
            raise UserError(f"HAQA_LLAMA_CPP_SDIST={override}: no such file")
        return LlamaCppSource(p)
    cache = paths.cache_home() / "sources"
    sdist = cache / f"{_ROOT}.tar.gz"
    if sdist.is_file():
        return LlamaCppSource(sdist)
    cache.mkdir(parents=True, exist_ok=True)
    ui.step(f"downloading the llama.cpp source vendored in llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (sdist, ~75 MB)")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"],
            capture_output=True, text=True,
        )
        got = Path(tmp) / f"{_ROOT}.tar.gz"
        if proc.returncode != 0 or not got.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise UserError(
                f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source distribution:\n{tail}",
                hint="check that PyPI is reachable, or set HAQA_LLAMA_CPP_SDIST to a downloaded "
                f"{_ROOT}.tar.gz "
                f"(`pip download --no-binary :all: --no-deps llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}`)",
            )
        os.replace(got, sdist)
    return LlamaCppSource(sdist)
