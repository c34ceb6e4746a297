"""`haqa deploy`: the whole pipeline for one (target, recipe)."""

from pathlib import Path

import click


@click.command()
@click.option("--target", "-t", "target_name", default="local", show_default=True, help="target name or .toml path")
@click.option("--recipe", "-r", "recipe_name", default="smollm2-135m", show_default=True, help="recipe name or .toml path")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="bundle folder [default: dist/<recipe>@<target>]")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None, help="compile jobs for the llama.cpp build")
@click.option("--agent", type=click.Choice(["auto", "llm", "openai", "ollama", "embedded", "heuristic", "random", "grid"]),
              default="auto", show_default=True,
              help="who proposes candidates: an LLM backend (auto = the first configured and reachable of "
                   "openai, ollama, embedded) or a baseline")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the random proposer")
def deploy(target_name: str, recipe_name: str, out: Path | None, jobs: int | None, agent: str, seed: int) -> None:
    """Build llama.cpp for the target, quantize and measure the recipe's candidates there, and
    write a bundle (GGUF, haqa.lock.json, run.sh).

    \b
    Example:
      haqa deploy --target local --recipe smollm2-135m
    """
    from haqa.pipeline import deploy as run_deploy

    result = run_deploy(target_name, recipe_name, out, jobs=jobs, agent=agent, seed=seed)
    click.echo(str(result.bundle))
