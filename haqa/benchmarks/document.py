"""docs/BENCHMARKS.md: the document's sections (memory model, search replays, tuned against defaults,
the GPU run), their prose and the command each names; `haqa bench` (haqa/cli/bench.py) only
parses options and writes what these functions return."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from haqa.benchmarks.report import section
from haqa.errors import UserError
from haqa.fsutil import atomic_write_text

LANDSCAPES = Path("docs/data/landscapes")
LLM_SEEDS = 2  # embedded-LLM replays per landscape: each takes 5 to 12 minutes on 2 cores

MEMORY_TITLE = "Memory model: predicted against measured peak"
SEARCH_TITLE = "Search: the agent against other searches, replayed on measured landscapes"
TUNED_TITLE = "Tuned against what users run today, and the roofline (this machine)"
GPU_TITLE = "A GPU target: synthetic Llama-3.1-8B on an NVIDIA H100"

HEADER = """# Benchmarks

Measured on the machine named in each section, by the command given there; regenerate with
`make bench` (or `make bench-quick`, which checks the harness, not the figures). Figures are medians
or single measured peaks as stated; speed comparisons are ratios from interleaved runs.

"""

MEMORY_INTRO = """Each row is one llama-bench process (`-r 1`) whose peak resident memory was measured with
wait4() (ru_maxrss), against haqa's memory model (haqa/model/memory.py) for the same
configuration. The model's two calibration numbers (runtime overhead, compute bytes per ubatch
token x n_ff) live in haqa/data/memory_calibration.json and were fitted with
`haqa bench memory --refit` on the rows marked "fit"; rows marked "held out" (synthetic Qwen2.5
shapes: another architecture and other widths) played no part in the fit. Here the calibration is
applied as committed, so every row of this run is a fresh measurement. The measured grid is in
docs/data/memory-grid.json. Goal (issue 4): median |error| at most 5 %, worst at most 10 %.

"""


def write_text(out: Path, text: str) -> None:
    """Write a section or the document to `out` (atomically: a reader never sees half of it)."""
    atomic_write_text(out, text)


def landscape_files(paths: tuple[Path, ...]) -> list[Path]:
    """The landscape files named, each folder's *.json but its quick (-quick) ones; no paths: LANDSCAPES."""
    files: list[Path] = []
    for p in paths or (LANDSCAPES,):
        if p.is_dir():
            files += sorted(f for f in p.glob("*.json") if not f.stem.endswith("-quick"))
        else:
            files.append(p)
    return files


def memory_section(*, quick: bool, refit: bool = False, data_out: Path | None = None) -> str:
    """`haqa bench memory`: the memory model's predictions against a freshly measured grid."""
    from haqa.benchmarks import memory as mem

    text, _ = mem.run(quick=quick, refit=refit, data_out=data_out)
    cmd = "haqa bench memory" + (" --quick" if quick else "") + (" --refit" if refit else "")
    return section(MEMORY_TITLE, cmd, text)


def search_section(files: list[Path], *, quick: bool, replayed: Path | None = None, progress=None,
                   **options) -> str:
    """`haqa bench search`: proposers replayed on `files`, or the tables a `--data` file holds (`replayed`)."""
    if replayed:
        return section(SEARCH_TITLE, f"haqa bench search --replayed {replayed}", replayed_text(replayed))
    text = search_text(files, quick=quick, progress=progress, **options)
    return section(SEARCH_TITLE, "haqa bench search" + (" --quick" if quick else ""), text)


def search_text(files: list[Path], *, quick: bool, seeds: int = 20, llm_seeds: int = LLM_SEEDS, budget: int = 20,
                proposers: tuple[str, ...] = (), data_out: Path | None = None, incomplete: bool = False,
                progress=None) -> str:
    """The search section; `incomplete`: replay landscapes whose measuring stopped part-way too (named
    on the command line), else they are listed as skipped: a proposer refused the points it wants
    is handicapped, so such a replay is no fair comparison. `progress(label, proposer, seed, run)`
    hears of every replayed search."""
    from haqa.benchmarks import replay as rp
    from haqa.benchmarks import search_report

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
        def heard(name, seed, run, label=land.label):
            if progress:
                progress(label, name, seed, run)

        results.append((land, rp.run_all(land, names, seeds=seeds, llm_seeds=llm_seeds, budget=budget,
                                         backend=backend, progress=heard, cache=rp.RunCache())))
    if data_out:
        _write_replays(data_out, results, seeds=seeds, llm_seeds=llm_seeds if "llm" in names else 0, budget=budget,
                       quick=quick, model=getattr(backend, "model", None))
    return search_report.search_report(results, seeds=seeds, llm_seeds=llm_seeds, budget=budget, quick=quick,
                                       backend=backend, skipped=skipped)


def _write_replays(data_out: Path, results: list, *, seeds: int, llm_seeds: int, budget: int, quick: bool,
                   model: str | None) -> None:
    """Every replayed search, in the file `haqa bench search --replayed` renders the tables from."""
    data_out.parent.mkdir(parents=True, exist_ok=True)
    data_out.write_text(json.dumps(
        {"about": "every replayed search of `haqa bench search`: per trial, the index of the point in the "
                  "landscape file's `points` and its feasible objective (null: failed or over budget)",
         "seeds": seeds, "llm_seeds": llm_seeds, "budget": budget, "quick": quick,
         "llm_model": model, "date": dt.date.today().isoformat(),
         "landscapes": {land.label: {"file": str(land.path), "runs": {n: [r.as_dict() for r in s.runs]
                                                                      for n, s in sums.items()}}
                        for land, sums in results}}) + "\n")


def replayed_text(path: Path) -> str:
    """The search section from a `--data` file of an earlier `haqa bench search` (no replaying)."""
    from haqa.benchmarks import replay as rp
    from haqa.benchmarks import search_report

    data = json.loads(path.read_text())
    results = []
    for _label, entry in data["landscapes"].items():
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


def tuned_section(*, quick: bool, recipes: list[str], data_dir: Path) -> str:
    """`haqa bench tuned`: a deploy per recipe against Q4_K_M and the unquantized model, and the roofline."""
    cmd = "haqa bench tuned" + (" --quick" if quick else "") + "".join(f" --recipe {r}" for r in recipes)
    return section(TUNED_TITLE, cmd, tuned_text(quick, recipes, data_dir))


def tuned_text(quick: bool, recipes: list[str], data_dir: Path) -> str:
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


def gpu_text(landscapes: Path) -> str:
    """The GPU run kept in docs/data/gpu (and the H200 landscape's note), or "" when none is kept."""
    from haqa.benchmarks import tuned

    gpu = tuned.gpu_section(Path("docs/data/gpu"))
    if not gpu:
        return ""
    text = "\n" + f"## {GPU_TITLE}\n\n{gpu}\n"
    h200 = tuned.gpu_landscape_note(landscapes / "synth-llama-3.1-8b@h200-sxm-141gb.json",
                                    Path("docs/data/gpu-h200/bandwidth.json"))
    return text + (f"\n{h200}\n" if h200 else "")


def document(*, quick: bool, data_dir: Path, landscapes: Path, llm_seeds: int, progress=None) -> str:
    """`haqa bench all`: every benchmark, as docs/BENCHMARKS.md."""
    from haqa.benchmarks import memory as mem

    suffix = "-quick" if quick else ""
    cmd = "haqa bench all" + (" --quick" if quick else "")
    text, _ = mem.run(quick=quick, data_out=data_dir / f"memory-grid{suffix}.json")
    doc = HEADER + section(MEMORY_TITLE, cmd, MEMORY_INTRO + text)
    replays = search_text(landscape_files((landscapes,)), quick=quick, llm_seeds=llm_seeds,
                          data_out=data_dir / f"search-replay{suffix}.json", progress=progress)
    doc += "\n" + section(SEARCH_TITLE, cmd, replays)
    tuned_dir = data_dir / "tuned" if not quick else data_dir / "tuned-quick"
    doc += "\n" + section(TUNED_TITLE, cmd, tuned_text(quick, [], tuned_dir))
    return doc + gpu_text(landscapes)
