"""`haqa bench`: the benchmarks behind docs/BENCHMARKS.md (measured on this machine)."""

import json
import os
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
@click.option("--limit", type=click.IntRange(1), default=None, help="measure at most this many points now (resume later)")
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


LANDSCAPES = Path("docs/data/landscapes")
LLM_SEEDS = 2  # embedded-LLM replays per landscape: each takes 5 to 12 minutes on 2 cores


def _landscape_files(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for p in paths or (LANDSCAPES,):
        if p.is_dir():
            files += sorted(f for f in p.glob("*.json") if not f.stem.endswith("-quick"))
        else:
            files.append(p)
    return files


@bench.command("search")
@click.argument("landscapes", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--quick", is_flag=True, help="3 seeds, no LLM: checks the harness, not the figures")
@click.option("--seeds", type=click.IntRange(1), default=20, show_default=True)
@click.option("--llm-seeds", type=click.IntRange(0), default=LLM_SEEDS, show_default=True,
              help="seeds for the LLM proposer (about 5 to 12 minutes each per landscape on 2 cores: the embedded "
                   "model answers in seconds, not milliseconds)")
@click.option("--budget", type=click.IntRange(1), default=20, show_default=True, help="trials per replayed search")
@click.option("--proposer", "proposers", multiple=True, type=click.Choice(["heuristic", "llm", "random", "grid", "tpe"]),
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
    from haqa.benchmarks.report import section

    if replayed:
        text = _replayed_text(replayed)
        cmd = f"haqa bench search --replayed {replayed}"
    else:
        text = _search_text(_landscape_files(landscapes), quick=quick, seeds=seeds, llm_seeds=llm_seeds,
                            budget=budget, proposers=proposers, data_out=data, incomplete=bool(landscapes))
        cmd = "haqa bench search" + (" --quick" if quick else "")
    body = section("Search: the agent against other searches, replayed on measured landscapes", cmd, text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body)
    click.echo(body)


def _search_text(files: list[Path], *, quick: bool, seeds: int = 20, llm_seeds: int = LLM_SEEDS, budget: int = 20,
                 proposers: tuple[str, ...] = (), data_out: Path | None = None, incomplete: bool = False) -> str:
    """The search section; `incomplete`: replay landscapes whose measuring stopped part-way too (named
    on the command line), else they are listed as skipped: a proposer refused the points it wants
    is handicapped, so such a replay is no fair comparison."""
    from haqa.benchmarks import replay as rp
    from haqa.benchmarks import search_report
    from haqa.errors import UserError

    if quick:
        seeds = min(seeds, 3)
        llm_seeds = 0
    names = list(proposers) or [n for n in rp.PROPOSERS if n != "llm" or llm_seeds > 0]
    lands = [rp.Landscape.load(f) for f in files]
    skipped = [f"{land.label} ({'incomplete' if not land.complete else 'no feasible point'})" for land in lands
               if not land.has_feasible() or not (land.complete or incomplete)]
    lands = [land for land in lands if land.has_feasible() and (land.complete or incomplete)]
    if not lands:
        raise UserError("no landscape with a measured, feasible point to replay"
                        + (f" (skipped: {', '.join(skipped)})" if skipped else ""),
                        hint="measure one with `haqa bench landscape --target T --recipe R`")
    backend = None
    if "llm" in names:
        from haqa.agent.llm import make_backend

        backend = make_backend("embedded", threads=os.cpu_count() or 2)
    results = []
    for land in lands:
        def progress(name, seed, run, label=land.label):
            if name == "llm" or seed == 0:
                click.echo(f"  {label} {name} seed {seed}: {len(run.scores)} trials in {run.seconds:.1f} s", err=True)

        results.append((land, rp.run_all(land, names, seeds=seeds, llm_seeds=llm_seeds, budget=budget,
                                         backend=backend, progress=progress, cache=rp.RunCache())))
    if data_out:
        data_out.parent.mkdir(parents=True, exist_ok=True)
        data_out.write_text(json.dumps(
            {"about": "every replayed search of `haqa bench search`: per trial, the index of the point in the "
                      "landscape file's `points` and its feasible objective (null: failed or over budget)",
             "seeds": seeds, "llm_seeds": llm_seeds if "llm" in names else 0, "budget": budget, "quick": quick,
             "llm_model": getattr(backend, "model", None), "date": _today(),
             "landscapes": {land.label: {"file": str(land.path), "runs": {n: [r.as_dict() for r in s.runs]
                                                                          for n, s in sums.items()}}
                            for land, sums in results}}) + "\n")
    return search_report.search_report(results, seeds=seeds, llm_seeds=llm_seeds, budget=budget, quick=quick,
                            backend=backend, skipped=skipped)


def _today() -> str:
    import datetime as dt

    return dt.date.today().isoformat()


def _replayed_text(path: Path) -> str:
    """The search section from a `--data` file of an earlier `haqa bench search` (no replaying)."""
    from haqa.benchmarks import replay as rp
    from haqa.benchmarks import search_report

    data = json.loads(path.read_text())
    results = []
    for label, entry in data["landscapes"].items():
        land = rp.Landscape.load(Path(entry["file"]))
        best, _ = land.best()
        results.append((land, {n: rp.Summary(n, [rp.Run.from_dict(n, r, land) for r in runs], best)
                               for n, runs in entry["runs"].items()}))
    sums = [s for _, ss in results for s in ss.values()]
    seeds = data.get("seeds") or max((s.seeds for s in sums if s.proposer in ("random", "tpe")), default=0)
    llm = [s.seeds for s in sums if s.proposer == "llm"]
    llm_seeds = data.get("llm_seeds", max(llm, default=0))
    budget = data.get("budget") or max(len(r.scores) for s in sums for r in s.runs)
    model = data.get("llm_model")
    if llm and not model:
        from haqa.agent.llm import default_embedded_model

        model = os.path.basename(os.environ.get("HAQA_EMBEDDED_MODEL") or default_embedded_model())
    backend = type("Replayed", (), {"model": model})()
    note = (f"The searches were replayed by `haqa bench search --data {path}`"
            + (f" on {data['date']}" if data.get("date") else "") + "; these tables are rendered from that file.\n\n")
    return note + search_report.search_report(results, seeds=seeds, llm_seeds=llm_seeds, budget=budget,
                                              quick=bool(data.get("quick")), backend=backend)


@bench.command("tuned")
@click.option("--quick", is_flag=True, help="the tiny synthetic recipe only: checks the harness, not the figures")
@click.option("--recipe", "recipes", multiple=True, help="these recipes (repeatable) instead of the default three")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/data/tuned"),
              show_default=True, help="where each run's lock is kept")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the section here")
def tuned_cmd(quick: bool, recipes: tuple[str, ...], data_dir: Path, out: Path | None) -> None:
    """Tuned against Q4_K_M with default flags and against the unquantized model (a deploy per recipe on
    this machine, compared side by side in interleaved rounds), and the roofline with measured bandwidth."""
    from haqa.benchmarks.report import section

    cmd = "haqa bench tuned" + (" --quick" if quick else "") + "".join(f" --recipe {r}" for r in recipes)
    body = section(TUNED_TITLE, cmd, _tuned_text(quick, list(recipes), data_dir))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body)
    click.echo(body)


TUNED_TITLE = "Tuned against what users run today, and the roofline (this machine)"
GPU_TITLE = "A GPU target: synthetic Llama-3.1-8B on an NVIDIA H100"


def _tuned_text(quick: bool, recipes: list[str], data_dir: Path) -> str:
    from haqa.benchmarks import bandwidth, tuned

    names = recipes or (tuned.QUICK_RECIPES if quick else tuned.RECIPES)
    locks = tuned.measure(names, data_dir)
    bw = {"cpu": bandwidth.cpu_copy(gib=0.25 if quick else 1.0, repeats=3 if quick else 10)}
    (data_dir / "bandwidth.json").write_text(json.dumps(bw, indent=1) + "\n")
    return "\n".join([
        "Each recipe is deployed on the local target with the heuristic agent (`haqa deploy`); the chosen",
        "configuration (tuned) is then measured side by side with (a) Q4_K_M with llama.cpp's default flags",
        "(what Ollama ships by default) and (b) the unquantized model with default flags, in interleaved",
        "rounds, and each ratio is the median of the per-round ratios (range in brackets). TTFT is derived",
        "from the measured prefill speed for the recipe's prompt. The locks are kept in docs/data/tuned/.",
        f"The seed result to beat: a {tuned.SEED_SPEEDUP}x decode speed-up over the unoptimized deployment at",
        "maintained accuracy.", "",
        tuned.table(locks), "### Roofline", "",
        "Decode reads every weight (and the KV cache) once per token, so memory bandwidth / bytes per token",
        "bounds decode speed.", "",
        tuned.roofline_table(locks, bw),
    ])


HEADER = """# Benchmarks

Measured on the machine named in each section, by the command given there; regenerate with
`make bench` (or `make bench-quick`, which checks the harness, not the figures). Figures are medians
or single measured peaks as stated; speed comparisons are ratios from interleaved runs.

"""


@bench.command("all")
@click.option("--quick", is_flag=True, help="small grids: checks the harness, not the figures")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/BENCHMARKS.md"), show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/data"), show_default=True)
@click.option("--landscapes", type=click.Path(file_okay=False, path_type=Path), default=LANDSCAPES, show_default=True,
              help="measured landscapes to replay the search against (read only)")
@click.option("--llm-seeds", type=click.IntRange(0), default=LLM_SEEDS, show_default=True,
              help="seeds of the LLM proposer's replays (about 5 to 12 minutes each per landscape on 2 cores)")
def all_(quick: bool, out: Path, data_dir: Path, landscapes: Path, llm_seeds: int) -> None:
    """Run every benchmark and write docs/BENCHMARKS.md."""
    from haqa.benchmarks import memory as mem
    from haqa.benchmarks.report import section

    suffix = "-quick" if quick else ""
    cmd = "haqa bench all" + (" --quick" if quick else "")
    text, _ = mem.run(quick=quick, data_out=data_dir / f"memory-grid{suffix}.json")
    doc = HEADER + section("Memory model: predicted against measured peak", cmd, MEMORY_INTRO + text)
    search_text = _search_text(_landscape_files((landscapes,)), quick=quick, llm_seeds=llm_seeds,
                               data_out=data_dir / f"search-replay{suffix}.json")
    doc += "\n" + section("Search: the agent against other searches, replayed on measured landscapes", cmd,
                          search_text)
    tuned_dir = data_dir / "tuned" if not quick else data_dir / "tuned-quick"
    doc += "\n" + section(TUNED_TITLE, cmd, _tuned_text(quick, [], tuned_dir))
    from haqa.benchmarks import tuned

    gpu = tuned.gpu_section(Path("docs/data/gpu"))
    if gpu:
        doc += "\n" + f"## {GPU_TITLE}\n\n{gpu}\n"
        h200 = tuned.gpu_landscape_note(landscapes / "synth-llama-3.1-8b@h200-sxm-141gb.json",
                                        Path("docs/data/gpu-h200/bandwidth.json"))
        if h200:
            doc += f"\n{h200}\n"
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
