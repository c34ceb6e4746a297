"""`haqa synth`: a random-weight GGUF with a real architecture's shapes."""

from pathlib import Path

import click


@click.command()
@click.option("--like", required=True, help="a preset (llama-3.2-1b, llama-3.2-3b, llama-3.1-8b, qwen2.5-1.5b) "
              "or a Hugging Face config.json")
@click.option("--quant", default="Q8_0", show_default=True, help="GGUF type of the output")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--layers", type=click.IntRange(1), default=None,
              help="fewer layers than the real model (for quick tests)")
@click.option("--seed", type=int, default=0, show_default=True)
def synth(like: str, quant: str, out: Path, layers: int | None, seed: int) -> None:
    """Write a synthetic model: real shapes, random weights. Speed and memory measured on it are
    labelled synthetic; quality is never reported for it.

    \b
    Example:
      haqa synth --like llama-3.1-8b --quant Q4_K_M --out /tmp/llama8b-q4km.gguf
    """
    from haqa.model.synth import synthesize

    path = synthesize(like, quant, out, layers=layers, seed=seed)
    click.echo(str(path))
