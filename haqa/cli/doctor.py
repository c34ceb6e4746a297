"""`haqa doctor --target T`: check a device and say what to fix."""

import sys

import click


@click.command()
@click.option("--target", "-t", "target_name", default="local", show_default=True, help="target name or .toml path")
def doctor(target_name: str) -> None:
    """Check that a target's device is reachable and ready: work folder, disk, memory, compilers.

    Exits 1 when something needs fixing, and says how.
    """
    from haqa.config import load_target
    from haqa.doctor import run_checks
    from haqa.runner import runner_for

    target = load_target(target_name)
    runner = runner_for(target)
    try:
        checks = run_checks(runner, target)
    finally:
        runner.close()
    for c in checks:
        mark = click.style("ok  ", fg="green") if c.ok else click.style("FIX ", fg="red")
        click.echo(f"{mark}{c.name:<12} {c.detail}")
        if not c.ok and c.fix:
            click.echo(f"    -> {c.fix}")
    bad = [c for c in checks if not c.ok]
    click.echo(f"{target.name}: " + ("ready" if not bad else f"{len(bad)} problem(s)"))
    sys.exit(1 if bad else 0)
