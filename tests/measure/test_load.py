"""The load test (haqa/measure/load.py) against the real llama-server of the cached toolchain and the real
SmolLM2 GGUF on 127.0.0.1: streamed requests of the workload's shape from concurrent clients, in
interleaved rounds, each server started afresh and stopped afterwards."""

from __future__ import annotations

import pytest

from haqa.config import find_file, load_recipe, load_target
from haqa.config.schema import Workload
from haqa.measure import load
from haqa.model.source import resolve_model
from haqa.runner import LocalRunner
from haqa.runtime import RuntimeConfig
from haqa.toolchain import ensure_toolchain

pytestmark = pytest.mark.slow

TEXT = ("The quick brown fox jumps over the lazy dog. Sphinx of black quartz, judge my vow. " * 60)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    runner = LocalRunner(tmp_path_factory.mktemp("device"))
    toolchain = ensure_toolchain(LocalRunner(), load_target("local"))
    model = resolve_model(load_recipe("smollm2-135m"), find_file("recipes", "smollm2-135m").parent)
    return runner, toolchain.bin("llama-server"), model.path


def _procs_naming(folder) -> list[str]:
    import pathlib

    out = []
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if str(folder) in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(d.name)
            except OSError:
                pass
    return out


def test_two_configurations_under_concurrent_clients_in_interleaved_rounds(parts, tmp_path):
    runner, server, model = parts
    workload = Workload(min_context=512, prompt_tokens=64, gen_tokens=16, concurrency=2)
    one = RuntimeConfig(threads=1, ctx_size=512)
    two = RuntimeConfig(threads=2, ctx_size=512)
    contenders = [load.LoadContender("tuned", "Q4_1", model, two.server_args()),
                  load.LoadContender("default", "Q4_1", model, one.server_args())]
    sides = load.load_test(runner, server, contenders, workload, rounds=2, requests_per_client=2, prompt_text=TEXT,
                           log_dir=tmp_path)
    for side in sides:
        assert side.measured, side.error
        assert len(side.rounds) == 2
        for rnd in side.rounds:
            assert len(rnd.requests) == 4  # 2 clients x 2 requests
            for r in rnd.requests:
                assert r.generated == 16 and 0 < r.ttft_s < r.total_s and r.decode_tps > 0
            assert rnd.aggregate_tps > 0 and rnd.peak_rss_bytes > model.stat().st_size / 2
        summary = side.summary()
        assert summary["request_s"]["min"] <= summary["request_s"]["median"] <= summary["request_s"]["max"]
        assert summary["requests_per_round"] == 4 and summary["peak_rss_bytes"] > 0
    r = load.ratios(sides[0], sides[1])
    assert set(r) == {"request_s", "ttft_s", "decode_tps", "p95_request_s", "aggregate_tps"}
    assert all(v["rounds"] == 2 for v in r.values())
    assert not _procs_naming(runner.home / "load"), "a load-test server was left running"
    assert "listening on" in (tmp_path / "load-tuned.log").read_text()


def test_a_server_that_cannot_start_is_recorded_and_the_others_are_measured(parts, tmp_path):
    runner, server, model = parts
    workload = Workload(min_context=512, prompt_tokens=32, gen_tokens=8)
    good = load.LoadContender("default", "Q4_1", model, RuntimeConfig(threads=2, ctx_size=512).server_args())
    bad = load.LoadContender("tuned", "Q4_1", tmp_path / "missing.gguf", good.server_args)
    sides = load.load_test(runner, server, [bad, good], workload, rounds=2, requests_per_client=1, prompt_text=TEXT,
                           log_dir=tmp_path)
    assert not sides[0].measured and "llama-server stopped before it" in sides[0].error
    assert sides[1].measured and len(sides[1].rounds) == 2
    assert sides[0].summary()["not_measured"] == sides[0].error
    assert load.ratios(sides[0], sides[1]) is None
    assert not _procs_naming(runner.home / "load")
