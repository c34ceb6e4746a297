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


HEADER = """# Benchmarks

Measured on the machine named in each section, by the command given there; regenerate with
`make bench` (or `make bench-quick`, which checks the harness, not the figures). Figures are medians
or single measured peaks as stated; speed comparisons are ratios from interleaved runs.

"""


@bench.command("all")
@click.option("--quick", is_flag=True, help="small grids: checks the harness, not the figures")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/BENCHMARKS.md"), show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/data"), show_default=True)
def all_(quick: bool, out: Path, data_dir: Path) -> None:
    """Run every benchmark and write docs/BENCHMARKS.md."""
    from haqa.benchmarks import memory as mem
    from haqa.benchmarks.report import section

    suffix = "-quick" if quick else ""
    text, _ = mem.run(quick=quick, data_out=data_dir / f"memory-grid{suffix}.json")
    doc = HEADER + section("Memory model: predicted against measured peak",
                           "haqa bench all" + (" --quick" if quick else ""), MEMORY_INTRO + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(doc)
    part.replace(out)
    click.echo(f"wrote {out}")


MEMORY_INTRO = """Each row is one llama-bench process (`-r 1`) whose peak resident memory was measured with
wait4() (ru_maxrss), against haqa's memory model (haqa/model/memory.py) for the same
configuration. The model's two calibration numbers (runtime overhead, compute bytes per ubatch
token x n_ff) live in haqa/data/memory_calibration.json and were fitted with
`haqa bench memory --refit` on the rows marked "fit"; rows marked "held out" (synthetic Qwen2.5
shapes: another architecture and other widths) played no part in the fit. Here the calibration is
applied as committed, so every row of this run is a fresh measurement. The measured grid is in
docs/data/memory-grid.json. Goal (issue 4): median |error| at most 5 %, worst at most 10 %.

"""
