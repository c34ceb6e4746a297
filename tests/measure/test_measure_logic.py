"""Measurement logic that needs no device: the KLD parser, the peak-RSS wrapper, the drift guard,
and selection within the quality budget."""

from __future__ import annotations

import subprocess
import sys

import pytest

from haqa.agent.select import NothingFeasible, Trial, choose
from haqa.config.schema import Quality as Budget
from haqa.measure import peak_rss
from haqa.measure.bench import BenchResult, Throughput
from haqa.measure.drift import DriftGuard
from haqa.measure.quality import Quality, parse_kld_output
from haqa.runtime import RuntimeConfig
from tests.support.files import REPO


def test_kld_output_of_the_pinned_build():
    stats = parse_kld_output((REPO / "tests" / "data" / "llama-perplexity-kld-0c1e5709.log").read_text())
    assert stats["kld_mean"] == pytest.approx(0.061966) and stats["kld_err"] == pytest.approx(0.001483)
    assert stats["ppl_ratio"] == pytest.approx(1.084467) and stats["kld_p99"] == pytest.approx(0.314076)
    assert stats["ppl"] == pytest.approx(12.981179) and stats["ppl_base"] == pytest.approx(11.970095)
    assert 0 < stats["same_top_p"] < 100


def test_kld_output_of_a_candidate_identical_to_the_reference():
    """The source's own type scored against itself: the PPL ratio's uncertainty prints as -nan (a variance
    rounded below zero), which is no spread, not a missing statistic (seen on an AMD EPYC)."""
    stats = parse_kld_output((REPO / "tests" / "data" / "llama-perplexity-kld-same-model-0c1e5709.log").read_text())
    assert stats["ppl_ratio"] == pytest.approx(0.999996) and stats["ppl_ratio_err"] == 0.0
    assert stats["kld_mean"] == pytest.approx(0.000001) and stats["same_top_p"] == 100.0


def test_kld_output_missing_statistics():
    with pytest.raises(ValueError, match="Mean    KLD"):
        parse_kld_output("perplexity: calculating perplexity over 4 chunks\n")


def test_peak_rss_wrapper_reports_the_childs_peak_and_keeps_its_exit_code():
    argv = peak_rss.wrap(sys.executable, [sys.executable, "-c", "b = bytearray(80 * 2**20); import sys; sys.exit(3)"])
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 3
    peak = peak_rss.parse(proc.stderr)
    assert 80 * 2**20 < peak < 400 * 2**20


def test_drift_guard_flags_a_moved_anchor_and_rebaselines():
    """The device gets 30 % slower (scripted anchor readings, no device)."""
    readings = iter([100.0, 95.0, 70.0, 70.0, 71.0])
    guard = DriftGuard(lambda: next(readings), tolerance=0.1, every=2)
    assert guard.start() == 100.0
    assert guard.check() is True  # -5 %: within tolerance
    assert guard.check() is False  # -30 %: drift
    assert guard.baseline == 70.0  # re-baselined, so re-run trials compare with the device as it is now
    assert guard.check() is True
    assert [h["event"] for h in guard.history] == ["baseline", "check", "check", "baseline", "check"]
    assert guard.history[2]["change"] == pytest.approx(-0.3)


def _trial(quant: str, decode: float, kld: float) -> Trial:
    tp = Throughput.from_samples(64, 0, [decode, decode])
    bench = BenchResult(prefill=tp, decode=tp, build_commit="x", threads=2, model_size_bytes=1, argv=[])
    q = Quality(kld_mean=kld, kld_err=0, kld_p99=None, same_top_p=90, same_top_p_err=0, ppl_ratio=1 + kld,
                ppl_ratio_err=0, ppl=10, ppl_base=10, tokens_scored=1, corpus_sha256="", reference="")
    return Trial(quant, RuntimeConfig(threads=2, ctx_size=512), bench, q)


def test_over_budget_is_never_chosen_even_when_fastest():
    budget = Budget(max_kld=0.05)
    trials = [_trial("Q8_0", 100, 0.001), _trial("Q4_0", 300, 0.2), _trial("Q5_K_M", 150, 0.02)]
    assert choose(trials, budget).quant == "Q5_K_M"
    with pytest.raises(NothingFeasible, match="Q4_0: mean KLD 0.2000 > budget"):
        choose([_trial("Q4_0", 300, 0.2)], budget)
    assert choose(trials, Budget(max_kld=0.5, max_ppl_ratio=1.01)).quant == "Q8_0"


def test_a_tool_killed_by_a_signal_is_a_crash_and_says_which_signal():
    """A llama.cpp tool that dies of SIGILL (a build using an instruction the CPU cannot run) under the
    peak-memory wrapper exits 128+4, as a shell reports it: recorded as a crash, named in the error."""
    import sys

    from haqa.errors import ToolFailed, failure_cause
    from haqa.measure.peak_rss import wrap
    from haqa.runner import LocalRunner

    die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    r = LocalRunner().run(wrap(sys.executable, die), timeout=60)
    assert r.returncode == 128 + 4
    e = ToolFailed(["llama-bench"], r.returncode, r.stderr_tail)
    assert "killed by SIGILL (illegal instruction" in str(e) and failure_cause(e) == "crash"
    assert failure_cause(ToolFailed(["llama-bench"], -11, "")) == "crash"
    assert failure_cause(ToolFailed(["llama-bench"], 137, "")) == "oom"
    assert failure_cause(ToolFailed(["llama-bench"], -9, "")) == "oom"
    assert failure_cause(ToolFailed(["llama-bench"], 1, "error: unknown argument")) == "error"
