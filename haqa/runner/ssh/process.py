"""Commands on the device over SSH, and the processes they start.

An argv is quoted by haqa (shlex) into the one command line SSH carries and runs under a small shell
that leads its process group, so that a timeout or a Ctrl-C can stop everything the command started.
A command cut off by a dropped connection is run again from the start (haqa's commands are safe to
repeat: see Runner), and its process group, which may run on orphaned, is remembered on this machine
until a later connection (of this run or the next) has stopped it.
"""

from __future__ import annotations

import collections
import json
import re
import select
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import NoReturn

from haqa import ui
from haqa.errors import ConnectionLost, UserError
from haqa.fsutil import atomic_write_text
from haqa.runner.base import CommandResult
from haqa.runner.ssh.connection import CHUNK, Connection
from haqa.runner.ssh.reconnect import TRANSIENT, Dropped, interrupt_in
from haqa.secrets import redact

TAIL_LINES = 60
ORPHANS_FILE = "stale-process-groups.json"
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


def program(argv: Sequence[str]) -> str:
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


class Orphans:
    """Process groups of commands cut off by a dropped connection, kept in a file on this machine until
    the device has been reached again (in this run or the next) and they have been stopped there."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.groups: list[int] = [int(g) for g in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            self.groups = []

    def add(self, *groups: int | None) -> None:
        self.groups += [g for g in groups if g is not None and g not in self.groups]
        self._save()

    def discard(self, groups: Sequence[int]) -> None:
        self.groups = [g for g in self.groups if g not in groups]
        self._save()

    def _save(self) -> None:
        if self.groups:
            atomic_write_text(self.path, json.dumps(sorted(set(self.groups))))
        else:
            self.path.unlink(missing_ok=True)


class _Output:
    """A command's output as it arrives: stdout kept whole, the tail of stderr kept, each line written
    to the log (redacted) and passed to on_line; the wrapper's own lines (the process group it leads, a
    death by signal) taken out of the stream."""

    def __init__(self, argv: list[str], log_path: Path | None, on_line: Callable[[str], None] | None):
        self.argv, self.on_line = argv, on_line
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.out: list[str] = []
        self.pgid: int | None = None
        self.killed_by: int | None = None
        self._partial = {"out": "", "err": ""}
        self._log = open(log_path, "a", encoding="utf-8", buffering=1) if log_path else None

    def feed(self, kind: str, data: bytes, final: bool = False) -> None:
        text = self._partial[kind] + data.decode("utf-8", errors="replace")
        *complete, self._partial[kind] = text.split("\n")
        if final and self._partial[kind]:
            complete.append(self._partial[kind])
            self._partial[kind] = ""
        for line in complete:
            if kind == "err":
                if self.pgid is None and (m := _PGID.match(line)):
                    self.pgid = int(m.group(1))
                    continue
                if m := _SIGNAL.match(line):
                    self.killed_by = int(m.group(1))
                    line = f"(haqa: {program(self.argv)} was killed by signal {m.group(1)})"
                else:
                    self.tail.append(line)
            else:
                self.out.append(line + "\n")
            if self._log:
                self._log.write(redact(line) + "\n")
            if self.on_line:
                self.on_line(line)

    def await_pgid(self, chan, wait_s: float = 3.0) -> None:
        """Read stderr until the wrapper's first line has named the process group (or give up)."""
        deadline = time.monotonic() + wait_s
        buf = b""
        while self.pgid is None and time.monotonic() < deadline and not chan.closed:
            if chan.recv_stderr_ready():
                buf += chan.recv_stderr(CHUNK)
                for line in buf.decode(errors="replace").splitlines():
                    if m := _PGID.match(line):
                        self.pgid = int(m.group(1))
                        return
            else:
                time.sleep(0.02)

    def close(self) -> None:
        self.feed("out", b"", final=True)
        self.feed("err", b"", final=True)
        if self._log:
            self._log.close()


class Commands:
    """Runs argv lists on the device over one Connection (see the module's docstring)."""

    def __init__(self, conn: Connection, orphans: Orphans):
        self.conn, self.orphans = conn, orphans

    @property
    def label(self) -> str:
        return self.conn.label

    def run(self, argv: Sequence[str], *, timeout: float | None = None, cwd: PurePath | None = None,
            env: Mapping[str, str] | None = None, log_path: Path | None = None,
            on_line: Callable[[str], None] | None = None) -> CommandResult:
        argv = [str(a) for a in argv]
        name, policy = program(argv), self.conn.policy

        def again(e: BaseException, attempt: int) -> None:
            ui.note(f"connection to {self.label} lost while running {name} ({e}); reconnecting to run it "
                    f"again from the start ({attempt + 1} of {policy.attempts - 1} retries)")
            if log_path:
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(redact(f"--- haqa: the connection dropped ({e}); {name} runs again from the start ---\n"))

        def lost(e: BaseException) -> ConnectionLost:
            return ConnectionLost(
                f"lost the connection to {self.label} while running {name}, {policy.attempts} times; "
                f"its output so far is in {log_path or 'the log'}",
                hint="check the device and the network, then run the same command again: haqa resumes",
            )

        return policy.run(lambda: self._run_once(argv, timeout=timeout, cwd=cwd, env=env, log_path=log_path,
                                                 on_line=on_line),
                          connected=self.conn.alive, retry=again, give_up=lost)

    def check(self, argv: Sequence[str], what: str) -> str:
        """stdout of a command that must succeed (UserError naming `what` when it does not)."""
        r = self.run(argv, timeout=600)
        if not r.ok:
            raise UserError(f"{what} failed on {self.label} (exit {r.returncode}): {r.stderr_tail[-500:]}")
        return r.stdout

    def _run_once(self, argv: list[str], *, timeout, cwd, env, log_path, on_line) -> CommandResult:
        chan = self._start(argv, cwd, env)
        start = time.monotonic()
        output = _Output(argv, log_path, on_line)
        try:
            timed_out = self._pump(chan, output, start, start + timeout if timeout else None)
        except Dropped:
            raise
        except BaseException as e:  # Ctrl-C (or a lost connection): stop the remote process group
            output.await_pgid(chan)
            self.kill_group(output.pgid)
            if (interrupt := interrupt_in(e)) is not None and interrupt is not e:
                raise interrupt from None
            raise
        finally:
            output.close()
        if timed_out:
            self.kill_group(output.pgid)
        code = None if timed_out else -output.killed_by if output.killed_by else chan.recv_exit_status()
        chan.close()
        if code == 127 and output.pgid is None:
            raise UserError(f"'{argv[0]}' could not be started on {self.label}: "
                            f"{' '.join(output.tail) or 'command not found'}")
        return CommandResult(argv=argv, returncode=code, stdout="".join(output.out), stderr_tail="\n".join(output.tail),
                             duration_s=time.monotonic() - start, timed_out=timed_out, log_path=log_path)

    def _start(self, argv: list[str], cwd, env):
        """A channel running argv (a connection found dead at the start is opened again: the policy's
        idle restarts)."""
        def start():
            chan = self.conn.ensure().get_transport().open_session()
            chan.exec_command(command_line(argv, cwd, env))
            return chan

        def cannot_start(e: BaseException) -> Dropped:
            self.conn.close()
            return Dropped(f"cannot start {argv[0]}: {e}")

        return self.conn.policy.run(start, connected=self.conn.alive, retry=lambda e, _: self.conn.close(),
                                    give_up=cannot_start, attempts=1 + self.conn.policy.idle_restarts)

    def _pump(self, chan, output: _Output, start: float, deadline: float | None) -> bool:
        """Read the command's output until it exits (False) or its deadline passes (True); Dropped
        when the connection goes first."""
        while True:
            if chan.recv_stderr_ready():  # stderr first: its first line names the process group
                output.feed("err", chan.recv_stderr(CHUNK))
                continue
            if chan.recv_ready():
                output.feed("out", chan.recv(CHUNK))
                continue
            if chan.exit_status_ready():
                while chan.recv_ready() or chan.recv_stderr_ready():
                    if chan.recv_ready():
                        output.feed("out", chan.recv(CHUNK))
                    if chan.recv_stderr_ready():
                        output.feed("err", chan.recv_stderr(CHUNK))
                if chan.exit_status == -1 and self.conn.ending():
                    # paramiko marks a channel done when its connection goes, with no status
                    self._cut_off(output, start)
                return False
            if deadline and time.monotonic() > deadline:
                return True
            if not self.conn.alive() or chan.closed and not chan.exit_status_ready():
                self._cut_off(output, start)
            select.select([chan], [], [], 0.2)

    def _cut_off(self, output: _Output, start: float) -> NoReturn:
        """The connection went while the command ran: what it started may run on, orphaned, until a
        later connection stops it."""
        self.orphans.add(output.pgid)
        self.conn.close()
        raise Dropped(f"the connection closed after {time.monotonic() - start:.0f} s")

    def kill_group(self, pgid: int | None) -> None:
        """Stop a process group whose leader haqa is still talking to (a timeout, a Ctrl-C)."""
        if pgid is None:
            return
        self.orphans.add(pgid)  # until it is done: a second Ctrl-C, or a device gone, leaves it to the next connection
        try:
            self.conn.ensure()
            self.conn.exec_now(f"sh -c {shlex.quote(_KILL)} haqa {pgid}")
        except Exception as e:  # the device may be gone: the next connection (of this run or the next) stops it
            ui.note(f"could not stop process group {pgid} on {self.label} now ({e}); the next connection will")
            return
        self.orphans.discard([pgid])

    def stop_orphans(self) -> None:
        """Stop the process groups of commands that a dropped connection cut off (they would otherwise
        go on running on the device, orphaned, beside the command that replaces them). Runs on each new
        connection, before anything else uses it."""
        groups = list(self.orphans.groups)
        if not groups:
            return
        try:
            self.conn.exec_now(" ".join(["sh", "-c", shlex.quote(_REAP), "haqa", *(str(g) for g in groups)]))
        except (*TRANSIENT, OSError) as e:
            ui.note(f"could not stop process group(s) {groups} on {self.label} yet: {e}")  # the next connection will
            return
        self.orphans.discard(groups)
        ui.note(f"{self.label}: stopped process group(s) {', '.join(map(str, groups))} left by the dropped connection")
