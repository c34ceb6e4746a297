"""Property-based: target and recipe files broken in generated ways (a value of the wrong type or out of
range, hostile text, a key removed, an unknown key added, a table replaced by a scalar, TOML syntax or
the UTF-8 encoding damaged) are either valid or refused with a UserError that names the file; never
another exception. The same files go through the real CLI (`validate`, `estimate`): exit 0 or 2, never
a traceback."""

from __future__ import annotations

import json
import math

import pytest
import tomllib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haqa.config import load_recipe, load_target
from haqa.errors import UserError
from tests.support.files import REPO, write_tiny_gguf
from tests.support.strategies import scalars

TARGET = tomllib.loads((REPO / "targets" / "jetson-orin-nano-8gb.toml").read_text())
TARGET.pop("extends", None)
TARGET.update({"os": "linux", "name": "fuzz-target"})
TARGET["hardware"].update({"arch": "aarch64"})
RECIPE = tomllib.loads((REPO / "recipes" / "smollm2-135m.toml").read_text())
RECIPE["source"] = {"path": "model.gguf"}
RECIPE["name"] = "fuzz-recipe"

def dump(d: dict, prefix: str = "") -> str:
    """A small TOML writer (the standard library reads TOML but does not write it)."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    lines = [f"{json.dumps(k)} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            name = f"{prefix}{json.dumps(k)}"
            lines += ["", f"[{name}]", dump(v, name + ".")]
    return "\n".join(lines)


def paths(d: dict, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from paths(v, prefix + (k,))


@st.composite
def broken(draw, base: dict):
    doc = json.loads(json.dumps(base))
    where = draw(st.sampled_from(sorted(paths(doc))))
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    how = draw(st.sampled_from(["replace", "remove", "unknown", "syntax", "encoding"]))
    if how == "replace":
        parent[where[-1]] = draw(scalars)
    elif how == "remove":
        del parent[where[-1]]
    elif how == "unknown":
        parent[draw(st.text(min_size=1, max_size=12))] = draw(scalars)
    text = dump(doc)
    if how == "syntax":
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["[", "=", '"', "]]", "\x00", "= =", "\n[hardware]\n"])) + text[cut:]
    data = text.encode()
    if how == "encoding":  # a file saved in another encoding, or cut inside a character
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.sampled_from([b"\xe9", b"\xff\xfe", b"\xc3", b"\x80\x80"])) + data[cut:]
    return data


def _check(load, path, data: bytes):
    path.write_bytes(data)
    try:
        load(str(path))
    except UserError as e:
        assert str(path.name) in e.message or str(path) in e.message, e.message
    except Exception as e:  # anything else is a bug: the user would see a traceback
        pytest.fail(f"{type(e).__name__}: {e}\n--- file ---\n{data!r}")


def test_the_unbroken_files_are_valid(tmp_path):
    (tmp_path / "fuzz-target.toml").write_text(dump(TARGET))
    (tmp_path / "fuzz-recipe.toml").write_text(dump(RECIPE))  # the model path is not checked by load
    assert load_target(str(tmp_path / "fuzz-target.toml")).hardware.cores == 6
    assert load_recipe(str(tmp_path / "fuzz-recipe.toml")).search.quants


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=broken(TARGET))
def test_broken_target_files_get_a_clear_error(tmp_path, data):
    _check(load_target, tmp_path / "fuzz-target.toml", data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=broken(RECIPE))
def test_broken_recipe_files_get_a_clear_error(tmp_path, data):
    _check(load_recipe, tmp_path / "fuzz-recipe.toml", data)


def _cli_clean(haqa, *args: str) -> None:
    code, out, err = haqa(*args)
    assert code in (0, 2), f"exit {code} for haqa {' '.join(args)}:\n{out}{err}"
    assert "Traceback" not in err and "internal error" not in err, err


@pytest.fixture(scope="module")
def cli_project(tmp_path_factory):
    """A project with a good target and recipe (a tiny GGUF as the model) beside the fuzzed ones."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    (root / "targets").mkdir()
    (root / "recipes").mkdir()
    (root / "targets" / "good-target.toml").write_text(dump({**TARGET, "name": "good-target"}))
    (root / "recipes" / "good-recipe.toml").write_text(dump({**RECIPE, "name": "good-recipe"}))
    write_tiny_gguf(root / "recipes" / "model.gguf")
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=broken(TARGET), recipe=broken(RECIPE))
def test_broken_files_through_validate_and_estimate_never_end_in_a_traceback(cli_project, haqa, monkeypatch,
                                                                               target, recipe):
    monkeypatch.chdir(cli_project)
    (cli_project / "targets" / "fuzz-target.toml").write_bytes(target)
    (cli_project / "recipes" / "fuzz-recipe.toml").write_bytes(recipe)
    _cli_clean(haqa, "targets", "validate", "fuzz-target")
    _cli_clean(haqa, "recipes", "validate", "fuzz-recipe")
    _cli_clean(haqa, "targets", "list")
    _cli_clean(haqa, "estimate", "--target", "fuzz-target", "--recipe", "good-recipe", "--all")
    _cli_clean(haqa, "estimate", "--target", "good-target", "--recipe", "fuzz-recipe", "--all")


def test_the_unbroken_files_go_through_validate_and_estimate(cli_project, haqa, monkeypatch):
    monkeypatch.chdir(cli_project)
    code, out, err = haqa("estimate", "--target", "good-target", "--recipe", "good-recipe", "--all")
    assert code == 0, err
    assert "good-recipe on good-target" in out and "Q8_0" in out
