"""The runner interface the pipeline uses without knowing which device it talks to."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from haqa.errors import UserError

MIB = 2**20


class DiskFull(UserError):
    """The device's disk cannot hold a file haqa is writing. Names the device path, the free space and
    the space needed; whatever was half-written has been removed."""

    def __init__(self, device: str, path: PurePath, *, needed: int | None, free: int | None, what: str):
        need = f"needs about {needed / MIB:.1f} MiB" if needed else "needs more space"
        have = f"{free / MIB:.1f} MiB free there" if free is not None else "free space unknown"
        super().__init__(
            f"not enough disk space on {device} for {what}: {path} {need}, {have}",
            hint="free space on the device (or point [connect].workdir at a larger disk), then run the same "
                 "command again: haqa resumes where it stopped",
        )
        self.path, self.needed, self.free = path, needed, free


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr_tail: str
    duration_s: float
    timed_out: bool = False
    log_path: Path | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


# Folders haqa makes on a device (its work directory and everything under it): the owner's alone. Models,
# builds and bundles are nobody else's business; the user account that runs them is the owner.
PRIVATE_DIR = 0o700


class Runner(abc.ABC):
    """Runs argv lists on a device and moves files to and from its work directory.

    Every command haqa runs must be safe to start again from the beginning (outputs are written to
    `.part` files and moved into place on success; builds are incremental): a runner whose connection
    drops while a command runs stops what is left of it on the device and runs it again once the
    connection is back, a bounded number of times.

    `home` is the work directory on the device, with a fixed layout: `src/` (llama.cpp sources),
    `toolchains/<key>/` (builds keyed by source hash and flags), `models/` (GGUFs, named by content
    hash), `results/`. Paths under it are device paths (`PurePath`); `local_dir()` is the folder on
    this machine that keeps the device's logs and fetched files.
    """

    name: str
    home: PurePath

    # What the device shares with this machine. Code that must act differently on a device that is this
    # machine asks one of these, never which runner it is; every runner sets each of them.
    shares_filesystem: bool
    """A device path is a path on this machine, the same file: nothing needs uploading to be there, and
    `fetch` returns the device file itself."""
    shares_cpu: bool
    """The device's processors are this machine's: other work on this machine competes with a measurement."""
    known_python: str | None
    """A Python interpreter that runs on the device, known without asking the device (this process's own
    when the device is this machine); None when the device must be asked."""

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        cwd: PurePath | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run argv on the device, never through a shell that sees unquoted values. stdout is
        captured whole; stdout and stderr lines go to `log_path` (on this machine, redacted of
        secrets: haqa/secrets.py) and `on_line`; the tail of stderr is kept. On timeout or Ctrl-C the whole
        process group is killed."""

    @abc.abstractmethod
    def put(self, local: Path, remote: PurePath) -> bool:
        """Copy a file onto the device, verified by sha256. Returns False when it was already there."""

    @abc.abstractmethod
    def get(self, remote: PurePath, local: Path) -> None:
        """Copy a file from the device, verified by sha256."""

    @abc.abstractmethod
    def exists(self, remote: PurePath) -> bool: ...

    @abc.abstractmethod
    def move(self, src: PurePath, dst: PurePath) -> None:
        """Rename on the device (atomic within one filesystem; replaces dst)."""

    @abc.abstractmethod
    def mkdir(self, remote: PurePath) -> None:
        """Create a folder and its parents on the device."""

    def remove(self, remote: PurePath) -> None:
        """Delete a file on the device (nothing happens when it is not there)."""
        raise NotImplementedError

    def size(self, remote: PurePath) -> int | None:
        """Size in bytes of a file on the device; None when it is not there."""
        raise NotImplementedError

    def free_bytes(self, remote: PurePath) -> int | None:
        """Bytes free to this user on the filesystem that holds `remote` (or its nearest existing
        parent); None when the device cannot say."""
        return None

    def check_space(self, remote: PurePath, needed: int, what: str) -> None:
        """DiskFull when the filesystem of `remote` has less than `needed` bytes free (and says so)."""
        free = self.free_bytes(remote)
        if free is not None and free < needed:
            raise DiskFull(self.label_for_errors, remote, needed=needed, free=free, what=what)

    @property
    def label_for_errors(self) -> str:
        return getattr(self, "label", None) or self.name

    @abc.abstractmethod
    def read_text(self, remote: PurePath) -> str: ...

    @abc.abstractmethod
    def write_text(self, remote: PurePath, text: str) -> None:
        """Write a small file on the device atomically."""

    @abc.abstractmethod
    def sha256(self, remote: PurePath) -> str:
        """sha256 of a file on the device (remembered per size and mtime)."""

    @abc.abstractmethod
    def cpu_count(self) -> int: ...

    @abc.abstractmethod
    def forward(self, remote_port: int,
                remote_host: str = "127.0.0.1") -> contextlib.AbstractContextManager[tuple[str, int]]:
        """A context manager that makes `remote_host:remote_port`, as the device sees it, reachable from
        this machine, and yields the (host, port) to connect to here. Closed on exit."""

    @abc.abstractmethod
    def local_dir(self, *parts: str) -> Path:
        """A folder on this machine for this device's logs and fetched files (created)."""

    def fetch(self, remote: PurePath) -> Path:
        """A local copy of a device file (the file itself when the filesystem is shared)."""
        if self.shares_filesystem:
            return Path(remote)
        local = self.local_dir("fetched", *PurePath(remote).relative_to(self.home).parent.parts) / PurePath(remote).name
        self.get(remote, local)
        return local

    def describe(self) -> dict:
        return {"runner": self.name, "home": str(self.home)}

    def close(self) -> None:  # noqa: B027 - a default: a runner that holds nothing has nothing to close
        pass

    def dir(self, *parts: str) -> PurePath:
        return self.home.joinpath(*parts)
