"""Shared `list`, `show` and `validate` commands for the two catalogs (targets, recipes)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from haqa.config import list_names
from haqa.config.loader import find_file
from haqa.errors import UserError

_probe = Console()
out = Console(highlight=False, width=None if _probe.is_terminal else 200)


def _short(path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def make_group(kind: str, loader, row, headers: list[str], check=None) -> click.Group:
    """`check(name, obj)`, when given, is what `validate` checks beyond the file (raises UserError, or
    returns a note for the ok line)."""
    singular = kind[:-1]

    @click.group(name=kind, help=f"The {kind} haqa knows: list, show, validate.")
    def group() -> None:
        pass

    @group.command("list", help=f"List the {kind} visible from here (project, user, built-in).")
    def list_() -> None:
        table = Table(*headers, "file", box=None, pad_edge=False)
        for name, path in list_names(kind).items():
            # Cells are text from the files (a description may hold "[/]"): never read as markup.
            try:
                table.add_row(*(Text(cell) for cell in row(loader(name))), Text(_short(path)))
            except UserError as e:
                table.add_row(Text(name), Text.assemble(("invalid", "red"), f": {e.message.splitlines()[-1]}"),
                              *[""] * (len(headers) - 2), Text(_short(path)))
        out.print(table)

    @group.command("show", help=f"Print a {singular} with its `extends` chain merged and defaults filled, as JSON.")
    @click.argument("name")
    def show(name: str) -> None:
        obj = loader(name)
        click.echo(json.dumps({"file": str(find_file(kind, name)), **obj.model_dump(mode="json")}, indent=2))

    @group.command("validate", help=f"Check {kind} (names or .toml paths; all known ones if none given). "
                                    "Exit 2 on the first error.")
    @click.argument("names", nargs=-1)
    def validate(names: tuple[str, ...]) -> None:
        for name in names or tuple(list_names(kind)):
            obj = loader(name)
            note = check(name, obj) if check else None
            click.echo(f"ok  {name}" + (f"  ({note})" if note else ""))

    list_.help = f"List the {kind} visible from here (project folder, user folder, built-in catalog)."
    show.help = f"Print a {singular} with its `extends` chain merged and defaults filled, as JSON."
    validate.help = f"Check {kind} (names or .toml paths; every known one if none is given)."
    return group
