"""Every shipped target and recipe validates, and the catalog answers by name."""

from __future__ import annotations

import json
import re
import sys

import pytest

from haqa.config import list_names, load_recipe, load_target
from tests.support.files import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SHIPPED_TARGETS = sorted(p.stem for p in (REPO / "targets").glob("*.toml"))
SHIPPED_RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))


def test_catalog_has_what_the_project_promises():
    for name in ["local", "rpi4-4gb", "rpi5-8gb", "jetson-orin-nano-8gb", "jetson-agx-orin-64gb",
                 "apple-m1-8gb", "apple-m2-pro-16gb", "x86-laptop-ddr5"]:
        assert name in SHIPPED_TARGETS
    for name in ["smollm2-135m", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct",
                 "qwen2.5-1.5b-instruct"]:
        assert name in SHIPPED_RECIPES


@pytest.mark.parametrize("name", SHIPPED_TARGETS)
def test_shipped_target_validates(name):
    t = load_target(name)
    assert t.name == name
    assert t.hardware.cores > 0 and t.hardware.ram_gib > 0


@pytest.mark.parametrize("name", [n for n in SHIPPED_TARGETS if n != "local"])
def test_every_catalog_fact_says_where_it_comes_from(name):
    """Targets quote published specs: bandwidth is stated, and each file carries source comments."""
    t = load_target(name)
    assert t.hardware.mem_bandwidth_gbs, f"{name} has no memory bandwidth"
    text = (REPO / "targets" / f"{name}.toml").read_text()
    parent = tomllib.loads(text).get("extends")
    if parent:
        text += (REPO / "targets" / f"{parent}.toml").read_text()
    assert re.search(r"#.*(https?://|datasheet|DS-\d|Derived|derived|llama\.cpp)", text), f"{name}: no source comments"


@pytest.mark.parametrize("name", SHIPPED_RECIPES)
def test_shipped_recipe_validates(name):
    r = load_recipe(name)
    assert r.name == name and r.search.quants


def test_families_inherit_and_children_override():
    orin = load_target("jetson-orin-nano-8gb")
    assert orin.hardware.gpu.kind == "cuda" and orin.hardware.gpu.cuda_arch == "87"  # from the family
    assert orin.hardware.cores == 6 and orin.hardware.gpu.memory_gib == 8  # from the target
    assert orin.build.cmake["GGML_CUDA"] == "ON"


def test_local_target_reads_this_machine():
    t = load_target("local")
    assert t.detect and t.connect.kind == "local"
    assert t.hardware.cores >= 1 and t.hardware.ram_gib > 0.5
    assert t.hardware.arch in ("x86_64", "aarch64")


def test_families_are_not_listed_as_targets():
    assert not any(n.startswith("cortex") or "/" in n for n in list_names("targets"))


def test_list_show_validate_commands(haqa):
    code, out, _ = haqa("targets", "list")
    assert code == 0 and "jetson-orin-nano-8gb" in out and "rpi5-8gb" in out
    code, out, _ = haqa("recipes", "list")
    assert code == 0 and "smollm2-135m" in out
    code, out, _ = haqa("targets", "show", "rpi5-8gb")
    data = json.loads(out)
    assert code == 0 and data["hardware"]["cpu_features"] == ["neon", "dotprod", "fp16"]
    code, out, _ = haqa("targets", "validate")
    assert code == 0 and out.count("ok ") == len(list_names("targets"))
    code, out, _ = haqa("recipes", "validate")
    assert code == 0 and out.count("ok ") == len(list_names("recipes"))


def test_project_folder_shadows_builtin(project, haqa):
    project.write("targets/rpi5-8gb.toml", """
        name = "rpi5-8gb"
        extends = "families/cortex-a76"
        [hardware]
        ram_gib = 4
    """)
    assert load_target("rpi5-8gb").hardware.ram_gib == 4  # the family file came from the built-in catalog
