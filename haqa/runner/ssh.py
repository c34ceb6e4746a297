"""The SSH runner (paramiko): the device is any Linux or macOS machine reachable over SSH.

Commands are argv lists, each element quoted by haqa (shlex) into the one command line SSH carries;
they run under a small shell that leads their process group, so a timeout or Ctrl-C can stop
everything they started. A connection that drops while a command runs is re-established (at most
[connect].reconnects times); the cut-off command's process group is stopped on the device and the
command runs again from the start (haqa's commands are safe to repeat: see Runner). Files move over
SFTP, verified by sha256, skipped when already there, and resumed after a dropped connection; a full
disk is reported as DiskFull with the path and the space, and the partial file removed. Host keys are
checked against known_hosts; trust on first use only when the target says so; a changed key is always
refused.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import select
import shlex
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath

import paramiko

from haqa import paths, ui
from haqa.config.schema import Connect
from haqa.errors import ConnectionLost, UserError
from haqa.hashing import cached_sha256
from haqa.runner.base import PRIVATE_DIR, CommandResult, DiskFull, Runner
from haqa.secrets import redact

TAIL_LINES = 60
CHUNK = 1 << 18
_PGID = re.compile(r"^HAQA-PGID (\d+)$")
_SIGNAL = re.compile(r"^HAQA-EXIT-SIGNAL (\d+)$")
# Started by sshd through the login shell, which sshd made a session (and so process group) leader;
# the outer `exec` keeps that pid for this shell, so $$ is the group to kill. The program runs as its
# child rather than in its place: sshd reports a death by signal as "exit-signal", which paramiko drops,
# so the shell reports it (an exit status of 128+N is a death by signal N) for the runner to return -N,
# as subprocess does on this machine.
_WRAPPER = ('echo "HAQA-PGID $$" >&2; "$@"; s=$?; '
            'if [ "$s" -gt 128 ] && [ "$s" -lt 193 ]; then echo "HAQA-EXIT-SIGNAL $((s - 128))" >&2; fi; exit "$s"')
# Stops process groups left running by a connection that dropped: TERM (make and compilers delete what
# they were writing), then KILL. A group is touched only if its leader is gone (a group id cannot be
# reused while any member lives) or is still one of haqa's wrappers. `kill -s SIG -- -PGID` is the form
# every sh takes (dash refuses `kill -TERM -- -PGID`).
_REAP = ('for sig in TERM CONT KILL; do for g in "$@"; do a=$(ps -o args= -p "$g" 2>/dev/null); '
         'case "$a" in ""|*HAQA-PGID*) kill -s "$sig" -- "-$g" 2>/dev/null;; esac; done; '
         '[ "$sig" = CONT ] && sleep 2; done; true')
# The same for a group whose leader haqa is still talking to (a timeout, a Ctrl-C). CONT wakes a stopped
# process so that it can act on its TERM.
_KILL = ('kill -s TERM -- "-$1" 2>/dev/null; kill -s CONT -- "-$1" 2>/dev/null; sleep 2; '
         'kill -s KILL -- "-$1" 2>/dev/null; true')
_STALE_FILE = "stale-process-groups.json"
_TRANSIENT = (socket.error, EOFError, paramiko.SSHException)
_DROPS = (EOFError, paramiko.SSHException, ConnectionError, socket.timeout)
# What a write on a full disk reports: ENOSPC/EDQUOT where the error says so, and plain SFTP "Failure"
# (protocol version 3, which OpenSSH speaks, has no code for a full disk).
_NO_SPACE = re.compile(r"no space left|disk quota|quota exceeded|iostream error|\bfailure\b", re.I)


def _interrupt_in(e: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind an error, if any: a KeyboardInterrupt that lands inside paramiko (in a write,
    say) can leave it failing while it cleans up, and that failure, not the Ctrl-C, is what reaches
    haqa; the Ctrl-C must not be mistaken for a dropped connection."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__context__ or e.__cause__
    return None


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


class _Dropped(Exception):
    """The connection went away while a command ran (internal: run() reconnects and runs it again)."""


# paramiko logs each refused forward ("Secsh channel open FAILED") and dropped connection itself; haqa
# reports what matters, so without a logging setup of the user's its records are not printed.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} SHA256:{key.fingerprint.split(':', 1)[-1] if ':' in key.fingerprint else key.fingerprint}"


class _TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host's key once and save it; paramiko itself refuses a changed key."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.known_hosts))
        ui.note(f"trusting {hostname} on first use: {key.get_name()} {key.fingerprint}; saved to {self.known_hosts}")


def _program(argv: Sequence[str]) -> str:
    """The program an argv runs, for messages: through a `python -c CODE program ...` wrapper (the
    peak-RSS one), the wrapped program."""
    name = PurePosixPath(argv[0]).name
    if name.startswith("python") and len(argv) > 3 and argv[1] == "-c":
        return PurePosixPath(argv[3]).name
    return name


def command_line(argv: Sequence[str], cwd: PurePath | None = None, env: Mapping[str, str] | None = None) -> str:
    """The single string sent over SSH for argv: every element quoted, no value interpreted."""
    parts: list[str] = []
    if cwd is not None:
        parts += ["cd", shlex.quote(str(cwd)), "&&"]
    parts.append("exec")
    if env:
        bad = [k for k in env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"invalid environment variable names: {bad}")
        parts += ["env", *(shlex.quote(f"{k}={v}") for k, v in env.items())]
    parts += ["sh", "-c", shlex.quote(_WRAPPER), "haqa", *(shlex.quote(str(a)) for a in argv)]
    return " ".join(parts)


PASSPHRASE_VAR = "HAQA_SSH_KEY_PASSPHRASE"


def load_private_key(path: Path) -> paramiko.PKey:
    """[connect].key, read (and decrypted with $HAQA_SSH_KEY_PASSPHRASE) before any connection, so a wrong
    passphrase or a file that is not a key is said as such, never as an unreachable device."""
    passphrase = os.environ.get(PASSPHRASE_VAR)
    try:
        return paramiko.PKey.from_path(path, password=passphrase.encode() if passphrase is not None else None)
    except FileNotFoundError:
        raise UserError(f"[connect].key: no such file: {path}", hint="point it at the private key the device accepts") from None
    except (paramiko.PasswordRequiredException, TypeError) as e:
        if not isinstance(e, paramiko.PasswordRequiredException) and "password" not in str(e):
            raise UserError(f"[connect].key {path} is not a private key haqa can read ({type(e).__name__})") from None
        raise UserError(f"[connect].key {path} is encrypted and {PASSPHRASE_VAR} is not set",
                        hint=f"set {PASSPHRASE_VAR} to its passphrase, or load the key into ssh-agent and leave "
                             "[connect].key out") from None
    except (paramiko.SSHException, ValueError, OSError) as e:
        what = (f"cannot be decrypted with {PASSPHRASE_VAR} (wrong passphrase?)" if passphrase
                else f"is not a private key haqa can read ({type(e).__name__})")
        raise UserError(f"[connect].key {path} {what}",
                        hint=f"check {PASSPHRASE_VAR} and the key file (`ssh-keygen -y -f {path}` asks for the "
                             "passphrase and prints the public key)") from None


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
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: PurePosixPath | None = None
        self._cpu_count: int | None = None
        # Process groups of commands cut off by a dropped connection, kept on this machine until the
        # device has been reached again (in this run or the next) and they have been stopped there.
        self._stale: list[int] = self._load_stale()
        self.bytes_sent = 0  # counted across put() calls; tests use it to prove resumption

    # -- connection -----------------------------------------------------------------------------

    @property
    def _known_hosts(self) -> Path:
        return Path(self.connect.known_hosts or "~/.ssh/known_hosts").expanduser()

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self._known_hosts.exists():
            client.load_host_keys(str(self._known_hosts))
        if not self.connect.known_hosts:
            try:
                client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
            except OSError:
                pass
        client.set_missing_host_key_policy(
            _TrustOnFirstUse(self._known_hosts) if self.connect.trust_on_first_use else paramiko.RejectPolicy()
        )
        return client

    def _open(self, host: str, port: int, user: str | None, sock=None) -> paramiko.SSHClient:
        client = self._new_client()
        pkey = load_private_key(Path(self.connect.key).expanduser()) if self.connect.key else None
        try:
            client.connect(
                host, port=port, username=user, pkey=pkey, sock=sock, timeout=self.connect.connect_timeout_s,
                banner_timeout=self.connect.connect_timeout_s, auth_timeout=self.connect.connect_timeout_s,
                allow_agent=True, look_for_keys=pkey is None, passphrase=os.environ.get("HAQA_SSH_KEY_PASSPHRASE"),
            )
        except paramiko.BadHostKeyException as e:
            hostport = host if port == 22 else f"[{host}]:{port}"
            raise UserError(
                f"the host key of {hostport} has CHANGED (expected {_fingerprint(e.expected_key)}, "
                f"got {_fingerprint(e.key)}); refusing to connect",
                hint=f"if the device was reinstalled, check the new key and remove the old one with "
                f"`ssh-keygen -f {self._known_hosts} -R '{hostport}'`; otherwise someone may be intercepting the connection",
            ) from None
        except paramiko.AuthenticationException as e:
            raise UserError(
                f"ssh authentication to {user or ''}@{host}:{port} failed: {e}",
                hint="set [connect].key to a private key the device accepts (an encrypted one with "
                     f"{PASSPHRASE_VAR}), or load one into ssh-agent",
            ) from None
        except paramiko.SSHException as e:
            if "not found in known_hosts" in str(e):
                hostport = host if port == 22 else f"[{host}]:{port}"
                raise UserError(
                    f"{hostport} is not in {self._known_hosts}, so its identity cannot be checked",
                    hint=f"check the device's key and add it (`ssh-keyscan -p {port} {host} >> {self._known_hosts}`), "
                    "or set [connect].trust_on_first_use = true in the target",
                ) from None
            raise
        if self.connect.keepalive_s:
            client.get_transport().set_keepalive(self.connect.keepalive_s)
        return client

    def _connect_once(self) -> None:
        c = self.connect
        sock = None
        if (jump := c.jump_parts()) is not None:
            juser, jhost, jport = jump
            self._jump = self._open(jhost, jport, juser)
            sock = self._jump.get_transport().open_channel("direct-tcpip", (c.host, c.port), ("127.0.0.1", 0))
        self._client = self._open(c.host, c.port, c.user, sock=sock)
        self._sftp = self._client.open_sftp()
        if self._home is None:
            home = PurePosixPath(self._sftp.normalize("."))
            wd = c.workdir
            self._home = home / wd[2:] if wd.startswith("~/") else home if wd == "~" else home / wd

    def _ensure(self) -> paramiko.SSHClient:
        transport = self._client.get_transport() if self._client else None
        if transport is not None and transport.is_active():
            return self._client
        self.close()
        attempts = 1 + self.connect.reconnects
        for attempt in range(attempts):
            try:
                self._connect_once()
                if self._stale:
                    self._reap_stale()
                return self._client
            except UserError:
                raise
            except (*_TRANSIENT, OSError) as e:
                self.close()
                if attempt + 1 == attempts:
                    raise ConnectionLost(
                        f"cannot reach {self.label}: {type(e).__name__}: {e} (after {attempts} attempts)",
                        hint="check that the device is on and sshd runs (`haqa doctor` checks the rest), then run the "
                             "same command again: haqa resumes",
                    ) from None
                delay = min(2 ** attempt, 10)
                ui.note(f"connection to {self.label} failed ({type(e).__name__}); retrying in {delay} s")
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _sftp_client(self) -> paramiko.SFTPClient:
        self._ensure()
        return self._sftp

    def _load_stale(self) -> list[int]:
        try:
            return [int(g) for g in json.loads((self._local_root / _STALE_FILE).read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def _save_stale(self) -> None:
        path = self._local_root / _STALE_FILE
        if self._stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            part.write_text(json.dumps(sorted(set(self._stale))))
            os.replace(part, path)
        else:
            path.unlink(missing_ok=True)

    def _add_stale(self, groups: Sequence[int]) -> None:
        self._stale += [g for g in groups if g not in self._stale]
        self._save_stale()

    def _reap_stale(self) -> None:
        """Stop the process groups of commands that a dropped connection cut off (they would otherwise
        go on running on the device, orphaned, beside the command that replaces them)."""
        groups = list(self._stale)
        try:
            chan = self._client.get_transport().open_session()
            chan.exec_command(" ".join(["sh", "-c", shlex.quote(_REAP), "haqa", *(str(g) for g in groups)]))
            chan.recv_exit_status()
            chan.close()
        except (*_TRANSIENT, OSError) as e:
            ui.note(f"could not stop process group(s) {groups} on {self.label} yet: {e}")  # the next connection will
            return
        self._stale = [g for g in self._stale if g not in groups]
        self._save_stale()
        ui.note(f"{self.label}: stopped process group(s) {', '.join(map(str, groups))} left by the dropped connection")

    @staticmethod
    def _connection_ending(client: paramiko.SSHClient, wait_s: float = 2.0) -> bool:
        """Whether the connection is gone, or going (paramiko closes its channels just before it marks
        the transport inactive): a channel that ended with no exit status either lost its connection
        or had its shell killed by a signal, and only the transport can tell which."""
        transport = client.get_transport()
        deadline = time.monotonic() + wait_s
        while transport is not None and transport.is_active():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _dropped(self, e: BaseException) -> bool:
        """Whether an error means the connection is gone (else it is the operation's own error)."""
        if isinstance(e, _DROPS):
            return True
        transport = self._client.get_transport() if self._client else None
        return transport is None or not transport.is_active()

    def _retrying(self, what: str, fn: Callable[[], object]):
        """Run fn, reconnecting (bounded) when the connection drops; fn must be safe to repeat."""
        for attempt in range(1 + self.connect.reconnects):
            try:
                self._ensure()
                return fn()
            except (ConnectionLost, UserError):
                raise
            except (*_TRANSIENT, OSError) as e:
                if (interrupt := _interrupt_in(e)) is not None:
                    raise interrupt from None
                if isinstance(e, (FileNotFoundError, PermissionError)) or (isinstance(e, IOError) and getattr(e, "errno", None) in (2, 13)):
                    raise
                if not self._dropped(e):
                    raise  # the device answered: a real error of this operation (a full disk, say)
                ui.note(f"connection to {self.label} dropped during {what} ({type(e).__name__}: {e}); reconnecting")
                self.close()
        raise ConnectionLost(f"lost the connection to {self.label} during {what}, {1 + self.connect.reconnects} times",
                             hint="check the device and the network, then run the same command again: haqa resumes")

    @property
    def home(self) -> PurePosixPath:  # type: ignore[override]
        if self._home is None:
            self._ensure()
        return self._home

    def close(self) -> None:
        for c in (self._sftp, self._client, self._jump):
            try:
                if c is not None:
                    c.close()
            except Exception:
                pass
        self._sftp = self._client = self._jump = None

    # -- commands -------------------------------------------------------------------------------

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
        attempts = 1 + self.connect.reconnects
        for attempt in range(attempts):
            try:
                return self._run_once(argv, timeout=timeout, cwd=cwd, env=env, log_path=log_path, on_line=on_line)
            except _Dropped as e:
                program = _program(argv)
                if attempt + 1 == attempts:
                    raise ConnectionLost(
                        f"lost the connection to {self.label} while running {program}, {attempts} times; "
                        f"its output so far is in {log_path or 'the log'}",
                        hint="check the device and the network, then run the same command again: haqa resumes",
                    ) from None
                ui.note(f"connection to {self.label} lost while running {program} ({e}); reconnecting to run it "
                        f"again from the start ({attempt + 1} of {self.connect.reconnects} retries)")
                if log_path:
                    with open(log_path, "a", encoding="utf-8") as log:
                        log.write(redact(f"--- haqa: the connection dropped ({e}); {program} runs again from the start ---\n"))
        raise AssertionError("unreachable")

    def _run_once(self, argv: list[str], *, timeout, cwd, env, log_path, on_line) -> CommandResult:
        for attempt in range(2):  # a connection that died while idle is noticed here: start again once
            client = self._ensure()
            try:
                chan = client.get_transport().open_session()
                chan.exec_command(command_line(argv, cwd, env))
                break
            except (*_TRANSIENT, OSError) as e:
                self.close()
                if attempt:
                    raise _Dropped(f"cannot start {argv[0]}: {e}") from None
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        out: list[str] = []
        partial = {"out": "", "err": ""}
        pgid: list[int] = []
        killed_by: list[int] = []
        log = open(log_path, "a", encoding="utf-8") if log_path else None

        def lines(kind: str, data: bytes, final: bool = False) -> None:
            text = partial[kind] + data.decode("utf-8", errors="replace")
            *complete, partial[kind] = text.split("\n")
            if final and partial[kind]:
                complete.append(partial[kind])
                partial[kind] = ""
            for line in complete:
                if kind == "err":
                    if not pgid and (m := _PGID.match(line)):
                        pgid.append(int(m.group(1)))
                        continue
                    if m := _SIGNAL.match(line):
                        killed_by.append(int(m.group(1)))
                        line = f"(haqa: {_program(argv)} was killed by signal {m.group(1)})"
                    else:
                        tail.append(line)
                else:
                    out.append(line + "\n")
                if log:
                    log.write(redact(line) + "\n")
                if on_line:
                    on_line(line)

        timed_out = False
        try:
            while True:
                if chan.recv_stderr_ready():  # stderr first: its first line names the process group
                    lines("err", chan.recv_stderr(CHUNK))
                    continue
                if chan.recv_ready():
                    lines("out", chan.recv(CHUNK))
                    continue
                if chan.exit_status_ready():
                    while chan.recv_ready() or chan.recv_stderr_ready():
                        if chan.recv_ready():
                            lines("out", chan.recv(CHUNK))
                        if chan.recv_stderr_ready():
                            lines("err", chan.recv_stderr(CHUNK))
                    if chan.exit_status == -1 and self._connection_ending(client):
                        # paramiko marks a channel done when its connection goes, with no status
                        self._add_stale(pgid)
                        self.close()
                        raise _Dropped(f"the connection closed after {time.monotonic() - start:.0f} s")
                    break
                if deadline and time.monotonic() > deadline:
                    timed_out = True
                    self._kill_group(pgid)
                    break
                if not client.get_transport().is_active() or chan.closed and not chan.exit_status_ready():
                    # What the command started may run on, orphaned: stop it on reconnecting.
                    self._add_stale(pgid)
                    self.close()
                    raise _Dropped(f"the connection closed after {time.monotonic() - start:.0f} s")
                select.select([chan], [], [], 0.2)
        except _Dropped:
            raise
        except BaseException as e:
            if not timed_out:
                self._await_pgid(chan, pgid)
                self._kill_group(pgid)  # Ctrl-C (or a lost connection): stop the remote process group
            if (interrupt := _interrupt_in(e)) is not None and interrupt is not e:
                raise interrupt from None
            raise
        finally:
            lines("out", b"", final=True)
            lines("err", b"", final=True)
            if log:
                log.close()
        code = None if timed_out else -killed_by[-1] if killed_by else chan.recv_exit_status()
        chan.close()
        if code == 127 and not pgid:
            raise UserError(f"'{argv[0]}' could not be started on {self.label}: {' '.join(tail) or 'command not found'}")
        return CommandResult(argv=argv, returncode=code, stdout="".join(out), stderr_tail="\n".join(tail),
                             duration_s=time.monotonic() - start, timed_out=timed_out, log_path=log_path)

    @staticmethod
    def _await_pgid(chan, pgid: list[int], wait_s: float = 3.0) -> None:
        """Read stderr until the wrapper's first line has named the process group (or give up)."""
        deadline = time.monotonic() + wait_s
        buf = b""
        while not pgid and time.monotonic() < deadline and not chan.closed:
            if chan.recv_stderr_ready():
                buf += chan.recv_stderr(CHUNK)
                for line in buf.decode(errors="replace").splitlines():
                    if m := _PGID.match(line):
                        pgid.append(int(m.group(1)))
                        return
            else:
                time.sleep(0.02)

    def _kill_group(self, pgid: list[int]) -> None:
        if not pgid:
            return
        g = int(pgid[0])
        self._add_stale([g])  # until it is done: a second Ctrl-C, or a device gone, leaves it to the next connection
        try:
            client = self._ensure()
            chan = client.get_transport().open_session()
            chan.exec_command(f"sh -c {shlex.quote(_KILL)} haqa {g}")
            chan.recv_exit_status()
            chan.close()
        except Exception as e:  # the device may be gone: the next connection (of this run or the next) stops it
            ui.note(f"could not stop process group {g} on {self.label} now ({e}); the next connection will")
            return
        self._stale = [x for x in self._stale if x != g]
        self._save_stale()

    def _check(self, argv: Sequence[str], what: str) -> str:
        r = self.run(argv, timeout=600)
        if not r.ok:
            raise UserError(f"{what} failed on {self.label} (exit {r.returncode}): {r.stderr_tail[-500:]}")
        return r.stdout

    def cpu_count(self) -> int:
        if self._cpu_count is None:
            text = self._check(["sh", "-c", "nproc 2>/dev/null || sysctl -n hw.ncpu"], "counting CPUs")
            self._cpu_count = int(text.split()[0])
        return self._cpu_count

    # -- port forwarding ------------------------------------------------------------------------

    @contextlib.contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
        """A local port on 127.0.0.1 whose connections go through this SSH connection (a direct-tcpip
        channel each, as `ssh -L` does) to remote_host:remote_port as the device sees it. A connection
        the device refuses is closed at once."""
        self._ensure()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        stop, prohibited = threading.Event(), threading.Event()
        pumps: list[threading.Thread] = []

        def pump(sock: socket.socket) -> None:
            chan = None
            try:
                transport = self._client.get_transport() if self._client else None
                if transport is None or not transport.is_active():
                    return  # the next command reconnects; this connection is simply refused
                chan = transport.open_channel("direct-tcpip", (remote_host, remote_port), sock.getpeername(),
                                              timeout=self.connect.connect_timeout_s)
                while not stop.is_set():
                    ready, _, _ = select.select([sock, chan], [], [], 0.2)
                    if sock in ready:
                        data = sock.recv(CHUNK)
                        if not data:
                            break
                        chan.sendall(data)
                    if chan in ready:
                        data = chan.recv(CHUNK)
                        if not data:
                            break
                        sock.sendall(data)
            except paramiko.ChannelException as e:
                if e.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED and not prohibited.is_set():
                    prohibited.set()
                    ui.note(f"{self.label}: sshd refuses port forwarding (AllowTcpForwarding); "
                            f"{remote_host}:{remote_port} on the device cannot be reached from here")
            except (*_TRANSIENT, OSError):
                pass  # refused by the device, or either side hung up
            finally:
                if chan is not None:
                    chan.close()
                sock.close()

        def accept() -> None:
            while not stop.is_set():
                ready, _, _ = select.select([listener], [], [], 0.2)
                if ready:
                    sock, _ = listener.accept()
                    t = threading.Thread(target=pump, args=(sock,), daemon=True)
                    t.start()
                    pumps.append(t)

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            yield "127.0.0.1", listener.getsockname()[1]
        finally:
            stop.set()
            acceptor.join(timeout=5)
            listener.close()
            for t in pumps:
                t.join(timeout=5)

    # -- files ----------------------------------------------------------------------------------

    def _stat(self, remote: PurePath):
        try:
            return self._sftp_client().stat(str(remote))
        except FileNotFoundError:
            return None
        except IOError as e:
            if getattr(e, "errno", None) == 2:
                return None
            raise

    def exists(self, remote: PurePath) -> bool:
        return self._retrying("stat", lambda: self._stat(remote) is not None)

    def size(self, remote: PurePath) -> int | None:
        st = self._retrying("stat", lambda: self._stat(remote))
        return st.st_size if st is not None else None

    def mkdir(self, remote: PurePath) -> None:
        def do() -> None:
            sftp = self._sftp_client()
            path = PurePosixPath(remote)
            missing = []
            while str(path) not in ("/", ".") and self._stat(path) is None:
                missing.append(path)
                path = path.parent
            for p in reversed(missing):
                try:
                    sftp.mkdir(str(p), mode=PRIVATE_DIR)
                except IOError:
                    if self._stat(p) is None:
                        raise

        self._retrying("mkdir", do)

    def move(self, src: PurePath, dst: PurePath) -> None:
        self._retrying("rename", lambda: self._sftp_client().posix_rename(str(src), str(dst)))

    def read_text(self, remote: PurePath) -> str:
        def do() -> str:
            with self._sftp_client().open(str(remote), "r") as f:
                return f.read().decode()

        return self._retrying("read", do)

    def write_text(self, remote: PurePath, text: str) -> None:
        self.mkdir(PurePosixPath(remote).parent)
        part = PurePosixPath(f"{remote}.part")

        def do() -> None:
            with self._sftp_client().open(str(part), "w") as f:
                f.write(text.encode())
            self._sftp_client().posix_rename(str(part), str(remote))

        try:
            self._retrying("write", do)
        except OSError as e:
            self._raise_if_disk_full(e, part, remote, len(text.encode()), f"writing {PurePosixPath(remote).name}")
            raise

    def free_bytes(self, remote: PurePath) -> int | None:
        """Free space for this user on the filesystem of `remote` (or its nearest existing parent),
        from `df -Pk` (POSIX output; Linux, macOS and BusyBox all have it)."""
        script = 'p=$1; while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname "$p"); done; df -Pk "$p" | tail -n 1'
        try:
            r = self.run(["sh", "-c", script, "haqa", str(remote)], timeout=60)
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
        st = self._stat(part)
        written = st.st_size if st is not None else 0
        if free is None or free + written >= size and free >= 1 << 20:
            return  # there was room: some other failure
        self.remove(part)
        raise DiskFull(self.label, remote, needed=size, free=free + written, what=what) from None

    def remove(self, remote: PurePath) -> None:
        def do() -> None:
            try:
                self._sftp_client().remove(str(remote))
            except FileNotFoundError:
                pass

        self._retrying("remove", do)

    def _sha256_now(self, remote: PurePath) -> str:
        text = self._check(["sh", "-c", 'sha256sum "$1" 2>/dev/null || shasum -a 256 "$1"', "haqa", str(remote)],
                           f"hashing {remote}")
        return text.split()[0]

    def sha256(self, remote: PurePath) -> str:
        st = self._stat(remote)
        if st is None:
            raise FileNotFoundError(str(remote))
        stamp = f"{st.st_size}:{int(st.st_mtime)}"
        sidecar = PurePosixPath(f"{remote}.sha256.json")
        if self._stat(sidecar) is not None:
            try:
                saved = json.loads(self.read_text(sidecar))
                if saved.get("stamp") == stamp:
                    return saved["value"]
            except ValueError:
                pass
        digest = self._sha256_now(remote)
        self.write_text(sidecar, json.dumps({"stamp": stamp, "value": digest}))
        return digest

    def put(self, local: Path, remote: PurePath) -> bool:
        local = Path(local)
        digest = cached_sha256(local)
        size = local.stat().st_size
        st = self._stat(remote)
        if st is not None and st.st_size == size and self.sha256(remote) == digest:
            return False
        self.mkdir(PurePosixPath(remote).parent)
        part = PurePosixPath(f"{remote}.part")
        st = self._stat(part)
        have = st.st_size if st is not None and st.st_size <= size else 0
        self.check_space(remote, size - have, f"the upload of {local.name}")
        with ui.progress(f"uploading {local.name} to {self.label}", total=size) as bar:
            for fresh_start in (False, True):
                if fresh_start:
                    self.remove(part)
                try:
                    self._retrying(f"the upload of {local.name}", lambda: self._send(local, part, size, bar))
                except OSError as e:
                    self._raise_if_disk_full(e, part, remote, size, f"the upload of {local.name}")
                    raise UserError(f"uploading {local} to {self.label}:{remote} failed: {type(e).__name__}: {e}") from None
                got = self._sha256_now(part)
                if got == digest:
                    break
                ui.note(f"{local.name}: hash mismatch after upload ({got[:12]} != {digest[:12]}); sending it again")
            else:
                raise UserError(f"uploading {local} to {self.label}:{remote} produced a different file twice")
        self.move(part, remote)
        st = self._stat(remote)
        self.write_text(PurePosixPath(f"{remote}.sha256.json"),
                        json.dumps({"stamp": f"{st.st_size}:{int(st.st_mtime)}", "value": digest}))
        return True

    def _send(self, local: Path, part: PurePosixPath, size: int, bar) -> None:
        """Append what the device lacks to `part`: a resumed upload sends only the rest."""
        sftp = self._sftp_client()
        st = self._stat(part)
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
                if self._on_chunk:
                    self._on_chunk(done)
                interrupted()

    _on_chunk: Callable[[int], None] | None = None  # test hook: called after each block is sent

    def get(self, remote: PurePath, local: Path) -> None:
        local = Path(local)
        digest = self.sha256(remote)
        if local.exists() and cached_sha256(local) == digest:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")

        def receive() -> None:
            sftp = self._sftp_client()
            offset = part.stat().st_size if part.exists() else 0
            with _interrupt_between_blocks() as interrupted, sftp.open(str(remote), "rb") as fin, \
                    open(part, "ab" if offset else "wb") as fout:
                fin.prefetch()
                fin.seek(offset)
                while block := fin.read(CHUNK):
                    fout.write(block)
                    interrupted()

        self._retrying(f"the download of {remote}", receive)
        if cached_sha256(part) != digest:
            part.unlink()
            raise UserError(f"downloading {self.label}:{remote} gave a file whose sha256 differs; try again")
        os.replace(part, local)

    def local_dir(self, *parts: str) -> Path:
        d = self._local_root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def describe(self) -> dict:
        c = self.connect
        return {"runner": "ssh", "host": c.host, "port": c.port, "user": c.user, "jump": c.jump, "home": str(self.home)}

