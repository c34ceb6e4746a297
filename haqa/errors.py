"""Errors a user can cause and fix: one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input or a missing prerequisite. The message says what, where, and what to do next."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConnectionLost(UserError):
    """The device stopped answering and did not come back within the reconnect budget."""


def death_signal(returncode: int | None) -> int | None:
    """The signal that killed a process, from its exit code as haqa sees it: -N (Python, the SSH runner)
    or 128+N (a shell, and the peak-memory wrapper)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    return returncode - 128 if 128 < returncode < 160 else None


_SIGNAL_MEANING = {4: "illegal instruction: the build uses an instruction this CPU or its OS cannot run",
                   6: "aborted", 7: "bus error", 8: "arithmetic exception", 9: "killed (the OOM killer sends this)",
                   11: "segmentation fault"}


class ToolFailed(Exception):
    """A llama.cpp tool exited non-zero or timed out. Carries the tail of its output for the report."""

    def __init__(self, argv: list[str], returncode: int | None, output_tail: str, *, timed_out: bool = False):
        what = "timed out" if timed_out else f"exited with code {returncode}"
        if not timed_out and (sig := death_signal(returncode)):
            import signal as _signal

            try:
                name = _signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            what = f"was killed by {name}" + (f" ({_SIGNAL_MEANING[sig]})" if sig in _SIGNAL_MEANING else "")
        super().__init__(f"{argv[0]} {what}:\n{output_tail}")
        self.argv = argv
        self.returncode = returncode
        self.output_tail = output_tail
        self.timed_out = timed_out



def failure_cause(e: ToolFailed) -> str:
    """Why a tool failed, as a trial records it: oom (the OOM killer's SIGKILL, or an allocation that
    failed), timeout, crash (another signal) or error."""
    text = (e.output_tail or "").lower()
    if e.timed_out:
        return "timeout"
    sig = death_signal(e.returncode)
    if "out of memory" in text or "failed to allocate" in text or "cannot allocate" in text or sig == 9:
        return "oom"
    if sig is not None:
        return "crash"
    return "error"

def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid choice to a misspelt word, if there is a plausible one."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in choices}
        matches = [lowered[word.lower()]] if word.lower() in lowered else []
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' or ''."""
    match = close_match(word, choices)
    return f" (did you mean '{match}'?)" if match else ""
