"""The local runner: the device is this machine; its work directory is haqa's cache."""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath

from haqa import paths
from haqa.errors import UserError
from haqa.fsutil import atomic_write_text
from haqa.hashing import cached_sha256
from haqa.runner.base import PRIVATE_DIR, CommandResult, DiskFull, Runner
from haqa.secrets import redact

TAIL_LINES = 60


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class LocalRunner(Runner):
    name = "local"
    shares_filesystem = True
    shares_cpu = True
    known_python = sys.executable

    def __init__(self, home: Path | None = None):
        self.home = home or paths.cache_home()

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
        argv = [str(a) for a in argv]
        full_env = {**os.environ, **(env or {})}
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True,
            )
        except FileNotFoundError:
            raise UserError(f"'{argv[0]}' is not installed or not on PATH on this machine") from None
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        out_chunks: list[str] = []
        log = open(log_path, "a", encoding="utf-8", buffering=1) if log_path else None
        lock = threading.Lock()

        def pump(stream, keep) -> None:
            for line in stream:
                keep(line)
                with lock:
                    if log:
                        log.write(redact(line))
                    if on_line:
                        on_line(line.rstrip("\n"))

        readers = [
            threading.Thread(target=pump, args=(proc.stderr, lambda s: tail.append(s.rstrip("\n"))), daemon=True),
            threading.Thread(target=pump, args=(proc.stdout, out_chunks.append), daemon=True),
        ]
        for r in readers:
            r.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        except BaseException:  # Ctrl-C: take the whole process group down with us
            _kill_group(proc)
            raise
        finally:
            for r in readers:
                r.join(timeout=5)
            if log:
                log.close()
        return CommandResult(
            argv=argv, returncode=None if timed_out else proc.returncode, stdout="".join(out_chunks),
            stderr_tail="\n".join(tail), duration_s=time.monotonic() - start, timed_out=timed_out,
            log_path=log_path,
        )

    def put(self, local: Path, remote: PurePath) -> bool:
        if Path(local).resolve() == Path(remote).resolve():
            return False
        if Path(remote).exists() and cached_sha256(Path(remote)) == cached_sha256(Path(local)):
            return False
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        part = Path(f"{remote}.part")
        size = Path(local).stat().st_size
        self.check_space(Path(remote).parent, size, f"a copy of {Path(local).name}")
        try:
            shutil.copyfile(local, part)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            part.unlink(missing_ok=True)
            raise DiskFull("this machine", Path(remote), needed=size, free=self.free_bytes(Path(remote).parent),
                           what=f"a copy of {Path(local).name}") from None
        os.replace(part, remote)
        return True

    def get(self, remote: PurePath, local: Path) -> None:
        self.put(Path(remote), local)

    def exists(self, remote: PurePath) -> bool:
        return Path(remote).exists()

    def move(self, src: PurePath, dst: PurePath) -> None:
        os.replace(src, dst)

    def remove(self, remote: PurePath) -> None:
        Path(remote).unlink(missing_ok=True)

    def size(self, remote: PurePath) -> int | None:
        try:
            return Path(remote).stat().st_size
        except FileNotFoundError:
            return None

    def free_bytes(self, remote: PurePath) -> int | None:
        path = Path(remote)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None

    def mkdir(self, remote: PurePath) -> None:
        Path(remote).mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)

    def read_text(self, remote: PurePath) -> str:
        return Path(remote).read_text()

    def write_text(self, remote: PurePath, text: str) -> None:
        atomic_write_text(Path(remote), text)

    def sha256(self, remote: PurePath) -> str:
        return cached_sha256(Path(remote))

    def cpu_count(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    @contextlib.contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        yield remote_host, remote_port  # the device is this machine: nothing to forward

    def local_dir(self, *parts: str) -> Path:
        d = Path(self.home).joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def describe(self) -> dict:
        return {"runner": "local", "hostname": platform.node(), "platform": platform.platform(), "home": str(self.home)}
