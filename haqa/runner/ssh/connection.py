"""One SSH connection to a device: the private key read before connecting, host keys checked against
known_hosts (trust on first use only when the target says so; a changed key is always refused), a jump
host, keepalives, and the connection opened again when it has dropped."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

import paramiko

from haqa import ui
from haqa.config.schema import Connect
from haqa.errors import ConnectionLost, UserError
from haqa.runner.ssh.reconnect import ReconnectPolicy

T = TypeVar("T")

PASSPHRASE_VAR = "HAQA_SSH_KEY_PASSPHRASE"
CHUNK = 1 << 18  # one read from a channel, an SFTP file or a socket

# paramiko logs each refused forward ("Secsh channel open FAILED") and dropped connection itself; haqa
# reports what matters, so without a logging setup of the user's its records are not printed.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def load_private_key(path: Path) -> paramiko.PKey:
    """[connect].key, read (and decrypted with $HAQA_SSH_KEY_PASSPHRASE) before any connection, so a wrong
    passphrase or a file that is not a key is said as such, never as an unreachable device."""
    passphrase = os.environ.get(PASSPHRASE_VAR)
    try:
        return paramiko.PKey.from_path(path, password=passphrase.encode() if passphrase is not None else None)
    except FileNotFoundError:
        raise UserError(f"[connect].key: no such file: {path}",
                        hint="point it at the private key the device accepts") from None
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


class Connection:
    """The SSH connection and SFTP session to one device, opened on first use and opened again after a
    drop. `on_connect` runs on each new connection before anything else uses it."""

    def __init__(self, connect: Connect, label: str):
        self.connect = connect
        self.label = label
        self.policy = ReconnectPolicy.of(connect.reconnects)
        self.on_connect: Callable[[], None] | None = None
        self.client: paramiko.SSHClient | None = None
        self.jump: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: PurePosixPath | None = None

    @property
    def known_hosts(self) -> Path:
        return Path(self.connect.known_hosts or "~/.ssh/known_hosts").expanduser()

    @property
    def home(self) -> PurePosixPath:
        """The work directory on the device ([connect].workdir, relative to the login folder)."""
        if self._home is None:
            self.ensure()
        return self._home

    def transport(self) -> paramiko.Transport | None:
        """The connection's transport while it is up; None once it has gone (or before it is opened)."""
        client = self.client
        transport = client.get_transport() if client else None
        return transport if transport is not None and transport.is_active() else None

    def alive(self) -> bool:
        return self.transport() is not None

    def ending(self, wait_s: float = 2.0) -> bool:
        """Whether the connection is gone, or going (paramiko closes its channels just before it marks
        the transport inactive): a channel that ended with no exit status either lost its connection
        or had its shell killed by a signal, and only the transport can tell which."""
        deadline = time.monotonic() + wait_s
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def ensure(self) -> paramiko.SSHClient:
        """The live client: the one open, else a new connection (attempted as the policy says)."""
        if self.alive():
            return self.client
        self.close()

        def wait(e: BaseException, attempt: int) -> None:
            delay = self.policy.backoff_s(attempt)
            ui.note(f"connection to {self.label} failed ({type(e).__name__}); retrying in {delay:g} s")
            time.sleep(delay)

        def unreachable(e: BaseException) -> ConnectionLost:
            return ConnectionLost(
                f"cannot reach {self.label}: {type(e).__name__}: {e} (after {self.policy.attempts} attempts)",
                hint="check that the device is on and sshd runs (`haqa doctor` checks the rest), then run the "
                     "same command again: haqa resumes",
            )

        self.policy.run(self._connect_once, connected=lambda: False, retry=wait, give_up=unreachable)
        return self.client

    def sftp(self) -> paramiko.SFTPClient:
        self.ensure()
        return self._sftp

    def exec_now(self, command: str) -> int:
        """Run a shell command line on the connection as it is (no reconnecting); its exit status."""
        chan = self.client.get_transport().open_session()
        chan.exec_command(command)
        status = chan.recv_exit_status()
        chan.close()
        return status

    def retrying(self, what: str, fn: Callable[[], T]) -> T:
        """fn() on a live connection, run again on a new one when the connection drops (as the policy
        says); fn must be safe to repeat."""
        def attempt() -> T:
            self.ensure()
            return fn()

        def reconnect(e: BaseException, _: int) -> None:
            ui.note(f"connection to {self.label} dropped during {what} ({type(e).__name__}: {e}); reconnecting")
            self.close()

        def lost(e: BaseException) -> ConnectionLost:
            self.close()
            return ConnectionLost(f"lost the connection to {self.label} during {what}, {self.policy.attempts} times",
                                  hint="check the device and the network, "
                                       "then run the same command again: haqa resumes")

        return self.policy.run(attempt, connected=self.alive, retry=reconnect, give_up=lost)

    def close(self) -> None:
        for c in (self._sftp, self.client, self.jump):
            try:
                if c is not None:
                    c.close()
            except Exception:
                pass
        self._sftp = self.client = self.jump = None

    def _connect_once(self) -> None:
        try:
            self._open_all()
            if self.on_connect:
                self.on_connect()
        except BaseException:
            self.close()
            raise

    def _open_all(self) -> None:
        c = self.connect
        sock = None
        if (jump := c.jump_parts()) is not None:
            juser, jhost, jport = jump
            self.jump = self._open(jhost, jport, juser)
            sock = self.jump.get_transport().open_channel("direct-tcpip", (c.host, c.port), ("127.0.0.1", 0))
        self.client = self._open(c.host, c.port, c.user, sock=sock)
        self._sftp = self.client.open_sftp()
        if self._home is None:
            home = PurePosixPath(self._sftp.normalize("."))
            wd = c.workdir
            self._home = home / wd[2:] if wd.startswith("~/") else home if wd == "~" else home / wd

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if self.known_hosts.exists():
            client.load_host_keys(str(self.known_hosts))
        if not self.connect.known_hosts:
            try:
                client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
            except OSError:
                pass
        client.set_missing_host_key_policy(
            _TrustOnFirstUse(self.known_hosts) if self.connect.trust_on_first_use else paramiko.RejectPolicy()
        )
        return client

    def _open(self, host: str, port: int, user: str | None, sock=None) -> paramiko.SSHClient:
        client = self._new_client()
        pkey = load_private_key(Path(self.connect.key).expanduser()) if self.connect.key else None
        timeout = self.connect.connect_timeout_s
        try:
            client.connect(host, port=port, username=user, pkey=pkey, sock=sock, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, allow_agent=True,
                           look_for_keys=pkey is None, passphrase=os.environ.get(PASSPHRASE_VAR))
        except paramiko.BadHostKeyException as e:
            hostport = host if port == 22 else f"[{host}]:{port}"
            raise UserError(
                f"the host key of {hostport} has CHANGED (expected {_fingerprint(e.expected_key)}, "
                f"got {_fingerprint(e.key)}); refusing to connect",
                hint=f"if the device was reinstalled, check the new key and remove the old one with "
                f"`ssh-keygen -f {self.known_hosts} -R '{hostport}'`; "
                "otherwise someone may be intercepting the connection",
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
                    f"{hostport} is not in {self.known_hosts}, so its identity cannot be checked",
                    hint=f"check the device's key and add it (`ssh-keyscan -p {port} {host} >> {self.known_hosts}`), "
                    "or set [connect].trust_on_first_use = true in the target",
                ) from None
            raise
        if self.connect.keepalive_s:
            client.get_transport().set_keepalive(self.connect.keepalive_s)
        return client
