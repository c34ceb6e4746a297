"""`haqa bench`: the benchmarks behind docs/BENCHMARKS.md (measured on this machine)."""

from pathlib import Path

import click

from haqa.agent.registry import BENCH_PROPOSERS
from haqa.benchmarks import document
from haqa.benchmarks.document import LANDSCAPES, LLM_SEEDS


@click.group(help="Benchmarks that write docs/BENCHMARKS.md sections.")
def bench() -> None:
    pass


@bench.command("memory")
@click.option("--quick", is_flag=True, help="a two-configuration grid: checks the harness, not the model")
@click.option("--refit", is_flag=True, help="refit the memory model's calibration on this grid")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the section here")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the measured grid (JSON)")
def memory(quick: bool, refit: bool, out: Path | None, data: Path | None) -> None:
    """Predicted peak memory against measured peak RSS over a grid of llama-bench runs."""
    _emit(document.memory_section(quick=quick, refit=refit, data_out=data), out)


@bench.command("landscape")
@click.option("--target", "target", required=True, help="target name or .toml path")
@click.option("--recipe", "recipe", required=True, help="recipe name or .toml path")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="the landscape file (default docs/data/landscapes/<recipe>@<target>.json; -quick with --quick)")
@click.option("--quick", is_flag=True, help="a two-point grid: checks the harness, not the landscape")
@click.option("--set", "overrides", multiple=True, metavar="KNOB=V1,V2",
              help="other values for one knob of the reduced grid (from the full space); repeatable")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the shuffled measuring order")
@click.option("--fresh", is_flag=True, help="measure again from the start instead of resuming --out")
@click.option("--max-minutes", type=float, default=None, help="stop after this long (resume later)")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="measure at most this many points now (resume later)")
@click.option("--jobs", type=int, default=None, help="parallel jobs for a llama.cpp build")
@click.option("--plan", "plan_only", is_flag=True, help="print the grid and its size; measure nothing")
def landscape(target: str, recipe: str, out: Path | None, quick: bool, overrides: tuple[str, ...], seed: int,
              fresh: bool, max_minutes: float | None, limit: int | None, jobs: int | None, plan_only: bool) -> None:
    """Measure every point of a reduced search grid for one (recipe, target): the data that
    `haqa bench search` replays proposers against. Resumable: run the same command again.

    \b
    Examples:
      haqa bench landscape --target local --recipe smollm2-135m
      haqa bench landscape --target local --recipe docs/data/landscapes/recipes/synthetic-llama-3.2-1b.toml
      haqa bench landscape --target local --recipe smollm2-135m --limit 4    # time a few points first
    """
    from haqa.benchmarks import landscape as ls
    from haqa.config import find_file, load_recipe, load_target

    if out is None:
        name = f"{load_recipe(recipe).name}@{load_target(target).name}{'-quick' if quick else ''}.json"
        out = Path("docs/data/landscapes") / name
    find_file("recipes", recipe)
    data = ls.measure(target, recipe, out, quick=quick, overrides=overrides, seed=seed, fresh=fresh,
                      max_minutes=max_minutes, limit=limit, jobs=jobs, plan_only=plan_only)
    if plan_only:
        for knob, values in data["dims"].items():
            click.echo(f"  {knob:<14} {', '.join(str(v) for v in values)}")
        pruned = sum(p["status"] == "pruned" for p in data["points"])
        click.echo(f"{data['label']}: {len(data['points'])} points ({pruned} pruned by the memory model); "
                   f"would write {out}")
        return
    click.echo(f"{out}: {'complete' if data['complete'] else 'incomplete'}, "
               f"{sum(p['status'] in ('ok', 'failed') for p in data['points'])}/{len(data['points'])} points, "
               f"{data['wall_s'] / 60:.1f} min")


@bench.command("search")
@click.argument("landscapes", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--quick", is_flag=True, help="3 seeds, no LLM: checks the harness, not the figures")
@click.option("--seeds", type=click.IntRange(1), default=20, show_default=True)
@click.option("--llm-seeds", type=click.IntRange(0), default=LLM_SEEDS, show_default=True,
              help="seeds for the LLM proposer (about 5 to 12 minutes each per landscape on 2 cores: the embedded "
                   "model answers in seconds, not milliseconds)")
@click.option("--budget", type=click.IntRange(1), default=20, show_default=True, help="trials per replayed search")
@click.option("--proposer", "proposers", multiple=True, type=click.Choice(BENCH_PROPOSERS),
              help="only these (repeatable); default: all")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the section here")
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write every replayed search (JSON)")
@click.option("--replayed", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="the tables from the searches a --data file holds, replaying nothing")
def search(landscapes: tuple[Path, ...], quick: bool, seeds: int, llm_seeds: int, budget: int,
           proposers: tuple[str, ...], out: Path | None, data: Path | None, replayed: Path | None) -> None:
    """Replay the proposers against measured landscapes (default: docs/data/landscapes/*.json) at
    equal trial budgets: trials to reach 95 % of the best, best found after 5, 10 and 20 trials."""
    body = document.search_section(document.landscape_files(landscapes), quick=quick, replayed=replayed,
                                   progress=_progress, seeds=seeds, llm_seeds=llm_seeds, budget=budget,
                                   proposers=proposers, data_out=data, incomplete=bool(landscapes))
    _emit(body, out)


@bench.command("tuned")
@click.option("--quick", is_flag=True, help="the tiny synthetic recipe only: checks the harness, not the figures")
@click.option("--recipe", "recipes", multiple=True, help="these recipes (repeatable) instead of the default three")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/data/tuned"),
              show_default=True, help="where each run's lock is kept")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the section here")
def tuned_cmd(quick: bool, recipes: tuple[str, ...], data_dir: Path, out: Path | None) -> None:
    """Tuned against Q4_K_M with default flags and against the unquantized model (a deploy per recipe on
    this machine, compared side by side in interleaved rounds), and the roofline with measured bandwidth."""
    _emit(document.tuned_section(quick=quick, recipes=list(recipes), data_dir=data_dir), out)


@bench.command("all")
@click.option("--quick", is_flag=True, help="small grids: checks the harness, not the figures")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/BENCHMARKS.md"),
              show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/data"),
              show_default=True)
@click.option("--landscapes", type=click.Path(file_okay=False, path_type=Path), default=LANDSCAPES, show_default=True,
              help="measured landscapes to replay the search against (read only)")
@click.option("--llm-seeds", type=click.IntRange(0), default=LLM_SEEDS, show_default=True,
              help="seeds of the LLM proposer's replays (about 5 to 12 minutes each per landscape on 2 cores)")
def all_(quick: bool, out: Path, data_dir: Path, landscapes: Path, llm_seeds: int) -> None:
    """Run every benchmark and write docs/BENCHMARKS.md."""
    doc = document.document(quick=quick, data_dir=data_dir, landscapes=landscapes, llm_seeds=llm_seeds,
                            progress=_progress)
    document.write_text(out, doc)
    click.echo(f"wrote {out}")


def _emit(body: str, out: Path | None) -> None:
    """A section: written to `out` when given, and printed."""
    if out:
        document.write_text(out, body)
    click.echo(body)


def _progress(label: str, name: str, seed: int, run) -> None:
    """A replayed search's line on stderr: the first seed of each proposer, and every LLM seed."""
    if name == "llm" or seed == 0:
        click.echo(f"  {label} {name} seed {seed}: {len(run.scores)} trials in {run.seconds:.1f} s", err=True)
