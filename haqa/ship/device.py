"""Talking to the device while shipping: a command that must succeed, and a path the device printed,
checked before haqa uses it.

Every command sent to the device is an argv list; the shell scripts of the ship package are constants
that take every value as a positional argument. What the device prints and haqa uses as a path (its
home, its config folder) is checked first (`device_path`)."""

from __future__ import annotations

from pathlib import PurePosixPath

from haqa.errors import UserError
from haqa.runner.base import Runner


def check(runner: Runner, argv: list[str], what: str, timeout: float = 120):
    """The result of argv on the device; a UserError saying `what` failed when it exits non-zero."""
    r = runner.run(argv, timeout=timeout)
    if not r.ok:
        raise UserError(f"{what} failed on the device (exit {r.returncode}): {r.stderr_tail[-800:] or r.stdout[-800:]}")
    return r


def device_path(text: str, what: str) -> PurePosixPath:
    """A path the device printed (its home, its config folder) or that haqa made from one, once it is
    absolute, without '..' and without control characters."""
    if not text.startswith("/") or ".." in PurePosixPath(text).parts or not text.isprintable():
        raise UserError(f"{what} on the device is {text!r}, which is not an absolute plain path; refusing to use it",
                        hint="check the device's HOME and XDG_CONFIG_HOME, and the target's connect.workdir")
    return PurePosixPath(text)
