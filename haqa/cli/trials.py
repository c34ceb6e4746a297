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
        dec = f"{r.bench['decode']['mean']:.1f} ± {r.bench['decode']['stddev']:.1f}" if r.bench else "-"
        pre = f"{r.bench['prefill']['mean']:.0f} ± {r.bench['prefill']['stddev']:.0f}" if r.bench else "-"
        kld = f"{r.quality['kld_mean']:.4f}" if r.quality else "-"
        status = r.status + (f" ({r.cause})" if r.cause else "")
        table.add_row(str(r.id), r.quant, str(c.get("kv_type")), str(c.get("threads")), str(c.get("flash_attn")),
                      str(c.get("ubatch_size")), str(c.get("repack")), dec, pre, kld, status, r.proposer)
    store.close()
    Console(width=None if Console().is_terminal else 200).print(table)
    click.echo(f"store: {path}; speed measured (mean ± stddev), KLD measured against the source")
