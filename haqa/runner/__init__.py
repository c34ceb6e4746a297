"""Where commands run: one interface (argv lists, timeouts, files in and out), local and ssh behind it."""

from haqa.runner.base import CommandResult, Runner
from haqa.runner.local import LocalRunner

__all__ = ["CommandResult", "LocalRunner", "Runner", "runner_for"]


def runner_for(target) -> Runner:
    """The runner that reaches a target's device."""
    if target.connect.kind == "local":
        return LocalRunner()
    from haqa.errors import UserError

    raise UserError(
        f"target '{target.name}' is reached over ssh, which this version of haqa cannot do yet",
        hint="use --target local",
    )
