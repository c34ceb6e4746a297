"""A real OpenSSH server on 127.0.0.1 that plays the device in tests.

Started on a free port with a host key and an authorized client key generated for the run; the
"device" is this machine, reached only through sshd, with its own work folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from haqa.config.schema import Connect
from tests.support.net import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "haqa-test", "-f", str(path)], check=True)


@dataclass
class SshServer:
    dir: Path
    port: int
    proc: subprocess.Popen | None = None
    extra_config: str = ""  # more sshd_config lines, e.g. "SetEnv PATH=..." for a device with other tools
    # Set in every session, as one SetEnv line (sshd reads only the first: not with a SetEnv in extra_config).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def client_key(self) -> Path:
        return self.dir / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def user(self) -> str:
        import getpass

        return getpass.getuser()

    def host_key_line(self) -> str:
        kind, data = (self.dir / "host_key.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {data}\n"

    def start(self) -> SshServer:
        if not (self.dir / "host_key").exists():
            _keygen(self.dir / "host_key")
            _keygen(self.client_key)
            shutil.copy(self.dir / "client_key.pub", self.dir / "authorized_keys")
            self.known_hosts.write_text(self.host_key_line())
        set_env = f"SetEnv {' '.join(f'{k}={v}' for k, v in self.env.items())}\n" if self.env else ""
        (self.dir / "sshd_config").write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {self.dir}/host_key
            AuthorizedKeysFile {self.dir}/authorized_keys
            PidFile {self.dir}/sshd.pid
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            StrictModes no
            UsePAM no
            Subsystem sftp internal-sftp
            MaxStartups 100
            MaxSessions 50
            LogLevel INFO
        """) + set_env + self.extra_config + "\n")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "sshd.log", "a")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start listening")

    def sessions(self) -> list[int]:
        """pids of the sshd processes serving connections (children of the listener)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def cut_connections(self) -> None:
        """Drop every open connection, as a flaky network would; the listener stays up."""
        for pid in self.sessions():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # Frozen first, so that no client reconnects between its sessions' end and its own
            # (a session outlives the listener that accepted it).
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.cut_connections()
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def set_env(self, env: dict[str, str]) -> None:
        """Restart the server (no session may be open) with `env` set in the sessions it starts."""
        self.env = dict(env)
        self.restart(down_s=0)

    def restart(self, down_s: float = 3.0) -> None:
        """Stop the server (every connection dropped), stay down for `down_s`, and start it again on
        the same port with the same host key, as a device's sshd restarting would."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def target_toml(self, name: str, workdir: Path, *, known_hosts: Path | None = None,
                    connect_extra: str = "") -> str:
        from haqa.probe import local_facts

        facts = local_facts()
        return textwrap.dedent(f"""\
            name = "{name}"
            description = "this machine, reached through a test sshd on port {self.port}"
            os = "{facts['os']}"
            [hardware]
            arch = "{facts['arch']}"
            cores = {facts['cores']}
            ram_gib = {facts['ram_gib']}
            [connect]
            kind = "ssh"
            host = "127.0.0.1"
            port = {self.port}
            user = "{self.user}"
            key = "{self.client_key}"
            known_hosts = "{known_hosts or self.known_hosts}"
            workdir = "{workdir}"
            reconnects = 3
            connect_timeout_s = 10
            {connect_extra}
        """)


def start_server(directory: Path, extra_config: str = "", env: dict[str, str] | None = None) -> SshServer:
    directory.mkdir(parents=True, exist_ok=True)
    return SshServer(directory, free_port(), extra_config=extra_config, env=dict(env or {})).start()


class MemoryLimit:
    """A memory-limited cgroup (v2, or v1's memory controller) that processes can be moved into; what
    they fork stays in it. Exceeding the limit gets the kernel's OOM killer (swap is limited too).
    Needs root and a writable /sys/fs/cgroup; `MemoryLimit.unavailable()` says why not."""

    V2 = Path("/sys/fs/cgroup")
    V1 = Path("/sys/fs/cgroup/memory")

    def __init__(self, name: str, limit_bytes: int):
        self.limit = limit_bytes
        if (
            (self.V2 / "cgroup.controllers").exists()
            and "memory" in (self.V2 / "cgroup.controllers").read_text().split()
        ):
            self.version, self.dir = 2, self.V2 / name
        elif (self.V1 / "memory.limit_in_bytes").exists():
            self.version, self.dir = 1, self.V1 / name
        else:
            raise OSError("no cgroup memory controller is mounted at /sys/fs/cgroup")
        self.dir.mkdir(exist_ok=True)
        try:
            if self.version == 2:
                control = self.V2 / "cgroup.subtree_control"
                if "memory" not in control.read_text().split():
                    control.write_text("+memory")
                (self.dir / "memory.max").write_text(str(limit_bytes))
                if (self.dir / "memory.swap.max").exists():
                    (self.dir / "memory.swap.max").write_text("0")
            else:
                (self.dir / "memory.limit_in_bytes").write_text(str(limit_bytes))
                if (self.dir / "memory.memsw.limit_in_bytes").exists():
                    (self.dir / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        except OSError:
            self.remove()
            raise

    @staticmethod
    def unavailable() -> str | None:
        """None when a memory-limited cgroup can be made here, else the reason."""
        try:
            MemoryLimit(f"haqa-probe-{os.getpid()}", 1 << 30).remove()
            return None
        except OSError as e:
            return f"cannot create a memory-limited cgroup under /sys/fs/cgroup: {e}"

    def add(self, pid: int) -> None:
        (self.dir / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        """How many processes the OOM killer killed in this cgroup."""
        text = (self.dir / ("memory.events" if self.version == 2 else "memory.oom_control")).read_text()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        """Move what is left back to the root cgroup and delete this one."""
        root = self.V2 if self.version == 2 else self.V1
        procs = self.dir / "cgroup.procs"
        for _ in range(50):
            try:
                pids = procs.read_text().split() if procs.exists() else []
                for pid in pids:
                    try:
                        (root / "cgroup.procs").write_text(pid)
                    except OSError:
                        pass
                self.dir.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def device_env(directory: Path) -> dict[str, str]:
    """The loopback device's session environment: this machine's compiler cache (CCACHE_DIR, when it is
    set here: the device is this machine and user) and a ccache stats log of the device's own."""
    env = {"CCACHE_STATSLOG": str(directory / "ccache-stats.log")}
    if os.environ.get("CCACHE_DIR"):
        env["CCACHE_DIR"] = os.environ["CCACHE_DIR"]
    return env


def connect_for(sshd: SshServer, device_home: Path, **over) -> Connect:
    """The [connect] of a target reaching the loopback device through `sshd`, working in device_home."""
    fields = dict(kind="ssh", host="127.0.0.1", port=sshd.port, user=sshd.user, key=str(sshd.client_key),
                  known_hosts=str(sshd.known_hosts), workdir=str(device_home), reconnects=3, connect_timeout_s=10)
    fields.update(over)
    return Connect(**fields)
