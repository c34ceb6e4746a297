"""`haqa bench`: the benchmarks behind docs/BENCHMARKS.md (measured on this machine)."""

from pathlib import Path

import click


@click.group(help="Benchmarks that write docs/BENCHMARKS.md sections.")
def bench() -> None:
    pass


@bench.command("memory")
@click.option("--quick", is_flag=True, help="a two-configuration grid: checks the harness, not the model")
@click.option("--refit", is_flag=True, help="refit the memory model's calibration on this grid")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the section here")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the measured grid (JSON)")
def memory(quick: bool, refit: bool, out: Path | None, data: Path | None) -> None:
    """Predicted peak memory against measured peak RSS over a grid of llama-bench runs."""
    from haqa.benchmarks import memory as mem
    from haqa.benchmarks.report import section

    text, summary = mem.run(quick=quick, refit=refit, data_out=data)
    cmd = "haqa bench memory" + (" --quick" if quick else "") + (" --refit" if refit else "")
    body = section("Memory model: predicted against measured peak", cmd, text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body)
    click.echo(body)
