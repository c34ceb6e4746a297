"""`haqa recipes list|show|validate|fetch`."""

import click

from haqa.cli._catalog import make_group
from haqa.config import find_file, load_recipe


def _row(r):
    return [r.name, r.source.describe(), " ".join(r.search.quants), f"{r.quality.max_kld:g}", r.description]


def _check_source(name: str, recipe) -> str:
    """A local model file must exist and be a GGUF; a download is only named (validate fetches nothing)."""
    from haqa.model.gguf_facts import check_gguf
    from haqa.model.source import local_source_path

    if recipe.source.kind != "path":
        return f"model {recipe.source.describe()}: checked when fetched (`haqa recipes fetch {name}`)"
    path = local_source_path(recipe.source, find_file("recipes", name).parent)
    check_gguf(path)
    return f"model {path}"


recipes = make_group("recipes", load_recipe, _row, ["name", "source", "quants", "max KLD", "description"],
                     check=_check_source)


@recipes.command("fetch")
@click.argument("name")
def fetch(name: str) -> None:
    """Download (or find in the cache) a recipe's source GGUF and print its path."""
    from haqa.model.source import resolve_model

    model = resolve_model(load_recipe(name), find_file("recipes", name).parent)
    click.echo(f"{model.path}  sha256={model.sha256}")
