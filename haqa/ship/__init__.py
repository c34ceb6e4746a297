"""`haqa ship`: put a bundle on a device, start it as a service, and check that it answers.

1. Verify the bundle here, and refuse a device it cannot run on (verify.py).
2. Upload every file SHA256SUMS lists into `<work dir>/bundles/<recipe>@<target>/` on the device, the
   folder haqa marks as its own (install.py).
3. Install and start it: a systemd user unit, a launchd agent, or a detached process (service.py).
4. Health check: wait for /health, then one chat completion through the openai client (health.py).

`--ollama` also creates the model in the device's Ollama, `--to-hf` uploads the bundle to a Hugging
Face repo (publish.py). Commands sent to the device are argv lists, and what it prints is checked
before it is used as a path (device.py).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from haqa import ui
from haqa.bundle.verify import SUMS
from haqa.errors import UserError
from haqa.runner.base import Runner
from haqa.ship.health import Health, health_check, http_status, url_of
from haqa.ship.install import install_dir, upload
from haqa.ship.publish import (
    OLLAMA_PORT,
    check_hub_repo,
    create_ollama_model,
    ollama_client,
    ollama_parameters,
    push_to_hub,
)
from haqa.ship.service import ProcessService, choose_service
from haqa.ship.verify import Bundle, device_problems, verify_bundle

__all__ = ["ShipResult", "ship"]

_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")
_OLLAMA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_WILDCARD = ("0.0.0.0", "::")


@dataclass
class ShipResult:
    bundle: Bundle
    device: str | None = None
    endpoint: str | None = None
    mode: str | None = None
    health: Health | None = None
    ollama_model: str | None = None
    hf_commit_url: str | None = None


def _check_options(*, target_name, host, ollama, ollama_host, ollama_name, hf_repo) -> None:
    """One message for options that do not go together or do not parse, before anything is read."""
    if not (target_name or hf_repo or ollama):
        raise UserError("say where to ship the bundle", hint="--target T (a device), --to-hf REPO, or both")
    if (ollama_host or ollama_name) and not ollama:
        raise UserError("--ollama-host and --ollama-name go with --ollama")
    if ollama and not (target_name or ollama_host):
        raise UserError("--ollama needs --target (the device's Ollama) or --ollama-host URL")
    if not _HOST.match(host):
        raise UserError(f"--host {host!r} is not an address",
                        hint="an IP address like 127.0.0.1 or 0.0.0.0, or a host name")
    if ollama_host is not None and not re.match(r"^https?://[^\s/]+/?$", ollama_host):
        raise UserError(f"--ollama-host {ollama_host!r} is not an http(s) URL", hint="like http://192.168.1.20:11434")
    if ollama_name is not None and not _OLLAMA_NAME.match(ollama_name):
        raise UserError(f"--ollama-name {ollama_name!r} is not an Ollama model name",
                        hint="letters, digits, '.', '_', '-', ':' and '/'")
    if hf_repo is not None:
        check_hub_repo(hf_repo)  # before anything is shipped


def ship(bundle_path: Path, *, target_name: str | None, host: str = "127.0.0.1", port: int = 8080,
         wait_s: float = 120, ollama: bool = False, ollama_host: str | None = None, ollama_name: str | None = None,
         hf_repo: str | None = None, hf_private: bool = False, allowed_signers: Path | None = None) -> ShipResult:
    _check_options(target_name=target_name, host=host, ollama=ollama, ollama_host=ollama_host,
                   ollama_name=ollama_name, hf_repo=hf_repo)
    target = None
    if target_name:
        from haqa.config import load_target

        target = load_target(target_name)
    bundle = verify_bundle(bundle_path, allowed_signers)
    ui.step(f"bundle {bundle.label}: {len(bundle.files)} files match {SUMS}"
            + (f", which {bundle.signed_by} signed (a key in {allowed_signers})" if bundle.signed_by else ""))
    params = ollama_parameters(bundle) if ollama else {}
    result = ShipResult(bundle=bundle)
    with contextlib.ExitStack() as stack:
        runner = ollama_api = None
        if target is not None:
            from haqa.runner import runner_for

            runner = runner_for(target)
            stack.callback(runner.close)
            result.device = target.name
        if ollama:  # asked for: check that it answers before anything is shipped
            if ollama_host:
                ollama_api = ollama_client(ollama_host, f"at {ollama_host}")
            else:
                addr = stack.enter_context(runner.forward(OLLAMA_PORT))
                ollama_api = ollama_client(url_of(*addr), f"on {target.name} (port {OLLAMA_PORT} there)")
        if runner is not None:
            _ship_to_device(runner, target, bundle, host, port, wait_s, result)
        if ollama_api is not None:
            name = ollama_name or f"{bundle.recipe}-haqa"
            digest = create_ollama_model(ollama_api, bundle, name)
            ui.step(f"Ollama model {name} created from {bundle.model_file} ({digest[:19]}...) with "
                    f"{', '.join(f'{k} {v}' for k, v in params.items())}")
            result.ollama_model = name
    if hf_repo:
        ui.step(f"uploading {bundle.label} to the Hugging Face repo {hf_repo}")
        result.hf_commit_url = push_to_hub(bundle, hf_repo, hf_private)
    return result


def _ship_to_device(runner: Runner, target, bundle: Bundle, host: str, port: int, wait_s: float,
                    result: ShipResult) -> None:
    from haqa.probe import remote_facts

    ui.step(f"reading the facts of {target.name}")
    facts, _ = remote_facts(runner)
    predicted = bundle.lock.metrics.memory.deployment_predicted.host_bytes
    built = bundle.lock.target.facts
    ui.note(f"device: {facts.get('os', '?')} {facts.get('arch', '?')}, {facts.get('ram_gib', '?')} GiB RAM (read from "
            f"the device); bundle: {built.os} {built.hardware.arch}, peak {predicted / 2**30:.2f} GiB (predicted) "
            f"+ {target.limits.memory_headroom_gib:g} GiB headroom")
    if problems := device_problems(bundle, facts, target.limits.memory_headroom_gib):
        raise UserError(f"{bundle.label} cannot run on {target.name}: " + "; ".join(problems),
                        hint="deploy the recipe for this device (`haqa deploy --target "
                             f"{target.name} --recipe {bundle.recipe}`) and ship that bundle")
    dest = install_dir(runner, bundle)
    sent, there = upload(runner, bundle, dest)
    ui.step(f"uploaded {sent} file(s), {there} already on the device (same sha256), into {dest}")

    service = choose_service(runner, facts, bundle, dest, host, port)
    if service.stop():
        ui.note(f"stopped the running server of {bundle.label} ({service.mode})")
    connect_host = "127.0.0.1" if host in _WILDCARD else host
    with runner.forward(port, connect_host) as addr:
        base = url_of(*addr)
        if (status := http_status(f"{base}/health", timeout=3)) is not None:
            raise UserError(f"port {port} on {target.name} is already in use (something answered HTTP {status})",
                            hint="stop that server, or choose another port with --port")
        service.start()
        ui.step(f"started llama-server as a {service.mode} on {host}:{port} of {target.name}")
        if service.mode == ProcessService.mode:
            ui.note("no user systemd on the device (`systemctl --user` does not answer), so it runs as a "
                    "detached process with a pid file")
        if host not in ("127.0.0.1", "localhost", "::1"):
            ui.note(f"llama-server listens on {host}:{port}: other machines can reach it, without authentication")
        health = health_check(service, base, bundle.recipe, wait_s)
    words = " ".join(health.reply.split()[:12])
    ui.step(f"health check passed: {health.tokens} tokens in {health.seconds:.2f} s = {health.tokens_per_s:.1f} tok/s")
    ui.note("tok/s seen by the client: one chat completion through the openai client, wall time including prompt "
            "processing and HTTP; not a benchmark (the lock has the measured speeds)")
    ui.note(f"reply: {words}{'...' if len(health.reply.split()) > 12 else ''}")
    ui.note(f"{service.mode}: {service.describe()}")
    reach = (target.connect.host or "127.0.0.1") if host in _WILDCARD else host
    result.endpoint, result.mode, result.health = f"{url_of(reach, port)}/v1", service.mode, health
