"""A check that a runner's command log shows each line while the command still runs."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

# Prints a line, then waits (at most 30 s) for the test to create the release file.
_WAITER = ("import os, sys, time\n"
           "print('first line', flush=True)\n"
           "deadline = time.monotonic() + 30\n"
           "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
           "    time.sleep(0.05)\n")


def line_logged_while_running(runner, tmp_path: Path) -> bool:
    """Whether the command's first line reached its log before the command ended (a user tailing a
    build's log sees progress, and the fault tests act on it)."""
    log, release = tmp_path / "live.log", tmp_path / "release"
    done = threading.Event()
    worker = threading.Thread(target=lambda: (runner.run([sys.executable, "-c", _WAITER, str(release)],
                                                         log_path=log, timeout=60), done.set()))
    worker.start()
    seen = False
    deadline = time.monotonic() + 20
    while not done.is_set() and time.monotonic() < deadline:
        if log.exists() and "first line" in log.read_text():
            seen = True
            break
        time.sleep(0.05)
    release.touch()
    worker.join(timeout=60)
    return seen and done.is_set()
