"""`haqa recipes list|show|validate|fetch`."""

import click

from haqa.cli._catalog import make_group
from haqa.config import find_file, load_recipe


def _row(r):
    return [r.name, r.source.describe(), " ".join(r.search.quants), f"{r.quality.max_kld:g}", r.description]


recipes = make_group("recipes", load_recipe, _row, ["name", "source", "quants", "max KLD", "description"])


@recipes.command("fetch")
@click.argument("name")
def fetch(name: str) -> None:
    """Download (or find in the cache) a recipe's source GGUF and print its path."""
    from haqa.model.source import resolve_model

    model = resolve_model(load_recipe(name), find_file("recipes", name).parent)
    click.echo(f"{model.path}  sha256={model.sha256}")
