"""Service files (haqa/bundle/services.py): one renderer for the unit and agent a bundle carries and the
ones `haqa ship` installs. They quote what systemd and launchd read, refuse values that would add
lines, and the bundle's own copies run the bundle in the folder where `haqa ship` installs it.

The bundle's own copies are run as systemd and launchd would run them, by this machine's shell: its
launchd agent's argv with HOME set (launchd itself cannot run here), its unit's ExecStart with systemd's
%h put in (systemd-analyze checks the unit; no user systemd runs here to start it)."""

from __future__ import annotations

import plistlib
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import pytest

from haqa.bundle.services import BUNDLES, InstallFolder, launchd_plist, systemd_unit
from haqa.config.schema import Connect
from haqa.errors import UserError
from haqa.runtime import RuntimeConfig
from tests.support.bundles import fake_bundle
from tests.support.sshd import connect_for

LABEL = "m@t"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_unit_quotes_the_install_path_as_systemd_reads_it(tmp_path):
    """systemd itself (systemd-analyze verify) parses the unit written for an install path with a space,
    a '$' and a '%' in it; no user systemd runs here to start it."""
    folder = tmp_path / "we ird$dir%h"
    folder.mkdir()
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    unit = tmp_path / "haqa-test.service"
    unit.write_text(systemd_unit("m", LABEL, InstallFolder(PurePosixPath(folder)), "127.0.0.1", 8080))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f'ExecStart="{tmp_path}/we ird$dir%%h/run.sh" "--host" "127.0.0.1" "--port" "8080"' in unit.read_text()


def test_the_launchd_agent_runs_run_sh_with_host_and_port(tmp_path):
    command = [str(tmp_path / "a b" / "run.sh"), "--host", "127.0.0.1", "--port", "8080"]
    agent = plistlib.loads(launchd_plist("x", LABEL, InstallFolder(PurePosixPath(tmp_path / "a b")), "127.0.0.1", 8080))
    assert agent["ProgramArguments"] == command and agent["Label"] == "dev.haqa.x"
    assert agent["StandardErrorPath"] == str(tmp_path / "a b" / "server.log") and agent["RunAtLoad"] is True


def test_service_files_refuse_values_with_newlines_or_control_characters(tmp_path):
    from haqa.bundle import services

    bad = InstallFolder(PurePosixPath(f"{tmp_path}/bundles/x\nExecStartPre=/bin/evil"))
    good, home = InstallFolder(PurePosixPath("/x")), InstallFolder.default(LABEL)
    refusals = [lambda: systemd_unit("m", LABEL, bad), lambda: systemd_unit("m", "a\rb", good),
                lambda: systemd_unit("m", LABEL, good, host="127.0.0.1\nExecStartPre=/bin/evil"),
                lambda: launchd_plist("m", LABEL, bad), lambda: launchd_plist("x\x1b[2J", LABEL, good),
                lambda: launchd_plist("m", LABEL, good, host="127.0.0.1\x00"),
                lambda: systemd_unit("m", "smol@local\nExecStartPre=/bin/evil", home),
                lambda: launchd_plist("m", "smol@local\x00", home),
                lambda: services.modelfile("m.gguf\nSYSTEM evil", RuntimeConfig(threads=2, ctx_size=512), LABEL)]
    for render in refusals:
        with pytest.raises(UserError, match="has a newline or another control character"):
            render()


@pytest.fixture
def installed(tmp_path) -> tuple[Path, Path]:
    """(home, bundle): a bundle (whose llama-server prints its arguments) copied where `haqa ship`
    installs it for a target with the default work dir: ~/.cache/haqa/bundles/<label>."""
    written = fake_bundle(tmp_path / "dist" / LABEL, tmp_path, config=RuntimeConfig(threads=2, ctx_size=512),
                          recipe="m")
    home = tmp_path / "home"
    bundle = home / ".cache" / "haqa" / BUNDLES / LABEL
    shutil.copytree(written, bundle)
    return home, bundle


def test_the_bundles_own_launchd_agent_runs_the_bundle_where_haqa_ship_installs_it(installed):
    home, bundle = installed
    agent = plistlib.loads((bundle / "dev.haqa.m.plist").read_bytes())
    subprocess.run(agent["ProgramArguments"], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True, timeout=30)
    argv = (bundle / "server.log").read_text().splitlines()
    assert argv[argv.index("--model") + 1] == f"{bundle}/m-Q4_0.gguf"
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8080"


def test_the_bundles_own_systemd_unit_runs_the_bundle_where_haqa_ship_installs_it(installed):
    home, bundle = installed
    unit = (bundle / "haqa-m.service").read_text()
    assert "copy the bundle" in unit and "~/.cache/haqa/bundles/m@t" in unit  # by hand: where to put it
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.startswith('ExecStart="%h/')
    argv = shlex.split(exec_start.removeprefix("ExecStart=").replace("%h", str(home)))  # as systemd expands it
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()
    assert out[out.index("--model") + 1] == f"{bundle}/m-Q4_0.gguf" and out[out.index("--port") + 1] == "8080"
    if shutil.which("systemd-analyze"):
        expanded = bundle.parent / "haqa-m.service"
        expanded.write_text(unit.replace('"%h/', f'"{home}/'))
        proc = subprocess.run(["systemd-analyze", "verify", str(expanded)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_the_default_install_folder_is_where_haqa_ship_installs_on_a_default_target(sshd, tmp_path):
    """An SSH target that keeps the default connect.workdir: the install folder ship computes on the
    device is the one the bundle's own unit and agent name under the user's home."""
    from haqa.runner.ssh import SshRunner
    from haqa.ship.install import install_dir

    runner = SshRunner(connect_for(sshd, tmp_path, workdir=Connect().workdir), label="loop")
    try:
        home = runner.run(["sh", "-c", 'printf "%s" "$HOME"'], timeout=30).stdout.strip()
        bundle = SimpleNamespace(label=LABEL)  # install_dir reads the bundle's label only
        assert str(install_dir(runner, bundle)) == f"{home}/{InstallFolder.default(LABEL).path}"
    finally:
        runner.close()
