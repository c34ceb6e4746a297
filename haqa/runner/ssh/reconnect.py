"""What counts as a dropped SSH connection, as opposed to an operation's own error."""

from __future__ import annotations

import socket

import paramiko

# Errors a connection that went away can raise; which of them mean it went is for the caller to judge.
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
