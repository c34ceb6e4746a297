"""What the fault tests (tests/faults/) drive and watch: a project of real `haqa` commands run in
subprocesses (in the foreground, or in the background to press Ctrl-C), the device's processes as
this machine's /proc shows them, a watcher that acts when a condition holds (cut the connection,
freeze a process group, press Ctrl-C), and a small tmpfs for the device's disk."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from haqa.runner.ssh import SshRunner
from tests.support.sshd import connect_for

HAQA = [sys.executable, "-m", "haqa"]
MIB = 2**20

# A llama-shaped model small enough to move and measure in seconds on 2 cores.
SHAPE = {"model_type": "llama", "num_hidden_layers": 8, "hidden_size": 1024, "intermediate_size": 4096,
         "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 8192, "max_position_embeddings": 4096,
         "tie_word_embeddings": True}

RECIPE = """\
name = "{name}"
[source]
synthetic = "{shape}"
[search]
quants = {quants}
max_trials = {trials}
patience = 10
compare_rounds = 0
max_repetitions = 3
[quality]
max_kld = 0.1
[workload]
min_context = 256
prompt_tokens = 16
gen_tokens = 4
"""


class FaultProject:
    """The fault tests' project folder: targets probed from the loopback device, recipes of the synthetic
    model, and a haqa home that shares only the llama.cpp source with the user's cache."""

    def __init__(self, root: Path, dev, device_home: Path):
        self.root, self.dev, self.device_home = root, dev, device_home
        self.home = root / "haqa-home"
        self.model_sha = ""  # the synthetic model's sha256, once the fixture has made it

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([*HAQA, *args], cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HAQA_HOME": str(self.home)})

    def start(self, *args: str) -> Background:
        return Background(self, args)

    def recipe(self, name: str, quants: list[str], trials: int) -> str:
        (self.root / "recipes" / f"{name}.toml").write_text(
            RECIPE.format(name=name, shape=self.root / "shape.json", quants=json.dumps(quants), trials=trials))
        return name

    def target(self, name: str, *, workdir: Path | None = None, reconnects: int = 3, server=None) -> str:
        """A copy of the probed target under another name: another work folder, reconnect budget or sshd."""
        text = (self.root / "targets" / "faulty.toml").read_text()
        text = re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', text)
        text = re.sub(r"(?m)^reconnects = \d+$", f"reconnects = {reconnects}", text)
        if workdir is not None:
            text = re.sub(r'(?m)^workdir = ".*"$', f'workdir = "{workdir}"', text)
        if server is not None:
            text = re.sub(r"(?m)^port = \d+$", f"port = {server.port}", text)
            text = re.sub(r'(?m)^key = ".*"$', f'key = "{server.client_key}"', text)
            text = re.sub(r'(?m)^known_hosts = ".*"$', f'known_hosts = "{server.known_hosts}"', text)
        (self.root / "targets" / f"{name}.toml").write_text(text)
        return name

    def store(self, recipe: str, target: str) -> list[dict]:
        path = self.home / "trials" / f"{recipe}@{target}.sqlite"
        if not path.exists():
            return []
        db = sqlite3.connect(path)
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT id, key, quant, status, cause, error FROM trials ORDER BY id")]
        finally:
            db.close()

    def synthetic_size(self) -> int:
        return next((self.home / "synthetic").glob("shape-*.gguf")).stat().st_size

    def forget_upload(self, workdir: Path) -> None:
        """Remove the model from the device, so that the next deploy uploads it."""
        for f in (workdir / "models" / "src").glob(f"{self.model_sha[:16]}.gguf*"):
            f.unlink()


class Background:
    """`haqa ...` running in its own process group, as a terminal would run it (Ctrl-C = SIGINT to it)."""

    def __init__(self, project: FaultProject, args):
        self.err_path = project.root / f"stderr-{time.monotonic_ns()}.txt"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen([*HAQA, *args], cwd=project.root, stdout=subprocess.DEVNULL, stderr=self.err,
                                     env={**os.environ, "HAQA_HOME": str(project.home)}, start_new_session=True)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 900) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        self.err.close()
        return code, self.err_path.read_text()


def procs(*needles: str, program: str | None = None) -> list[tuple[int, int, str]]:
    """(pid, pgid, command line) of this machine's processes whose command line has every needle (and
    whose program is `program`, when given: haqa's wrappers carry the same words in theirs). The device
    is this machine, so the tests' watchers read /proc directly (quick, and unaffected by the
    connections they cut); the final checks go through SSH (device_procs)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            args = " ".join(argv).strip()
            if args and all(n in args for n in needles) and (program is None or Path(argv[0]).name == program):
                found.append((int(d.name), os.getpgid(int(d.name)), args))
        except (OSError, ProcessLookupError):
            continue
    return sorted(found)


def device_procs(dev, device_home: Path, *needles: str) -> list[str]:
    """The device's processes whose command line has every needle, listed with ps over SSH."""
    runner = SshRunner(connect_for(dev, device_home), label="faults-check")
    try:
        out = runner.run(["ps", "-eo", "pid=,args="], timeout=60).stdout
    finally:
        runner.close()
    return [line for line in out.splitlines() if all(n in line for n in needles) and "ps -eo" not in line]


def group_alive(pgid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 0


def wait_for(what: str, cond: Callable[[], object], timeout: float = 300, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Watcher(threading.Thread):
    """Runs steps in order beside a running haqa: each waits for its condition, then acts (cuts the
    connection, stops a process, presses Ctrl-C...). What fired, and any error, is kept for the test."""

    def __init__(self, steps: list[tuple[str, Callable[[], object], Callable[[object], None]]], timeout: float = 600):
        super().__init__(daemon=True)
        self.steps, self.timeout, self.fired, self.error = steps, timeout, [], None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            for name, cond, act in self.steps:
                while not self.stop.is_set():
                    if time.monotonic() > deadline:
                        return
                    if value := cond():
                        act(value)
                        self.fired.append(name)
                        break
                    time.sleep(0.03)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def finish(self) -> list[str]:
        self.stop.set()
        self.join(timeout=60)
        if self.error:
            raise self.error
        return self.fired


def part_at_least(folder: Path, fraction: float, total: Callable[[], int]):
    """A `.part` upload in folder that has reached fraction of the file."""
    def cond():
        for p in folder.glob("*.gguf.part") if folder.exists() else []:
            try:
                if p.stat().st_size >= fraction * total():
                    return p
            except (OSError, StopIteration):
                pass
        return None
    return cond


def trial_bench(workdir: Path, quant_path: str = "/models/", when: Callable[[], bool] = lambda: True):
    """The llama-bench process of a trial (prefill of the workload's 16 tokens) on the device, not the
    drift anchor's, once `when()` holds."""
    return lambda: when() and next(iter(procs(f"{workdir}/toolchains/", quant_path, "-p 16 -n 0",
                                              program="llama-bench")), None)


def assert_store_consistent(rows: list[dict]) -> None:
    """Every row finished (there is no 'running' state), and at most one live row per trial key."""
    assert all(r["status"] in ("ok", "failed", "discarded") for r in rows), rows
    live = [r["key"] for r in rows if r["status"] != "discarded"]
    assert len(live) == len(set(live)), f"a trial is in the store twice: {rows}"


FROZEN: list[int] = []  # process groups a test stopped: killed after it, whatever haqa did


def stop_group(pgid: int) -> None:
    FROZEN.append(pgid)
    os.killpg(pgid, signal.SIGSTOP)




class SmallDisk:
    """A tmpfs of `mib` MiB mounted at `path`: the device's work folder on a small disk."""

    def __init__(self, path: Path, mib: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs for the device's disk (needs root): {r.stderr.strip()}")

    def fill(self) -> Path:
        """Take every free byte, as another program filling the disk would."""
        filler = self.path / "filler"
        with open(filler, "ab") as f:
            try:
                while True:
                    f.write(b"\0" * MIB)
                    f.flush()
            except OSError:
                pass
        return filler

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


