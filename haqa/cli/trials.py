"""`haqa trials list`: what the trial store holds for a (target, recipe)."""

import click


@click.group(help="The trial store of a (target, recipe).")
def trials() -> None:
    pass


@trials.command("list")
@click.option("--target", "-t", "target_name", default="local", show_default=True)
@click.option("--recipe", "-r", "recipe_name", default="smollm2-135m", show_default=True)
def list_(target_name: str, recipe_name: str) -> None:
    """Every trial recorded: configuration, measurements with spread, status and cause, proposer."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from haqa.agent.store import TrialStore, store_path
    from haqa.config import load_recipe, load_target

    target, recipe = load_target(target_name), load_recipe(recipe_name)
    path = store_path(target.name, recipe.name)
    if not path.exists():
        click.echo(f"no trials yet for {recipe.name}@{target.name} ({path}); run `haqa deploy --target {target.name} "
                   f"--recipe {recipe.name}`")
        return
    store = TrialStore(path)
    table = Table("id", "quant", "kv", "thr", "fa", "ub", "repack", "decode tok/s", "prefill tok/s", "KLD", "status",
                  "proposer", box=None)
    for r in store.all():
        c = r.candidate
        dec = _spread(r.bench, "decode", ".1f")
        pre = _spread(r.bench, "prefill", ".0f")
        kld = _number(r.quality, "kld_mean", ".4f")
        status = r.status + (f" ({r.cause})" if r.cause else "")
        cells = [str(r.id), r.quant, str(c.get("kv_type")), str(c.get("threads")), str(c.get("flash_attn")),
                 str(c.get("ubatch_size")), str(c.get("repack")), dec, pre, kld, status, r.proposer]
        table.add_row(*(Text(cell) for cell in cells))  # stored text, never markup
    store.close()
    Console(width=None if Console().is_terminal else 200).print(table)
    click.echo(f"store: {path}; speed measured (mean ± stddev), KLD measured against the source")


def _number(table: dict | None, key: str, fmt: str) -> str:
    value = (table or {}).get(key) if isinstance(table, dict) else None
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _spread(bench: dict | None, phase: str, fmt: str) -> str:
    """`mean ± stddev` of a stored measurement; "-" when it is missing or damaged."""
    m = (bench or {}).get(phase)
    mean, sd = _number(m, "mean", fmt), _number(m, "stddev", fmt)
    return "-" if mean == "-" else f"{mean} ± {sd}"
