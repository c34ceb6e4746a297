"""The typed lock (haqa/bundle/lock/): every lock the current main wrote loads and is written back byte
for byte; a lock of another schema is refused with the schema this haqa needs; `build` writes the shape
those locks have, and `reproduced` keeps the record of the search it reproduces.

The locks are real: tests/data/lock-smollm2-135m.json and the deploys kept in docs/data/tuned/ and
docs/data/gpu/ (schema 2)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from haqa.agent.select import Trial
from haqa.bundle.lock import SCHEMA, load, parse
from haqa.bundle.lock.build import build, reproduced
from haqa.config import load_recipe, load_target
from haqa.errors import UserError
from haqa.measure.bench import BenchResult, SpeedPolicy
from haqa.measure.corpus import Corpus
from haqa.measure.drift import DriftGuard
from haqa.measure.quality import Quality, QualitySettings
from haqa.model.gguf_facts import read_facts
from haqa.model.source import ResolvedModel
from haqa.toolchain.build import Toolchain
from tests.support.files import REPO, write_tiny_gguf

DOCS = REPO / "docs" / "data"
KEPT = [REPO / "tests" / "data" / "lock-smollm2-135m.json", *sorted((DOCS / "tuned").glob("*@*.json")),
        DOCS / "gpu" / "haqa.lock.json"]
TUNED = DOCS / "tuned" / "smollm2-135m@local.json"


def _shape(value):
    """The keys of a JSON value, in order, all the way down (the first item stands for a list)."""
    if isinstance(value, dict):
        return [(k, _shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return None


@pytest.mark.parametrize("path", KEPT, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_kept_lock_loads_and_is_written_back_byte_for_byte(path):
    lock = load(path)
    assert lock.schema_ == 2 and SCHEMA == 3  # schema 2 locks (the kept ones) still read
    text = path.read_text()
    indent = 1 if "/tuned/" in path.as_posix() else 2
    assert lock.dumps(indent=indent) == text
    assert lock.to_dict() == json.loads(text)


@pytest.mark.parametrize("schema, says, hint", [
    (1, "lock schema 1 is not one this haqa reads (lock schemas 2 to 3): an older haqa wrote it",
     "deploy again with `haqa deploy`"),
    (4, "lock schema 4 was written by a newer haqa; this haqa reads lock schemas 2 to 3", "upgrade haqa"),
    ("2", "its 'schema' is '2', not a lock schema number (this haqa reads lock schemas 2 to 3)", "haqa deploy"),
    (None, "its 'schema' is None, not a lock schema number", "haqa deploy"),
])
def test_a_lock_of_another_schema_is_refused_with_the_schema_this_haqa_reads(schema, says, hint):
    data = json.loads(KEPT[0].read_text())
    if schema is None:
        data.pop("schema")
    else:
        data["schema"] = schema
    with pytest.raises(UserError) as e:
        parse(data, Path("haqa.lock.json"))
    assert says in e.value.message and hint in e.value.hint, e.value


def test_a_value_of_a_union_is_named_once_by_its_key():
    """A number is an int or a float: a string there is one problem, not one per branch."""
    data = json.loads(KEPT[0].read_text())
    data["metrics"]["memory"]["deployment_predicted"]["host_bytes"] = "lots"
    data["quality_method"] = {"tool": 1}
    with pytest.raises(UserError) as e:
        parse(data, Path("haqa.lock.json"))
    lines = e.value.message.splitlines()[1:]
    assert "  - 'metrics.memory.deployment_predicted.host_bytes': Input should be a valid integer (got 'lots')" in lines
    assert "  - 'quality_method.tool': Input should be a valid string (got 1)" in lines
    assert all(".int'" not in line and ".float'" not in line and "QualityMethod" not in line for line in lines)
    assert "  - 'quality_method': Input should be a valid string" not in "\n".join(lines)


def test_a_trial_that_says_ok_without_measurements_is_refused():
    data = json.loads(KEPT[0].read_text())
    data["trials"][0].pop("bench")
    with pytest.raises(UserError, match="'trials.0': a trial with status 'ok' needs its 'bench' measurements"):
        parse(data, Path("haqa.lock.json"))


def test_build_writes_the_shape_of_the_locks_the_current_main_wrote(tmp_path):
    """The inputs of a search (real dataclasses, figures from a kept lock) through `build`: the lock it
    makes has the keys, in the order, of the lock that run wrote, and schema 3's additions."""
    kept = json.loads(TUNED.read_text())
    recipe, target = load_recipe("smollm2-135m"), load_target("local")
    m = kept["metrics"]

    def trial(rec: dict) -> Trial:
        config = parse(kept, TUNED).metrics.config.config()
        return Trial(rec["quant"], config, BenchResult.from_dict(rec["bench"]), Quality.from_dict(rec["quality"]),
                     rec["model_sha256"], memory=rec.get("memory"))

    guard = DriftGuard(lambda: 1.0, history=kept["drift_guard"]["history"])
    src = kept["source_model"]
    lock = build(target=target, recipe=recipe, source=ResolvedModel(tmp_path, src["sha256"], src["source"]),
                 source_facts=read_facts(write_tiny_gguf(tmp_path / "source.gguf")),
                 toolchain=Toolchain(key="k", root=tmp_path, **{k: kept["llama_cpp"][k] for k in (
                     "commit", "source_sha256", "llama_cpp_python", "cmake_options")}),
                 model_file=write_tiny_gguf(tmp_path / "model.gguf"), winner=trial(m),
                 trials=[(trial(t), t["proposer"], t["rationale"]) for t in kept["trials"]],
                 measured_on=kept["measured_on"], corpus=Corpus("python-docs", tmp_path, "0" * 64),
                 settings=QualitySettings(), speed_policy=SpeedPolicy(), guard=guard, reruns=0,
                 selection={k: v for k, v in kept["selection"].items() if k != "rule"}, comparison=kept["comparison"])
    built = lock.model_copy(update={"files": kept["files"]}).to_dict()
    kept["target"]["facts"] = target.model_dump(mode="json")  # this machine's facts, whatever it is
    # what schema 3 added to the shape schema 2 had: the workload's concurrency, limits and context
    kept["schema"] = 3
    kept["recipe"]["workload"] = recipe.workload.model_dump(mode="json")
    assert list(kept["recipe"]["workload"])[3:] == ["concurrency", "max_ttft_ms", "min_decode_tps", "context"]
    assert _shape(built) == _shape(kept)
    assert built["metrics"]["speed_basis"].startswith("the side-by-side re-measurement (3 interleaved rounds")
    assert lock.metrics.bench.decode.mean == m["bench"]["decode"]["mean"] and lock.label == "smollm2-135m@local"


def test_reproduced_keeps_the_search_and_the_original_comparison_of_the_lock(tmp_path):
    lock = load(TUNED)
    target, recipe = load_target("local"), load_recipe("smollm2-135m")
    measured = BenchResult.from_dict(lock.metrics.bench.model_dump())
    memory = {"deployment_predicted": {"host_bytes": 2**28, "gpu_bytes": 0}, "basis": "predicted here"}
    again = Trial(lock.model.file_type, lock.runtime.config(), measured, None, "ab" * 32, memory=memory)
    new = reproduced(lock, target=target, recipe=recipe, synthetic=False, trial=again,
                     measured_on={"runner": "ssh", "host": "pi.local"})
    r = new.reproduced_from_lock
    assert r.lock_sha256 == lock.sha256() and r.lock_created == lock.created and not r.weights_match_lock
    assert r.decode_ratio_to_lock == r.prefill_ratio_to_lock == 1.0
    assert new.comparison is None and new.original_comparison == lock.comparison and not new.files
    assert new.trials == lock.trials and new.selection.reproduced == "from a lock: no search on this device"
    assert new.model.sha256 == "ab" * 32 and new.measured_on.host == "pi.local"
    assert new.metrics.memory.deployment_predicted.host_bytes == 2**28  # what `haqa ship` checks the device for
    twice = reproduced(new, target=target, recipe=recipe, synthetic=False, trial=again, measured_on={"runner": "local"})
    assert twice.original_comparison == lock.comparison  # a lock reproduced from a reproduced one keeps it
    assert parse(copy.deepcopy(twice.to_dict()), Path("again.json")) == twice
