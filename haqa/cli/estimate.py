"""`haqa estimate`: predicted memory and roofline speed of every candidate, without running anything."""

import click


@click.command()
@click.option("--target", "-t", "target_name", default="local", show_default=True)
@click.option("--recipe", "-r", "recipe_name", default="smollm2-135m", show_default=True)
@click.option("--ctx", type=click.IntRange(256), default=None, help="context size [default: the recipe's min_context]")
@click.option("--all", "show_all", is_flag=True, help="also list candidates that do not fit")
def estimate(target_name: str, recipe_name: str, ctx: int | None, show_all: bool) -> None:
    """Predict, for each candidate (quant type x KV type), peak memory on the target and an upper
    bound on decode speed (memory bandwidth / bytes read per token). Nothing is built or measured;
    every figure is labelled predicted. The source model is fetched if it is not cached."""
    from rich.console import Console
    from rich.table import Table

    from haqa.config import find_file, load_recipe, load_target
    from haqa.model import memory
    from haqa.model.gguf_facts import read_facts
    from haqa.model.source import resolve_model

    target = load_target(target_name)
    recipe = load_recipe(recipe_name)
    model = resolve_model(recipe, find_file("recipes", recipe_name).parent)
    source_type = read_facts(model.path).file_type
    hw = target.hardware
    n_ctx = ctx or recipe.workload.min_context
    budget = hw.ram_gib * 2**30 - target.limits.memory_headroom_gib * 2**30
    bandwidth = hw.gpu.mem_bandwidth_gbs if hw.gpu.kind != "none" and hw.gpu.mem_bandwidth_gbs else hw.mem_bandwidth_gbs
    table = Table("quant", "KV", "weights MiB", "KV MiB", "peak MiB", "fits", "roofline decode tok/s", box=None)
    for quant in recipe.search.quants:
        shape = memory.ModelShape.from_gguf(model.path) if quant == source_type else memory.estimate_quantized(model.path, quant)
        for kv in recipe.quality.kv_types:
            est = memory.predict(shape, n_ctx=n_ctx, type_k=kv, type_v=kv, arch=hw.arch, cpu_features=hw.cpu_features,
                                 unified_memory=hw.gpu.unified_memory)
            fits = est.host <= budget
            if not fits and not show_all:
                continue
            roof = memory.roofline_decode_tps(shape, bandwidth, n_ctx=n_ctx, type_k=kv, type_v=kv) if bandwidth else None
            table.add_row(quant, kv, f"{est.weights / 2**20:.0f}", f"{est.kv / 2**20:.1f}", f"{est.total / 2**20:.0f}",
                          "yes" if fits else "no", f"{roof:.1f}" if roof else "no bandwidth in target")
    console = Console(width=200 if not Console().is_terminal else None)
    console.print(f"{recipe.name} on {target.name}: context {n_ctx}, memory budget {budget / 2**30:.2f} GiB "
                  f"(RAM {hw.ram_gib:g} GiB - headroom {target.limits.memory_headroom_gib:g} GiB)")
    console.print(table)
    console.print("All figures are predicted: memory by haqa's memory model "
                  f"({memory.Calibration.load().fitted_on}); decode by the roofline "
                  f"(bandwidth {bandwidth or '?'} GB/s from the target file / bytes read per token), an upper bound.")
