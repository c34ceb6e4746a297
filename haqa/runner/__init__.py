"""Where commands run: one interface (argv lists, timeouts, files in and out), local and ssh behind it."""

from haqa.runner.base import CommandResult, Runner
from haqa.runner.local import LocalRunner

__all__ = ["CommandResult", "LocalRunner", "Runner", "runner_for"]


def runner_for(target) -> Runner:
    """The runner that reaches a target's device."""
    if target.connect.kind == "local":
        return LocalRunner()
    from haqa.runner.ssh import SshRunner

    return SshRunner(target.connect, label=target.name)
