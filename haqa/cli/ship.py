"""`haqa ship BUNDLE --target T`: upload a bundle, start it as a service, check it answers."""

from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--target", "-t", "target_name", default=None, help="target name or .toml path of the device")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address llama-server binds on the device; anything but loopback exposes it to the network")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="port on the device")
@click.option("--wait", "wait_s", type=click.IntRange(1), default=120, show_default=True,
              help="seconds to wait for llama-server to answer /health")
@click.option("--ollama", is_flag=True, help="also create the model in the device's Ollama (its port 11434)")
@click.option("--ollama-host", default=None, metavar="URL", help="with --ollama: this Ollama instead of the device's")
@click.option("--ollama-name", default=None, help="with --ollama: the model's name [default: <recipe>-haqa]")
@click.option("--to-hf", "hf_repo", default=None, metavar="REPO",
              help="also upload the bundle to this Hugging Face repo (token: HF_TOKEN or `hf auth login`; "
                   "HF_ENDPOINT for another Hub; HF_HUB_DISABLE_XET=1 for plain LFS uploads)")
@click.option("--private", "hf_private", is_flag=True, help="with --to-hf: create the repo private")
@click.option("--allowed-signers", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="FILE",
              help="refuse the bundle unless SHA256SUMS.sig verifies (`ssh-keygen -Y verify`, namespace haqa-bundle) "
                   "with a key in this OpenSSH allowed-signers file")
def ship(bundle: Path, target_name, host, port, wait_s, ollama, ollama_host, ollama_name, hf_repo, hf_private,
         allowed_signers) -> None:
    """Ship a bundle: check it against SHA256SUMS and the device (OS, CPU, memory), upload what the
    device lacks (by sha256), start llama-server as a service (a systemd user unit, a launchd agent,
    or a detached process where neither runs), and health-check it with one chat completion.

    SHA256SUMS catches damage, not tampering: sign it (in the bundle folder,
    `ssh-keygen -Y sign -f KEY -n haqa-bundle SHA256SUMS`) and ship with
    --allowed-signers to know who made the bundle.

    \b
    Examples:
      haqa ship dist/smollm2-135m@my-pi5 --target my-pi5
      haqa ship dist/smollm2-135m@my-pi5 --target my-pi5 --allowed-signers ~/.config/haqa/allowed_signers
      haqa ship dist/smollm2-135m@my-pi5 --target my-pi5 --ollama
      haqa ship dist/smollm2-135m@local --to-hf me/smollm2-135m-haqa
    """
    from haqa.ship import ship as run_ship

    r = run_ship(bundle, target_name=target_name, host=host, port=port, wait_s=wait_s, ollama=ollama,
                 ollama_host=ollama_host, ollama_name=ollama_name, hf_repo=hf_repo, hf_private=hf_private,
                 allowed_signers=allowed_signers)
    if r.health:
        click.echo(f"{r.bundle.label} on {r.device}: {r.endpoint} ({r.mode}; model '{r.bundle.recipe}'; "
                   f"{r.health.tokens_per_s:.1f} tok/s client-side, one request)")
    if r.ollama_model:
        click.echo(f"ollama: {r.ollama_model}")
    if r.hf_commit_url:
        click.echo(f"hugging face: {r.hf_commit_url}")
