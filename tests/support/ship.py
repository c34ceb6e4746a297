"""What the `haqa ship` tests check: no traceback in its output, the health check's speed, and the
server it started on the loopback device (a process of this machine)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path


def no_traceback(err: str) -> None:
    """haqa failed with its own message, not a Python traceback."""
    assert "Traceback" not in err and "internal error" not in err


def tok_per_s(err: str) -> float:
    m = re.search(r"health check passed: (\d+) tokens in ([\d.]+) s = ([\d.]+) tok/s", err)
    assert m, err
    return float(m.group(3))


def alive(pid: int) -> bool:
    """Whether process pid runs (a zombie does not)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def stop_process(pid: int) -> None:
    """SIGTERM, and SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
