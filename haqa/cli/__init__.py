"""The `haqa` command line: click groups by noun (targets, recipes, toolchain) plus `deploy`.

Thin: parse, call, print. A UserError becomes one message on stderr and exit code 2. Everything a
command prints (stdout and stderr, an internal error's traceback too) is redacted of secrets
(haqa/secrets.py).
"""

from __future__ import annotations

import sys
import traceback

import click

from haqa import __version__
from haqa.errors import UserError
from haqa.secrets import redact, redacted_std_streams

REPORT_URL = "the haqa issue tracker"


class HaqaGroup(click.Group):
    def invoke(self, ctx: click.Context):
        with redacted_std_streams():
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.secho(f"error: {redact(e.message)}", fg="red", err=True)
            if e.hint:
                click.echo(f"  hint: {redact(e.hint)}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception:
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
            click.secho(f"internal error in haqa {__version__}: this is a bug; please report it to {REPORT_URL} "
                        "with the traceback above", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=HaqaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="haqa")
def cli() -> None:
    """haqa: build, tune and bundle llama.cpp deployments for the devices you own.

    \b
    Examples:
      haqa targets list
      haqa recipes show smollm2-135m
      haqa deploy --target local --recipe smollm2-135m
    """


def _register() -> None:
    from haqa.cli import bench, deploy, doctor, estimate, recipes, ship, synth, targets, toolchain, trials

    cli.add_command(targets.targets)
    cli.add_command(recipes.recipes)
    cli.add_command(toolchain.toolchain)
    cli.add_command(deploy.deploy)
    cli.add_command(doctor.doctor)
    cli.add_command(synth.synth)
    cli.add_command(estimate.estimate)
    cli.add_command(bench.bench)
    cli.add_command(trials.trials)
    cli.add_command(ship.ship)


_register()


def main() -> None:
    cli.main(prog_name="haqa")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
