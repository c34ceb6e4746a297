"""Files on the device over SFTP: verified by sha256, skipped when already there, resumed after a
dropped connection; a full disk is reported as DiskFull with the path and the space, and the partial
file removed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath, PurePosixPath

from haqa import ui
from haqa.errors import ConnectionLost, UserError
from haqa.hashing import cached_sha256
from haqa.runner.base import PRIVATE_DIR, DiskFull
from haqa.runner.ssh.connection import CHUNK, Connection
from haqa.runner.ssh.process import Commands

# What a write on a full disk reports: ENOSPC/EDQUOT where the error says so, and plain SFTP "Failure"
# (protocol version 3, which OpenSSH speaks, has no code for a full disk).
_NO_SPACE = re.compile(r"no space left|disk quota|quota exceeded|iostream error|\bfailure\b", re.I)


@contextlib.contextmanager
def _interrupt_between_blocks() -> Iterator[Callable[[], None]]:
    """Ctrl-C during a file transfer, taken between two blocks instead of wherever it lands: inside
    paramiko it can cut an SFTP packet in half, and closing the file then waits for an answer that never
    comes. Yields the check to call after each block. (Only the main thread receives signals; elsewhere
    this changes nothing.)"""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: None
        return
    pressed: list[int] = []

    def check() -> None:
        if pressed:
            pressed.clear()
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    check()


def _stamp(st) -> str:
    """What a remembered sha256 of a device file is valid for: its size and modification time."""
    return f"{st.st_size}:{int(st.st_mtime)}"


class Transfer:
    """The device's files, over the SFTP session of one Connection (commands for hashing and free space)."""

    def __init__(self, conn: Connection, commands: Commands):
        self.conn, self.commands = conn, commands
        self.bytes_sent = 0  # counted across put() calls; tests use it to prove resumption
        self.on_chunk: Callable[[int], None] | None = None  # test hook: called after each block is sent

    @property
    def label(self) -> str:
        return self.conn.label

    def stat(self, remote: PurePath):
        """The SFTP attributes of a device file; None when it is not there."""
        try:
            return self.conn.sftp().stat(str(remote))
        except FileNotFoundError:
            return None
        except OSError as e:
            if getattr(e, "errno", None) == 2:
                return None
            raise

    def exists(self, remote: PurePath) -> bool:
        return self.conn.retrying("stat", lambda: self.stat(remote) is not None)

    def size(self, remote: PurePath) -> int | None:
        st = self.conn.retrying("stat", lambda: self.stat(remote))
        return st.st_size if st is not None else None

    def mkdir(self, remote: PurePath) -> None:
        def do() -> None:
            sftp = self.conn.sftp()
            path = PurePosixPath(remote)
            missing = []
            while str(path) not in ("/", ".") and self.stat(path) is None:
                missing.append(path)
                path = path.parent
            for p in reversed(missing):
                try:
                    sftp.mkdir(str(p), mode=PRIVATE_DIR)
                except OSError:
                    if self.stat(p) is None:
                        raise

        self.conn.retrying("mkdir", do)

    def move(self, src: PurePath, dst: PurePath) -> None:
        self.conn.retrying("rename", lambda: self.conn.sftp().posix_rename(str(src), str(dst)))

    def remove(self, remote: PurePath) -> None:
        def do() -> None:
            try:
                self.conn.sftp().remove(str(remote))
            except FileNotFoundError:
                pass

        self.conn.retrying("remove", do)

    def read_text(self, remote: PurePath) -> str:
        def do() -> str:
            with self.conn.sftp().open(str(remote), "r") as f:
                return f.read().decode()

        return self.conn.retrying("read", do)

    def write_text(self, remote: PurePath, text: str) -> None:
        self.mkdir(PurePosixPath(remote).parent)
        part = PurePosixPath(f"{remote}.part")

        def do() -> None:
            with self.conn.sftp().open(str(part), "w") as f:
                f.write(text.encode())
            self.conn.sftp().posix_rename(str(part), str(remote))

        try:
            self.conn.retrying("write", do)
        except OSError as e:
            self._raise_if_disk_full(e, part, remote, len(text.encode()), f"writing {PurePosixPath(remote).name}")
            raise

    def free_bytes(self, remote: PurePath) -> int | None:
        """Free space for this user on the filesystem of `remote` (or its nearest existing parent),
        from `df -Pk` (POSIX output; Linux, macOS and BusyBox all have it)."""
        script = 'p=$1; while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname "$p"); done; df -Pk "$p" | tail -n 1'
        try:
            r = self.commands.run(["sh", "-c", script, "haqa", str(remote)], timeout=60)
        except ConnectionLost:
            raise
        except UserError:  # no sh or df there
            return None
        m = re.search(r"\s(\d+)\s+(\d+)\s+(\d+)\s+\d+%", r.stdout)
        return int(m.group(3)) * 1024 if r.ok and m else None

    def _raise_if_disk_full(self, error: BaseException, part: PurePosixPath, remote: PurePath, size: int,
                            what: str) -> None:
        """After a failed write: when the device's disk is (nearly) full, remove the partial file and
        raise DiskFull naming the path, the free space and the space needed; else return."""
        if not _NO_SPACE.search(str(error)) and getattr(error, "errno", None) not in (28, 122):  # ENOSPC, EDQUOT
            return
        free = self.free_bytes(PurePosixPath(remote).parent)
        st = self.stat(part)
        written = st.st_size if st is not None else 0
        if free is None or free + written >= size and free >= 1 << 20:
            return  # there was room: some other failure
        self.remove(part)
        raise DiskFull(self.label, remote, needed=size, free=free + written, what=what) from None

    def _sha256_now(self, remote: PurePath) -> str:
        text = self.commands.check(["sh", "-c", 'sha256sum "$1" 2>/dev/null || shasum -a 256 "$1"', "haqa",
                                    str(remote)], f"hashing {remote}")
        return text.split()[0]

    def sha256(self, remote: PurePath) -> str:
        """sha256 of a device file, remembered beside it (`.sha256.json`) for its size and mtime."""
        st = self.stat(remote)
        if st is None:
            raise FileNotFoundError(str(remote))
        sidecar = PurePosixPath(f"{remote}.sha256.json")
        if self.stat(sidecar) is not None:
            try:
                saved = json.loads(self.read_text(sidecar))
                if saved.get("stamp") == _stamp(st):
                    return saved["value"]
            except ValueError:
                pass
        digest = self._sha256_now(remote)
        self.write_text(sidecar, json.dumps({"stamp": _stamp(st), "value": digest}))
        return digest

    def put(self, local: Path, remote: PurePath, check_space: Callable[[PurePath, int, str], None]) -> bool:
        """Upload unless the same file is there; resumed after a drop, verified by sha256 (sent again once
        when it differs), moved into place from `.part`. `check_space` refuses an upload that cannot fit."""
        local = Path(local)
        digest = cached_sha256(local)
        size = local.stat().st_size
        st = self.stat(remote)
        if st is not None and st.st_size == size and self.sha256(remote) == digest:
            return False
        self.mkdir(PurePosixPath(remote).parent)
        part = PurePosixPath(f"{remote}.part")
        st = self.stat(part)
        have = st.st_size if st is not None and st.st_size <= size else 0
        check_space(remote, size - have, f"the upload of {local.name}")
        with ui.progress(f"uploading {local.name} to {self.label}", total=size) as bar:
            for fresh_start in (False, True):
                if fresh_start:
                    self.remove(part)
                try:
                    self.conn.retrying(f"the upload of {local.name}", lambda: self._send(local, part, size, bar))
                except OSError as e:
                    self._raise_if_disk_full(e, part, remote, size, f"the upload of {local.name}")
                    raise UserError(f"uploading {local} to {self.label}:{remote} failed: "
                                    f"{type(e).__name__}: {e}") from None
                got = self._sha256_now(part)
                if got == digest:
                    break
                ui.note(f"{local.name}: hash mismatch after upload ({got[:12]} != {digest[:12]}); sending it again")
            else:
                raise UserError(f"uploading {local} to {self.label}:{remote} produced a different file twice")
        self.move(part, remote)
        self.write_text(PurePosixPath(f"{remote}.sha256.json"),
                        json.dumps({"stamp": _stamp(self.stat(remote)), "value": digest}))
        return True

    def _send(self, local: Path, part: PurePosixPath, size: int, bar) -> None:
        """Append what the device lacks to `part`: a resumed upload sends only the rest."""
        sftp = self.conn.sftp()
        st = self.stat(part)
        offset = st.st_size if st is not None and st.st_size <= size else 0
        if offset:
            ui.note(f"resuming the upload of {local.name} at {offset / 2**20:.1f} of {size / 2**20:.1f} MiB")
        with _interrupt_between_blocks() as interrupted, open(local, "rb") as fin, \
                sftp.open(str(part), "ab" if offset else "wb") as fout:
            fout.set_pipelined(True)
            fin.seek(offset)
            done = offset
            bar.update(done)
            while block := fin.read(CHUNK):
                fout.write(block)
                done += len(block)
                self.bytes_sent += len(block)
                bar.update(done)
                if self.on_chunk:
                    self.on_chunk(done)
                interrupted()

    def get(self, remote: PurePath, local: Path) -> None:
        """Download, resumed after a drop, verified by sha256, moved into place from `.part`."""
        local = Path(local)
        digest = self.sha256(remote)
        if local.exists() and cached_sha256(local) == digest:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")

        def receive() -> None:
            sftp = self.conn.sftp()
            offset = part.stat().st_size if part.exists() else 0
            with _interrupt_between_blocks() as interrupted, sftp.open(str(remote), "rb") as fin, \
                    open(part, "ab" if offset else "wb") as fout:
                fin.prefetch()
                fin.seek(offset)
                while block := fin.read(CHUNK):
                    fout.write(block)
                    interrupted()

        self.conn.retrying(f"the download of {remote}", receive)
        if cached_sha256(part) != digest:
            part.unlink()
            raise UserError(f"downloading {self.label}:{remote} gave a file whose sha256 differs; try again")
        os.replace(part, local)
