"""Property-based: target and recipe files broken in generated ways (a value of the wrong type or out of
range, a key removed, an unknown key added, a table replaced by a scalar, TOML syntax damaged) are
either valid or refused with a UserError that names the file; never another exception."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haqa.config import load_recipe, load_target
from haqa.errors import UserError
from tests.conftest import REPO

TARGET = tomllib.loads((REPO / "targets" / "jetson-orin-nano-8gb.toml").read_text())
TARGET.pop("extends", None)
TARGET.update({"os": "linux", "name": "fuzz-target"})
TARGET["hardware"].update({"arch": "aarch64"})
RECIPE = tomllib.loads((REPO / "recipes" / "smollm2-135m.toml").read_text())
RECIPE["source"] = {"path": "model.gguf"}
RECIPE["name"] = "fuzz-recipe"

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=20), st.lists(st.integers(-5, 5) | st.text(max_size=5), max_size=3),
)


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
    how = draw(st.sampled_from(["replace", "remove", "unknown", "syntax"]))
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
    return text


def _check(load, path, text):
    path.write_text(text)
    try:
        load(str(path))
    except UserError as e:
        assert str(path.name) in e.message or str(path) in e.message, e.message
    except Exception as e:  # anything else is a bug: the user would see a traceback
        pytest.fail(f"{type(e).__name__}: {e}\n--- file ---\n{text}")


def test_the_unbroken_files_are_valid(tmp_path):
    (tmp_path / "fuzz-target.toml").write_text(dump(TARGET))
    (tmp_path / "fuzz-recipe.toml").write_text(dump(RECIPE))
    assert load_target(str(tmp_path / "fuzz-target.toml")).hardware.cores == 6
    assert load_recipe(str(tmp_path / "fuzz-recipe.toml")).search.quants


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=broken(TARGET))
def test_broken_target_files_get_a_clear_error(tmp_path, text):
    _check(load_target, tmp_path / "fuzz-target.toml", text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=broken(RECIPE))
def test_broken_recipe_files_get_a_clear_error(tmp_path, text):
    _check(load_recipe, tmp_path / "fuzz-recipe.toml", text)
