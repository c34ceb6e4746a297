"""Measured peak resident memory of a command on the device.

The command runs under a few lines of Python (present on Linux and macOS devices) that fork it,
wait for it with wait4(), and print the child's ru_maxrss in bytes; nothing else changes. A child
killed by signal N makes the wrapper exit with 128+N, as a shell reports it, so that an OOM kill
(SIGKILL) reads as one (sys.exit(-N) would exit with 256-N).
"""

from __future__ import annotations

import re

WRAPPER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "scale = 1 if sys.platform == 'darwin' else 1024\n"
    "sys.stderr.write('HAQA-MAXRSS %d\\n' % (ru.ru_maxrss * scale))\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "sys.exit(128 - code if code < 0 else code)\n"
)
_LINE = re.compile(r"^HAQA-MAXRSS (\d+)$", re.M)


def wrap(python: str, argv: list[str]) -> list[str]:
    return [python, "-c", WRAPPER, *argv]


def parse(stderr_tail: str) -> int | None:
    """Peak RSS in bytes, from the wrapper's last line."""
    found = _LINE.findall(stderr_tail)
    return int(found[-1]) if found else None
