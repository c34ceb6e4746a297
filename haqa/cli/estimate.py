"""`haqa estimate`: predicted memory and roofline speed of every candidate, without running anything."""

import dataclasses

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

    from haqa.agent.space import Candidate
    from haqa.config import find_file, load_recipe, load_target
    from haqa.model import memory
    from haqa.model.budget import MemoryGate, decode_bandwidth_gbs, host_budget_bytes, model_shapes, predicted_peak
    from haqa.model.gguf_facts import read_facts
    from haqa.model.source import resolve_model
    from haqa.pipeline import default_config

    target = load_target(target_name)
    recipe = load_recipe(recipe_name)
    model = resolve_model(recipe, find_file("recipes", recipe_name).parent)
    facts = read_facts(model.path)
    source_type = facts.file_type
    hw = target.hardware
    n_ctx = ctx or recipe.workload.min_context
    budget = host_budget_bytes(target)
    bandwidth = decode_bandwidth_gbs(hw)
    gate = MemoryGate(target, model_shapes(model.path, source_type))
    # llama.cpp's defaults at this context (every layer on the GPU where there is one), as a deploy starts
    base = dataclasses.replace(default_config(target, recipe, n_layers=facts.n_layers), ctx_size=n_ctx)
    table = Table("quant", "KV", "weights MiB", "KV MiB", "peak MiB", "fits", "roofline decode tok/s", box=None)
    for quant in recipe.search.quants:
        shape = gate.shape_for(quant)
        for kv in recipe.quality.kv_types:
            config = dataclasses.replace(base, cache_type_k=kv, cache_type_v=kv)
            est = predicted_peak(target, shape, config, tokens=n_ctx)
            fits, _ = gate.within_budget(Candidate(quant, config))
            if not fits and not show_all:
                continue
            roof = (memory.roofline_decode_tps(shape, bandwidth, n_ctx=n_ctx, type_k=kv, type_v=kv)
                    if bandwidth else None)
            table.add_row(quant, kv, f"{est.weights / 2**20:.0f}", f"{est.kv / 2**20:.1f}", f"{est.total / 2**20:.0f}",
                          "yes" if fits else "no", f"{roof:.1f}" if roof else "no bandwidth in target")
    console = Console(width=200 if not Console().is_terminal else None)
    console.print(f"{recipe.name} on {target.name}: context {n_ctx}, memory budget {budget / 2**30:.2f} GiB "
                  f"(RAM {hw.ram_gib:g} GiB - headroom {target.limits.memory_headroom_gib:g} GiB)")
    console.print(table)
    console.print("All figures are predicted: memory by haqa's memory model "
                  f"({memory.Calibration.load().fitted_on}); decode by the roofline "
                  f"(bandwidth {bandwidth or '?'} GB/s from the target file / bytes read per token), an upper bound.")
