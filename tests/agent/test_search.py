"""The search policy (haqa/agent/search.py) and the memory gate (haqa/model/budget.py), in milliseconds.

The device is replaced by plain functions that return Trials: what is tested is the policy (what is
resumed, what is measured again, when the search stops, what a candidate needing too much memory gets),
which is the same whoever measures. The trial store is the real SQLite store in a temporary folder and
the drift guard is the real DriftGuard reading a scripted anchor."""

from __future__ import annotations

import dataclasses

import pytest

from haqa.agent.proposers import GridProposer, Observation
from haqa.agent.search import MAX_ATTEMPTS_UNDER_DRIFT, Search, StopRule, observation, staleness
from haqa.agent.select import Trial
from haqa.agent.space import Candidate, build_space
from haqa.agent.store import TrialStore
from haqa.config import load_recipe, load_target
from haqa.config.schema import Objective
from haqa.measure.bench import BenchResult, Throughput
from haqa.measure.drift import DriftGuard
from haqa.model import memory
from haqa.model.budget import MemoryGate, gpu_budget_bytes, host_budget_bytes
from haqa.runner import LocalRunner
from haqa.runtime import RuntimeConfig

RECIPE = load_recipe("smollm2-135m")
SPEED = {"Q8_0": 50.0, "Q4_1": 80.0, "Q4_K_M": 70.0, "Q4_0": 90.0}  # decode tok/s by quant


def _bench(decode: float) -> BenchResult:
    samples = [decode * f for f in (0.999, 1.0, 1.001)]
    return BenchResult(prefill=Throughput.from_samples(256, 0, [d * 5 for d in samples]),
                       decode=Throughput.from_samples(64, 256, samples), build_commit="test", threads=2,
                       model_size_bytes=1, argv=["llama-bench"])


def _observe(cand, trial):
    # synthetic: no quality, so the budget does not apply and every measured trial has a score
    return observation(cand, trial, budget=RECIPE.quality, objective=RECIPE.objective,
                       workload=RECIPE.workload, synthetic=True)


class Device:
    """Measures by table: decode by quant; `fail` maps a quant to a failure cause."""

    def __init__(self, fail: dict[str, str] | None = None):
        self.measured: list[str] = []
        self.fail = fail or {}

    def __call__(self, cand: Candidate) -> Trial:
        self.measured.append(cand.key)
        if cand.quant in self.fail:
            return Trial(cand.quant, cand.config, None, error="it failed", cause=self.fail[cand.quant])
        return Trial(cand.quant, cand.config, _bench(SPEED[cand.quant]), model_sha256="sha")


@pytest.fixture
def space():
    return build_space(load_target("rpi5-8gb"), RECIPE, n_layer=30)


def _quants_only(space):
    """The grid walks quant first: one candidate per quant at the default flags, in the recipe's order."""
    d = space.default_values()
    return [space.make({**d, "quant": q}) for q in space.dims["quant"]]


class ByQuant(GridProposer):
    def __init__(self, space):
        super().__init__(space)
        self.order = _quants_only(space)

    def suggest(self, history):
        from haqa.agent.proposers import Proposal

        done = {o.candidate.key for o in history}
        for c in self.order:
            if c.key not in done:
                return Proposal(c, "next quant", "by-quant")
        return None


def _search(space, device, store=None, **over) -> Search:
    fields = dict(proposer=ByQuant(space), measure=device, observe=_observe, stop=StopRule(10, 10), store=store,
                  toolchain="tc")
    return Search(**{**fields, **over})


def test_the_search_measures_each_proposal_once_and_stops_when_the_proposer_has_nothing_left(space):
    device = Device()
    search = _search(space, device)
    assert search.run() == "the proposer has nothing left to try"
    assert len(device.measured) == 4 == search.new_trials and len(search.trials) == 4
    assert [o.decode for o in search.history] == pytest.approx([50, 80, 70, 90])


def test_the_stop_rule_budget_and_patience(space):
    assert _search(space, Device(), stop=StopRule(max_trials=2, patience=10)).run() == "trial budget reached"
    # Q8_0 50, Q4_1 80 (an improvement), Q4_K_M 70 (stale 1), Q4_0 90 (improvement): patience 1 stops at Q4_K_M
    search = _search(space, Device(), stop=StopRule(max_trials=10, patience=1))
    assert search.run().startswith("converged: no improvement beyond noise in 1 trials")
    assert search.new_trials == 3
    clock = iter([0.0, 0.0, 100.0, 100.0])
    timed = _search(space, Device(), stop=StopRule(10, 10, max_seconds=50), clock=lambda: next(clock))
    assert timed.run() == "wall-clock budget reached" and timed.new_trials == 1


def test_staleness_counts_trials_since_an_improvement_beyond_the_noise(space):
    c = _quants_only(space)[0]
    obs = [Observation(c, True, score=s, noise=0.0) for s in (10.0, 10.05, 12.0, 11.0, None)]
    assert staleness(obs[:2]) == 1  # +0.5 % is within the 1 % floor
    assert staleness(obs[:3]) == 0 and staleness(obs) == 2


def test_resume_measures_nothing_twice_and_measures_again_what_the_environment_broke(space, tmp_path):
    store = TrialStore(tmp_path / "trials.sqlite")
    first = _search(space, Device(), store, stop=StopRule(max_trials=2, patience=10))
    first.run()
    q8, q41, q4km = _quants_only(space)[:3]
    store.add(key=q4km.key, candidate=q4km.values(), quant=q4km.quant, model_sha256=None, toolchain="tc",
              status="failed", cause="connection", error="lost", proposer="by-quant")
    device = Device()
    again = _search(space, device, store)
    assert again.resume(space) == 2
    again.run()
    assert device.measured == [q4km.key, _quants_only(space)[3].key]  # Q8_0 and Q4_1 came from the store
    assert [r.status for r in store.all()][:3] == ["ok", "ok", "discarded"]
    other = _search(space, Device(), store, key=lambda c: "another toolchain " + c.key)
    assert other.resume(space) == 0  # a stored trial whose key no longer matches is not valid
    store.close()


def test_an_error_of_the_device_is_recorded_and_raised(space, tmp_path):
    store = TrialStore(tmp_path / "trials.sqlite")

    def lost(cand):
        raise ConnectionError("the device went away")

    search = _search(space, lost, store, environment_cause=lambda e: "connection")
    with pytest.raises(ConnectionError):
        search.run()
    (row,) = store.all()
    assert (row.status, row.cause, row.quant) == ("failed", "connection", "Q8_0")
    store.close()


def test_a_trial_measured_while_the_anchor_moved_is_measured_again_at_most_twice(space, tmp_path):
    store = TrialStore(tmp_path / "trials.sqlite")
    readings = iter([100.0] + [50.0, 50.0, 100.0, 100.0] * 5)  # each check moved from the last baseline, which re-bases
    guard = DriftGuard(lambda: next(readings), every=2)
    device = Device()
    search = _search(space, device, store, drift=guard, stop=StopRule(max_trials=2, patience=10))
    search.run()
    q8, q41 = (c.key for c in _quants_only(space)[:2])
    assert device.measured.count(q8) == MAX_ATTEMPTS_UNDER_DRIFT + 1 == device.measured.count(q41)
    assert search.reruns == 2 * MAX_ATTEMPTS_UNDER_DRIFT
    assert [r.status for r in store.all()].count("discarded") == 2 * MAX_ATTEMPTS_UNDER_DRIFT
    assert len(search.trials) == 2 and len(search.history) == 2
    store.close()


def test_the_drift_guard_that_holds_changes_nothing(space):
    guard = DriftGuard(lambda: 100.0, every=2)
    device = Device()
    search = _search(space, device, drift=guard)
    search.run()
    assert len(device.measured) == 4 and search.reruns == 0
    assert [e["event"] for e in guard.history] == ["baseline", "check", "check"]


def test_a_watched_rule_is_recorded_not_applied(space):
    search = _search(space, Device(), stop=StopRule(10, 10, max_new=4), watch=StopRule(max_trials=2, patience=10))
    search.run()
    assert search.new_trials == 4 and search.watch_stopped_at == 2


def test_what_a_proposer_sees_of_a_trial(space):
    cand = _quants_only(space)[0]
    failed = observation(cand, Trial(cand.quant, cand.config, None, cause="oom"), budget=RECIPE.quality,
                         objective=RECIPE.objective, workload=RECIPE.workload, synthetic=False)
    assert (failed.ok, failed.cause, failed.score) == (False, "oom", None)
    seen = _observe(cand, Trial(cand.quant, cand.config, _bench(50.0)))
    # the default objective: requests per second of the workload (256 prompt tokens at 250 tok/s, 64 at 50)
    assert RECIPE.objective.metric == "request"
    assert seen.ok and seen.within_budget and seen.noise < 0.01
    assert seen.score == pytest.approx(1 / (256 / 250 + 64 / 50))
    decode = observation(cand, Trial(cand.quant, cand.config, _bench(50.0)), budget=RECIPE.quality,
                         objective=Objective(metric="decode"), workload=RECIPE.workload, synthetic=True)
    assert decode.score == pytest.approx(50.0)
    slow = observation(cand, Trial(cand.quant, cand.config, _bench(50.0)), budget=RECIPE.quality,
                       objective=RECIPE.objective, workload=RECIPE.workload.model_copy(update={"min_decode_tps": 60}),
                       synthetic=True)
    assert slow.ok and not slow.within_budget and slow.score is None  # outside the workload's limits


# -- the memory gate ----------------------------------------------------------------------------

def _shape(weights_gib: float, n_layer: int = 32) -> memory.ModelShape:
    tensor = int(weights_gib * 2**30)
    return memory.ModelShape(architecture="llama", n_layer=n_layer, n_embd=4096, n_ff=14336, n_head=32,
                             n_head_kv=8, head_dim_k=128, head_dim_v=128, n_vocab=32000, tensor_bytes=tensor,
                             token_embd_bytes=tensor // 50, tied_embeddings=False, layer_bytes=tensor * 9 // 10)


def test_the_gate_keeps_a_candidate_within_the_host_budget():
    target = load_target("rpi5-8gb")
    gate = MemoryGate(target, lambda q: _shape({"Q8_0": 9.0, "Q4_0": 3.0}[q]))
    config = RuntimeConfig(threads=4, ctx_size=2048)
    ok, why = gate(Candidate("Q8_0", config))
    assert not ok and "over the" in why and f"{host_budget_bytes(target) / 2**30:.2f} GiB budget" in why
    assert gate(Candidate("Q4_0", config)) == (True, "fits")


def test_a_gpu_target_is_gated_by_its_gpu_memory_too():
    """100 GiB of weights fit the H100 host's 120 GiB budget on the CPU, not its GPU's 79 GiB."""
    target = load_target("h100-sxm-80gb")
    assert gpu_budget_bytes(target) == pytest.approx((79.6 - 0.5) * 2**30)
    gate = MemoryGate(target, lambda q: _shape(100.0))
    on_cpu = RuntimeConfig(threads=16, ctx_size=2048, n_gpu_layers=0)
    on_gpu = dataclasses.replace(on_cpu, n_gpu_layers=33)
    assert gate(Candidate("Q8_0", on_cpu)) == (True, "fits")
    ok, why = gate(Candidate("Q8_0", on_gpu))
    assert not ok and "GPU memory" in why and "33 layers offloaded" in why
    assert gpu_budget_bytes(load_target("jetson-orin-nano-8gb")) is None  # unified memory: the host budget


def test_the_gate_learns_from_out_of_memory_trials(space):
    target = load_target("rpi5-8gb")
    gate = MemoryGate(target, lambda q: _shape({"Q8_0": 2.0, "Q4_1": 1.5, "Q4_K_M": 1.2, "Q4_0": 1.0}[q]))
    config = RuntimeConfig(threads=4, ctx_size=2048)
    assert gate(Candidate("Q8_0", config))[0]
    gate.learn_out_of_memory(Candidate("Q4_1", config), "just now")
    ok, why = gate(Candidate("Q8_0", config))
    assert not ok and "ran out of memory on the device" in why and "Q4_1" in why
    assert gate(Candidate("Q4_0", config)) == (True, "fits")  # predicted to need less: still tried
    assert gate.within_budget(Candidate("Q8_0", config)) == (True, "fits")  # the model alone still says fits


def test_a_search_teaches_the_gate_and_so_does_a_resume(space, tmp_path):
    target = load_target("rpi5-8gb")
    sizes = {"Q8_0": 2.0, "Q4_1": 1.5, "Q4_K_M": 1.2, "Q4_0": 1.0}
    store = TrialStore(tmp_path / "trials.sqlite")
    gate = MemoryGate(target, lambda q: _shape(sizes[q]))
    _search(space, Device(fail={"Q8_0": "oom"}), store, gate=gate, stop=StopRule(max_trials=1, patience=10)).run()
    assert not gate(Candidate("Q8_0", _quants_only(space)[0].config))[0]
    fresh_gate = MemoryGate(target, lambda q: _shape(sizes[q]))
    resumed = _search(space, Device(), store, gate=fresh_gate)
    assert resumed.resume(space) == 1
    assert fresh_gate.out_of_memory and fresh_gate.out_of_memory[0][2].startswith("Q8_0")
    store.close()


def test_a_candidate_that_differs_only_in_runtime_flags_reuses_its_kld(monkeypatch, tmp_path):
    """llama-perplexity gets the weights and the KV-cache types, nothing else: a one-knob neighbour (threads,
    flash attention...) reuses the measured KLD, a different KV type or quant is measured."""
    from haqa.agent import trials as trials_module
    from haqa.measure.quality import Quality

    measured: list[tuple] = []

    def quality(runner, toolchain, candidate, reference, corpus, settings, *, threads, cache_type_k, cache_type_v):
        measured.append((candidate, cache_type_k, threads))
        return Quality(kld_mean=0.01, kld_err=0.0, kld_p99=None, same_top_p=99.0, same_top_p_err=0.1, ppl_ratio=1.0,
                       ppl_ratio_err=0.0, ppl=10.0, ppl_base=10.0, tokens_scored=100, corpus_sha256="c", reference="r")

    monkeypatch.setattr(trials_module, "measure_quality", quality)
    monkeypatch.setattr(trials_module, "run_bench", lambda *a, **k: _bench(SPEED["Q4_0"]))
    device = trials_module.DeviceTrials(
        runner=LocalRunner(tmp_path), toolchain=None, device_source=None, model=None, source_type="Q4_1",
        synthetic=False, reference="ref.kld", corpus=None, settings=None, workload=RECIPE.workload,
        target=load_target("rpi5-8gb"),
        shape_for=None)
    monkeypatch.setattr(device, "prepare", lambda quant: (f"{quant}.gguf", f"sha-{quant}"))
    monkeypatch.setattr(device, "memory_record", lambda *a: {})
    base = RuntimeConfig(threads=4, ctx_size=2048)
    for quant, config in (("Q4_0", base), ("Q4_0", dataclasses.replace(base, threads=1)),
                          ("Q4_0", dataclasses.replace(base, flash_attn="off", ubatch_size=128)),
                          ("Q4_0", dataclasses.replace(base, cache_type_k="q8_0", cache_type_v="q8_0")),
                          ("Q8_0", base)):
        assert device(Candidate(quant, config)).quality.kld_mean == 0.01
    assert measured == [("Q4_0.gguf", "f16", 4), ("Q4_0.gguf", "q8_0", 4), ("Q8_0.gguf", "f16", 4)]
