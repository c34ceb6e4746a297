"""The runner interface the pipeline uses without knowing which device it talks to."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


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


class Runner(abc.ABC):
    """Runs argv lists on a device and moves files to and from its work directory.

    The work directory (`home`) has a fixed layout: `src/` (llama.cpp sources), `toolchains/<key>/`
    (builds keyed by source hash and flags), `models/` (GGUFs, named by content), `results/`.
    """

    name: str
    home: Path

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run argv (never through a shell). stdout is captured whole; stderr is streamed to
        `log_path` and `on_line`, and its tail kept. On timeout the whole process group is killed."""

    @abc.abstractmethod
    def put(self, local: Path, remote: Path) -> None:
        """Copy a file onto the device."""

    @abc.abstractmethod
    def get(self, remote: Path, local: Path) -> None:
        """Copy a file from the device."""

    @abc.abstractmethod
    def exists(self, remote: Path) -> bool: ...

    @abc.abstractmethod
    def move(self, src: Path, dst: Path) -> None:
        """Rename a file on the device (atomic within one filesystem)."""

    @abc.abstractmethod
    def cpu_count(self) -> int: ...

    def dir(self, *parts: str) -> Path:
        return self.home.joinpath(*parts)
