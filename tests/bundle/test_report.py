"""REPORT.md, pareto.png and `--from-lock` checks, from a lock a real `haqa deploy` wrote
(tests/data/lock-smollm2-135m.json: SmolLM2-135M on a 2-core x86 machine)."""

from __future__ import annotations

import copy
import json

import pytest

from haqa.bundle import plot, report
from haqa.bundle.lock import parse
from haqa.config import load_target
from haqa.errors import UserError
from haqa.reproduce import deploy_from_lock, kind_mismatches
from tests.support.files import REPO

DATA = json.loads((REPO / "tests" / "data" / "lock-smollm2-135m.json").read_text())
LOCK = parse(DATA, REPO / "tests" / "data" / "lock-smollm2-135m.json")


def test_report_states_every_figure_with_its_basis():
    text = report.render(LOCK)
    comp = DATA["comparison"]
    assert text.startswith("# smollm2-135m@local: deployment report")
    assert f"{comp['rounds']} rounds x {comp['repetitions_per_round']} repetitions" in text
    ratio = comp["ratios"]["tuned/default"]["decode"]
    assert f"x{ratio['median']:.2f} ({ratio['min']:.2f}..{ratio['max']:.2f})" in text
    assert "derived:" in text and "predicted" in text and "measured" in text
    assert "mean KLD 0.2601 > budget 0.1" in text  # Q4_0 was over the KLD budget


def test_report_of_a_synthetic_lock_says_quality_was_not_measured():
    data = copy.deepcopy(DATA)
    data["synthetic"] = True
    data["metrics"]["quality"] = None
    for t in data["trials"]:
        t["quality"] = None
    lock = parse(data, REPO / "synthetic.json")
    assert "not measured (synthetic weights)" in report.render(lock)
    assert plot.pareto_png(lock).startswith(b"\x89PNG")


def test_plot_is_the_same_for_the_same_lock():
    assert plot.pareto_png(LOCK) == plot.pareto_png(LOCK)


def test_from_lock_refuses_a_device_of_another_kind(tmp_path):
    lock = copy.deepcopy(DATA)
    local = load_target("local").model_dump(mode="json")
    lock["target"]["facts"] = copy.deepcopy(local)
    assert kind_mismatches(parse(lock, tmp_path / "lock.json"), load_target("local")) == []
    lock["target"]["facts"]["hardware"]["cores"] = local["hardware"]["cores"] + 6
    path = tmp_path / "haqa.lock.json"
    path.write_text(json.dumps(lock))
    with pytest.raises(UserError) as e:
        deploy_from_lock(path, "local", tmp_path / "out")
    assert "hardware.cores" in e.value.message and "haqa deploy --target local" in e.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, says", [("{not json", "invalid JSON"), ('{"schema": 1}', "lock schema 1")])
def test_from_lock_refuses_a_file_that_is_not_a_current_lock(tmp_path, text, says):
    path = tmp_path / "haqa.lock.json"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        deploy_from_lock(path)
    assert says in e.value.message


def test_report_says_when_the_llm_was_unavailable():
    data = copy.deepcopy(DATA)
    data["trials"][-1]["proposer"] = "heuristic (llm unavailable)"
    data["trials"][-1]["rationale"] = ("[LLM unavailable: the openai backend failed: "
                                       "APITimeoutError: Request timed out.] "
                                       "from the best so far ...")
    text = report.render(parse(data, REPO / "llm.json"))
    assert "**The LLM agent was unavailable** (LLM unavailable: the openai backend failed: APITimeoutError" in text
