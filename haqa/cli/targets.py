"""`haqa targets list|show|validate`."""

import datetime as dt
import re
import tempfile
from pathlib import Path

import click

from haqa.cli._catalog import make_group
from haqa.config import load_target
from haqa.config.schema import check_name
from haqa.errors import UserError
from haqa.fsutil import atomic_write_text


def _row(t):
    gpu = t.hardware.gpu
    return [t.name, t.hardware.arch, str(t.hardware.cores), f"{t.hardware.ram_gib:g}",
            gpu.kind if gpu.kind != "none" else "-", t.connect.kind, t.description]


targets = make_group("targets", load_target, _row,
                     ["name", "arch", "cores", "RAM GiB", "GPU", "connect", "description"])


@targets.command("probe")
@click.argument("url")
@click.option("--name", required=True, help="name of the new target (the file is targets/NAME.toml)")
@click.option("--key", type=click.Path(dir_okay=False), default=None,
              help="private key file (default: agent, ~/.ssh/id_*)")
@click.option("--known-hosts", type=click.Path(dir_okay=False), default=None,
              help="known_hosts file (default ~/.ssh/known_hosts)")
@click.option("--trust-on-first-use", is_flag=True, help="accept and remember the device's key if it is unknown")
@click.option("--jump", default=None, help="jump host, user@host:port")
@click.option("--workdir", default=None, help="haqa's folder on the device (default ~/.cache/haqa)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("targets"),
              show_default=True, help="folder to write the target file into")
@click.option("--force", is_flag=True, help="overwrite an existing file")
def probe(url, name, key, known_hosts, trust_on_first_use, jump, workdir, out_dir, force):
    """Read a device over SSH and write a target file for it.

    \b
    Example:
      haqa targets probe ssh://pi@raspberrypi.local --name my-pi5
      make deploy TARGET=my-pi5
    """
    from haqa.config.render import target_toml
    from haqa.config.schema import Connect
    from haqa.probe import remote_facts
    from haqa.runner.ssh import SshRunner

    m = re.fullmatch(r"ssh://(?:([A-Za-z0-9._-]+)@)?([A-Za-z0-9._%-]+|\[[0-9A-Fa-f:]+\])(?::(\d+))?/?", url)
    if not m:
        raise UserError(f"'{url}' is not an ssh URL", hint="write it as ssh://user@host[:port]")
    try:
        check_name(name)
    except ValueError as e:
        raise UserError(f"--name: {e}", hint="for example --name my-pi5") from None
    user, host, port = m.group(1), m.group(2).strip("[]"), int(m.group(3) or 22)
    out_file = out_dir / f"{name}.toml"
    if out_file.exists() and not force:
        raise UserError(f"{out_file} exists", hint="choose another --name, or pass --force to overwrite it")
    connect = {"kind": "ssh", "host": host, "user": user, "port": port, "key": key, "known_hosts": known_hosts,
               "trust_on_first_use": trust_on_first_use or None, "jump": jump, "workdir": workdir}
    connect = {k: v for k, v in connect.items() if v is not None}
    try:
        conn = Connect.model_validate(connect)
    except ValueError as e:
        raise UserError(f"bad connection settings: {e}") from None
    runner = SshRunner(conn, label=name)
    try:
        facts, info = remote_facts(runner)
    finally:
        runner.close()
    os_name = facts.pop("os", "linux")
    missing = [k for k in ("arch", "cores", "ram_gib") if k not in facts]
    if missing:
        raise UserError(f"could not read {', '.join(missing)} from {host}", hint="is it Linux or macOS?")
    tools = ", ".join(f"{k} {'missing' if v == 'missing' else 'ok'}" for k, v in info.get("tools", {}).items())
    text = target_toml(
        name=name, description=f"{facts.get('cpu_model') or facts['arch']} ({info.get('hostname') or host}), probed",
        os=os_name, hardware=facts, connect=connect,
        header=[f"Written by `haqa targets probe {url}` on {dt.date.today().isoformat()}.",
                "Hardware facts were read from the device (/proc/cpuinfo, /proc/meminfo, nvidia-smi,",
                "/etc/nv_tegra_release, or sysctl on macOS). Memory bandwidth is not probed: add",
                "[hardware].mem_bandwidth_gbs from the device's spec sheet, with its source.",
                f"Build tools seen: {tools or 'unknown'}."],
        limits={"memory_headroom_gib": 1.0},
    )
    _check_probed(text, name, host)
    atomic_write_text(out_file, text, hidden=True)  # with --force, the old file goes only for one that validated
    click.echo(f"wrote {out_file}")
    click.echo(f"next: haqa doctor --target {name}  and  make deploy TARGET={name}")


def _check_probed(text: str, name: str, host: str) -> None:
    """The target file probed from a device, validated before it goes anywhere near the catalog."""
    with tempfile.TemporaryDirectory(prefix="haqa-probe-") as tmp:
        trial = Path(tmp) / f"{name}.toml"
        trial.write_text(text)
        try:
            load_target(str(trial))
        except UserError as e:
            detail = e.message.split("\n", 1)[-1]
            raise UserError(f"the facts read from {host} do not make a valid target, so nothing was written:\n"
                            f"{detail}", hint="check what the device reports (`haqa doctor` with a target written "
                                              "by hand), or write the target file yourself") from None
