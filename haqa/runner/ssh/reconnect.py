"""The one reconnect policy of the SSH runner: what counts as a dropped connection, how many times an
operation is tried when its connection drops, and how long to wait before connecting again.

Connecting, every SFTP operation and every command go through `ReconnectPolicy.run`."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import paramiko

from haqa.errors import UserError

T = TypeVar("T")
# Errors a connection that went away can raise (what the device answered can raise some of them too).
TRANSIENT = (socket.error, EOFError, paramiko.SSHException)
# Errors that mean the connection went, whatever state paramiko has noticed yet.
DROPS = (EOFError, paramiko.SSHException, ConnectionError, socket.timeout)


class Dropped(Exception):
    """The connection went away while a command ran (internal: the command is run again)."""


def interrupt_in(e: BaseException) -> KeyboardInterrupt | None:
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


def is_drop(e: BaseException, connected: bool) -> bool:
    """Whether an error means the connection is gone (so the operation may be tried again on a new one)
    rather than being the operation's own error. `connected`: whether the connection is still up now."""
    if isinstance(e, Dropped):
        return True
    if isinstance(e, UserError) or not isinstance(e, (*TRANSIENT, OSError)):
        return False  # haqa's own verdict (ConnectionLost included), or a programming error
    if not connected:
        return True  # whatever failed, failed for want of a connection
    if isinstance(e, (FileNotFoundError, PermissionError)) or getattr(e, "errno", None) in (errno.ENOENT, errno.EACCES):
        return False  # the device answered
    return isinstance(e, DROPS)  # else the device answered: a real error of this operation (a full disk, say)


@dataclass(frozen=True)
class ReconnectPolicy:
    """How haqa rides out dropped connections.

    An operation (a connection attempt, an SFTP call, a command) is tried at most `attempts` times,
    1 + [connect].reconnects; a failed connection attempt waits `backoff_s(n)` before the next. A
    command whose start finds the connection dead (it died while idle, which shows only when it is
    used) is started again on a new connection up to `idle_restarts` times before that counts as a drop.
    """

    attempts: int
    max_backoff_s: float = 10.0
    idle_restarts: int = 1

    @classmethod
    def of(cls, reconnects: int) -> ReconnectPolicy:
        return cls(attempts=1 + reconnects)

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait after failed connection attempt number `attempt` (from 0): 1, 2, 4, 8, 10, 10..."""
        return min(2 ** attempt, self.max_backoff_s)

    def run(self, fn: Callable[[], T], *, connected: Callable[[], bool], retry: Callable[[BaseException, int], None],
            give_up: Callable[[BaseException], Exception], attempts: int | None = None) -> T:
        """fn(), tried again after each drop (is_drop), at most `attempts` times (this policy's by
        default). Between two tries `retry(error, try_number)` runs (a note, a closed connection, a wait);
        the last drop raises `give_up(error)`. An error that is no drop is raised as it is, and a Ctrl-C
        found behind an error as the Ctrl-C."""
        tries = self.attempts if attempts is None else attempts
        for n in range(tries):
            try:
                return fn()
            except Exception as e:
                if isinstance(e, (*TRANSIENT, OSError)) and (interrupt := interrupt_in(e)) is not None:
                    raise interrupt from None
                if not is_drop(e, connected()):
                    raise
                if n + 1 == tries:
                    raise give_up(e) from None
                retry(e, n)
        raise AssertionError("unreachable")
