"""The SSH runner (paramiko): the device is any Linux or macOS machine reachable over SSH.

SshRunner is the Runner; each idea behind it has its own module:
- connection: the private key, host keys, jump host, keepalives; opened again after a drop;
- reconnect: what counts as a dropped connection;
- process: commands as argv lists under a wrapper that names their process group (timeouts, Ctrl-C,
  and the orphans a drop leaves, stopped by a later connection); a cut-off command runs again;
- transfer: files over SFTP, verified by sha256, resumed after a drop; a full disk is DiskFull;
- forward: a port on this machine that reaches one on the device.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath

from haqa import paths
from haqa.config.schema import Connect
from haqa.runner.base import CommandResult, Runner
from haqa.runner.ssh.connection import PASSPHRASE_VAR, Connection, load_private_key
from haqa.runner.ssh.forward import forward
from haqa.runner.ssh.process import ORPHANS_FILE, Commands, Orphans, command_line
from haqa.runner.ssh.transfer import Transfer

__all__ = ["PASSPHRASE_VAR", "SshRunner", "command_line", "load_private_key"]


class SshRunner(Runner):
    name = "ssh"
    shares_filesystem = False
    shares_cpu = False
    known_python = None

    def __init__(self, connect: Connect, *, label: str | None = None, local_root: Path | None = None):
        if connect.kind != "ssh" or not connect.host:
            raise ValueError("SshRunner needs an ssh [connect] table")
        self.connect = connect
        self.label = label or f"{connect.user + '@' if connect.user else ''}{connect.host}:{connect.port}"
        self._local_root = local_root or paths.cache_home() / "devices" / re.sub(r"[^A-Za-z0-9._-]", "_", self.label)
        self.connection = Connection(connect, self.label)
        self.commands = Commands(self.connection, Orphans(self._local_root / ORPHANS_FILE))
        self.connection.on_connect = self.commands.stop_orphans
        self.transfer = Transfer(self.connection, self.commands)
        self._cpu_count: int | None = None

    @property
    def home(self) -> PurePosixPath:  # type: ignore[override]
        return self.connection.home

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
        return self.commands.run(argv, timeout=timeout, cwd=cwd, env=env, log_path=log_path, on_line=on_line)

    def cpu_count(self) -> int:
        if self._cpu_count is None:
            text = self.commands.check(["sh", "-c", "nproc 2>/dev/null || sysctl -n hw.ncpu"], "counting CPUs")
            self._cpu_count = int(text.split()[0])
        return self._cpu_count

    def forward(self, remote_port: int,
                remote_host: str = "127.0.0.1") -> contextlib.AbstractContextManager[tuple[str, int]]:
        return forward(self.connection, remote_port, remote_host)

    def put(self, local: Path, remote: PurePath) -> bool:
        return self.transfer.put(local, remote, self.check_space)

    def get(self, remote: PurePath, local: Path) -> None:
        self.transfer.get(remote, local)

    def exists(self, remote: PurePath) -> bool:
        return self.transfer.exists(remote)

    def size(self, remote: PurePath) -> int | None:
        return self.transfer.size(remote)

    def mkdir(self, remote: PurePath) -> None:
        self.transfer.mkdir(remote)

    def move(self, src: PurePath, dst: PurePath) -> None:
        self.transfer.move(src, dst)

    def remove(self, remote: PurePath) -> None:
        self.transfer.remove(remote)

    def read_text(self, remote: PurePath) -> str:
        return self.transfer.read_text(remote)

    def write_text(self, remote: PurePath, text: str) -> None:
        self.transfer.write_text(remote, text)

    def sha256(self, remote: PurePath) -> str:
        return self.transfer.sha256(remote)

    def free_bytes(self, remote: PurePath) -> int | None:
        return self.transfer.free_bytes(remote)

    def local_dir(self, *parts: str) -> Path:
        d = self._local_root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def describe(self) -> dict:
        c = self.connect
        return {"runner": "ssh", "host": c.host, "port": c.port, "user": c.user, "jump": c.jump, "home": str(self.home)}

    def close(self) -> None:
        self.connection.close()
