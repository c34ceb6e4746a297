"""`haqa deploy`: the whole pipeline for one (target, recipe)."""

from pathlib import Path

import click

from haqa.agent.registry import AGENTS


@click.command()
@click.option("--target", "-t", "target_name", default="local", show_default=True, help="target name or .toml path")
@click.option("--recipe", "-r", "recipe_name", default="smollm2-135m", show_default=True,
              help="recipe name or .toml path")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="bundle folder [default: dist/<recipe>@<target>]")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None, help="compile jobs for the llama.cpp build")
@click.option("--agent", type=click.Choice(AGENTS),
              default="auto", show_default=True,
              help="who proposes candidates: auto = an LLM endpoint that answers (openai, then ollama), else the "
                   "model-based heuristic; llm = such an endpoint, else the embedded model; or one backend or baseline")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the random proposer")
@click.option("--from-lock", "from_lock", type=click.Path(path_type=Path), default=None,
              help="reproduce a bundle's choice (its folder or haqa.lock.json) on a device of the same kind, "
                   "without searching; --target defaults to the lock's")
def deploy(target_name: str, recipe_name: str, out: Path | None, jobs: int | None, agent: str, seed: int,
           from_lock: Path | None) -> None:
    """Build llama.cpp for the target, quantize and measure the recipe's candidates there, and
    write a bundle (GGUF, haqa.lock.json, run.sh).

    \b
    Example:
      haqa deploy --target local --recipe smollm2-135m
      haqa deploy --from-lock dist/smollm2-135m@local --target my-other-box
    """
    if from_lock is not None:
        from haqa.reproduce import deploy_from_lock

        ctx = click.get_current_context()
        explicit = ctx.get_parameter_source("target_name") == click.core.ParameterSource.COMMANDLINE
        click.echo(str(deploy_from_lock(from_lock, target_name if explicit else None, out, jobs=jobs)))
        return
    if agent == "embedded":
        from haqa.agent.llm import EmbeddedBackend

        EmbeddedBackend.require_bindings()  # before anything is built, not after the toolchain
    from haqa.pipeline import deploy as run_deploy

    result = run_deploy(target_name, recipe_name, out, jobs=jobs, agent=agent, seed=seed)
    click.echo(str(result.bundle))
