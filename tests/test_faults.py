"""Faults a tuning run on a real device must survive, each made real against the loopback OpenSSH
device (tests/support/sshd.py): connections cut while a file uploads, while llama.cpp builds and while
llama-bench runs; sshd restarting in the middle of a run; the connection lost for good; a full disk
(a small tmpfs as the device's work folder); a configuration that runs out of memory (a memory-limited
cgroup holding the device's sshd and everything it starts); a benchmark that hangs (a SIGSTOP'd
llama-bench); and Ctrl-C at each stage.

Every test runs real haqa commands (`python -m haqa ...` in a subprocess, or the Python API where a
constant must be made smaller) and checks the trial store (SQLite), the device's processes (over SSH)
and its files. The device is this machine behind its own sshd; it shares the session's device folder
(tests/conftest.py: device_home) with tests/test_ssh_device.py, so the remote llama.cpp build made
(and interrupted) here is the one that module then finds in its cache. That build compiles for real
(CCACHE_RECACHE: whatever ccache holds) until its faults have landed; its resumed run takes the rest
from ccache (objects of this machine's own build), so a session compiles llama.cpp about once. The
model is synthetic (random weights in an 8-layer shape, 132 MiB as Q8_0): big enough that an upload
takes a while and that a repacked Q4_0 needs far more memory than a memory-mapped Q8_0, with no
quality measurement to wait for.
"""

from __future__ import annotations

import faulthandler
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
from pathlib import Path, PurePosixPath

import pytest

from haqa.config import load_target
from haqa.errors import ConnectionLost
from haqa.paths import cache_home
from haqa.runner.base import DiskFull
from haqa.runner.ssh import SshRunner
from haqa.toolchain import ensure_toolchain
from tests.conftest import connect_for, device_env, shared_home
from tests.support.sshd import SSHD, MemoryLimit, start_server

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
[quality]
max_kld = 0.1
[workload]
min_context = 256
prompt_tokens = 16
gen_tokens = 4
"""


# -- the device and the project ------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """An sshd of this module's own: these tests cut, stop and restart it."""
    if not Path(SSHD).exists():
        if os.environ.get("CI"):
            pytest.fail("sshd is missing: .ci/run installs openssh-server before the tests")
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    directory = tmp_path_factory.mktemp("faults-sshd")
    server = start_server(directory, env=device_env(directory))
    yield server
    server.stop()


class Project:
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

    def __init__(self, project: Project, args):
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


@pytest.fixture(scope="module")
def project(tmp_path_factory, dev, device_home) -> Project:
    """targets/faulty.toml written by `haqa targets probe` (so the memory model knows this CPU's
    features), a haqa home that shares the llama.cpp source with the user's cache, and the shape."""
    root = tmp_path_factory.mktemp("faults-project")
    (root / "recipes").mkdir()
    (root / "shape.json").write_text(json.dumps(SHAPE))
    p = Project(root, dev, device_home)
    shared_home(p.home, cache_home(), ("sources",))
    proc = p.run("targets", "probe", f"ssh://{dev.user}@127.0.0.1:{dev.port}", "--name", "faulty",
                 "--key", str(dev.client_key), "--known-hosts", str(dev.known_hosts), "--workdir", str(device_home))
    assert proc.returncode == 0, proc.stderr
    text = (root / "targets" / "faulty.toml").read_text()
    if not re.search(r"(?m)^reconnects = ", text):
        text = text.replace("[connect]\n", "[connect]\nreconnects = 3\nconnect_timeout_s = 5\n", 1)
    (root / "targets" / "faulty.toml").write_text(text)
    made = subprocess.run([sys.executable, "-c", "import sys; from haqa.model.synth import synthetic_q8_0; "
                           "from haqa.hashing import cached_sha256; "
                           "p = synthetic_q8_0(sys.argv[1]); print(cached_sha256(p))",
                           str(root / "shape.json")],
                          capture_output=True, text=True, env={**os.environ, "HAQA_HOME": str(p.home)})
    assert made.returncode == 0, made.stderr
    p.model_sha = made.stdout.split()[-1]
    return p


@pytest.fixture(scope="module")
def toolchain(project):
    """The device's llama.cpp build (made by the first test, with its faults; built here otherwise)."""
    os.environ["HAQA_HOME"], old = str(project.home), os.environ.get("HAQA_HOME")
    try:
        target = load_target(str(project.root / "targets" / "faulty.toml"))
        runner = SshRunner(target.connect, label="faulty")
        try:
            return ensure_toolchain(runner, target)
        finally:
            runner.close()
    finally:
        if old is None:
            os.environ.pop("HAQA_HOME")
        else:
            os.environ["HAQA_HOME"] = old


# -- looking at the device -----------------------------------------------------------------------

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


@pytest.fixture(autouse=True)
def _no_frozen_leftovers():
    yield
    while FROZEN:
        try:
            os.killpg(FROZEN.pop(), signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- the runner alone (fast) ---------------------------------------------------------------------

def test_command_cut_off_by_a_drop_is_stopped_on_the_device_and_run_again(dev, device_home, tmp_path):
    """A command is running when the connection drops: the runner reconnects, stops what the cut-off
    command left running (its process group, found by the wrapper's pid) and runs it again, once."""
    runner = SshRunner(connect_for(dev, device_home), label="faults-rerun")
    marker = tmp_path / "first-run"
    sleeper = "sleep 373.5"
    script = f'if [ -e {marker} ]; then echo again; exit 0; fi; touch {marker}; echo started; {sleeper}; echo finished'
    log = tmp_path / "cmd.log"

    def on_line(line: str) -> None:
        if line == "started":
            dev.cut_connections()

    try:
        r = runner.run(["sh", "-c", script], timeout=120, log_path=log, on_line=on_line)
        assert r.ok and r.stdout == "again\n", r
        assert not procs(sleeper, str(marker)), "the cut-off command's process group was left running"
        assert "the connection dropped" in log.read_text()
        assert not (runner._local_root / "stale-process-groups.json").exists()
    finally:
        runner.close()


def test_death_by_signal_is_reported_as_a_negative_code(dev, device_home):
    """sshd reports a death by signal as exit-signal, which paramiko drops; haqa's wrapper reports it, so
    an OOM kill (SIGKILL) over SSH reads -9, as it does on this machine."""
    runner = SshRunner(connect_for(dev, device_home), label="faults-signal")
    try:
        assert runner.run(["sh", "-c", "kill -KILL $$"]).returncode == -9
        assert runner.run(["sh", "-c", "exit 3"]).returncode == 3
    finally:
        runner.close()


def test_device_gone_for_good_raises_connection_lost_and_the_orphan_is_stopped_by_the_next_connection(
        tmp_path_factory, device_home, tmp_path):
    """sshd goes away while a command runs and does not come back within the reconnect budget:
    ConnectionLost (a clear error, exit 2 from the CLI). The command's process group is remembered on
    this machine, and the next runner for that device (a later haqa run) stops it on connecting."""
    server = start_server(tmp_path_factory.mktemp("gone-sshd"))
    local = tmp_path / "local"
    sleeper = "sleep 374.5"
    try:
        runner = SshRunner(connect_for(server, device_home, reconnects=1), label="faults-gone", local_root=local)

        def on_line(line: str) -> None:
            if line == "started":
                server.stop()

        with pytest.raises(ConnectionLost, match="cannot reach"):
            runner.run(["sh", "-c", f"echo started; {sleeper}"], timeout=120, on_line=on_line)
        runner.close()
        assert procs(sleeper), "expected the command to be orphaned while the device is unreachable"
        assert (local / "stale-process-groups.json").exists()
        server.start()
        later = SshRunner(connect_for(server, device_home), label="faults-gone", local_root=local)
        assert later.run(["true"]).ok
        later.close()
        wait_for("the orphan to be stopped", lambda: not procs(sleeper), timeout=20)
        assert not (local / "stale-process-groups.json").exists()
    finally:
        server.stop()
        for pid, _, _ in procs(sleeper):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_during_an_upload_stops_it_at_once_and_the_next_upload_resumes(dev, device_home, tmp_path):
    """A real SIGINT to this process while SFTP writes: it is taken between two blocks (a
    KeyboardInterrupt inside paramiko can cut an SFTP packet in half, and closing the file then waits
    for an answer that never comes: without the fix this hung 8 times in 12), the partial upload stays
    on the device, and the next upload sends only the rest."""
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(24 * MIB))
    remote = PurePosixPath(device_home) / "models" / "ctrl-c" / "blob.bin"
    runner = SshRunner(connect_for(dev, device_home), label="faults-upload-ctrl-c")

    started = threading.Event()

    def press() -> None:  # from another thread: the signal lands wherever the upload happens to be
        started.wait(60)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    def hook(done: int) -> None:
        if done > 6 * MIB:
            runner.transfer.on_chunk = None
            started.set()

    runner.transfer.on_chunk = hook
    threading.Thread(target=press, daemon=True).start()
    faulthandler.dump_traceback_later(120, exit=True)  # a regression hangs for ever: end it, with the stacks
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.put(src, remote)
        faulthandler.cancel_dump_traceback_later()
        part = Path(f"{remote}.part")
        assert part.exists() and part.stat().st_size < src.stat().st_size and not Path(remote).exists()
        sent = runner.transfer.bytes_sent
        assert runner.put(src, remote) is True
        assert runner.transfer.bytes_sent - sent <= src.stat().st_size - 6 * MIB, "the upload started over"
        assert Path(remote).read_bytes() == src.read_bytes()
    finally:
        faulthandler.cancel_dump_traceback_later()
        runner.close()


# -- the build -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_build_survives_a_dropped_connection_and_ctrl_c_then_resumes(project, dev, device_home):
    """`haqa toolchain build` over SSH: the connection is cut mid-compile (with the build's process
    group frozen, so only haqa can end it), haqa reconnects, stops the orphaned make and compilers and
    runs the build again; a Ctrl-C later stops everything on the device; the next build resumes from
    the objects already compiled and finishes."""
    if list(device_home.glob("toolchains/*/toolchain.json")):
        pytest.skip("the device's toolchain was already built in this session (by another test)")
    logs = project.home / "devices" / "faulty" / "toolchains"

    def progress() -> int:
        found = [int(m) for log in logs.glob("*/build.log") for m in re.findall(r"(?m)^\[\s*(\d+)%\]", log.read_text())]
        return max(found, default=0)

    frozen: dict[str, int] = {}

    def cut(match) -> None:
        pid, pgid, _ = match
        frozen["pgid"] = pgid
        stop_group(pgid)  # a build that cannot end by itself: only haqa's clean-up can stop it
        dev.cut_connections()

    # A real compile whatever the compiler cache holds (what it compiles is stored), so the faults land
    # mid-build; the resumed build below takes the rest from the cache.
    dev.set_env({**dev.env, "CCACHE_RECACHE": "1"})
    run = project.start("toolchain", "build", "--target", "faulty")
    watcher = Watcher([
        ("cut", lambda: progress() >= 10 and next(iter(procs(str(device_home), "cmake --build")), None), cut),
        ("ctrl-c", lambda: frozen and not group_alive(frozen["pgid"]) and progress() >= 35 and
         procs(str(device_home), "cmake --build"), lambda _: run.ctrl_c()),
    ], timeout=1500)
    watcher.start()
    code, err = run.wait(timeout=1800)
    dev.set_env({k: v for k, v in dev.env.items() if k != "CCACHE_RECACHE"})
    assert watcher.finish() == ["cut", "ctrl-c"], err
    assert code == 130, err
    assert "lost while running cmake" in err and "run it again" in err, err
    assert "left by the dropped connection" in err, err
    assert not group_alive(frozen["pgid"]), "the orphaned build was not stopped"
    time.sleep(3)  # the group's TERM, then KILL after 2 s
    assert not device_procs(dev, device_home, str(device_home / "toolchains")), "Ctrl-C left the build running"
    assert not list(device_home.glob("toolchains/*/toolchain.json")), "an interrupted build was marked complete"
    before = set(re.findall(r"Building \w+ object (\S+)", next(logs.glob("*/build.log")).read_text()))

    again = project.run("toolchain", "build", "--target", "faulty", timeout=1800)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("built:")
    after = set(re.findall(r"Building \w+ object (\S+)", next(logs.glob("*/build.log")).read_text()))
    assert before and after and len(before & after) <= 8, (
        f"the build started over instead of resuming: {len(before & after)} of {len(before)} objects compiled again")
    assert project.run("toolchain", "build", "--target", "faulty").stdout.startswith("cached:")


# -- connections ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_deploy_survives_drops_and_an_sshd_restart_and_records_a_connection_lost_for_good(project, dev, device_home,
                                                                                         toolchain):
    """One deploy meets: a cut during the model's upload (resumed), sshd restarting while the drift
    anchor runs (reconnected, run again), a cut while a trial's llama-bench is frozen (the orphan is
    stopped on reconnecting, the bench run again, the trial completes), then sshd going away for good
    during the next trial (recorded failed with cause 'connection', exit 2). The next run stops the
    frozen orphan left by that, measures the lost trial again and finishes; no trial is in the store
    twice and none is lost."""
    recipe = project.recipe("drops", ["Q4_0"], trials=2)  # Q4_0 at the defaults, then with one knob changed
    target = project.target("faulty-drops", reconnects=3)
    src_dir = device_home / "models" / "src"
    project.forget_upload(device_home)
    events: dict[str, object] = {}

    def restart(_) -> None:
        dev.restart(down_s=2)

    def cut_frozen(match) -> None:
        pid, pgid, _ = match
        events["orphan"] = pgid
        stop_group(pgid)
        dev.cut_connections()

    def lose(match) -> None:
        pid, pgid, _ = match
        events["lost"] = pgid
        stop_group(pgid)
        dev.stop()

    run = project.start("deploy", "--target", target, "--recipe", recipe, "--out", str(project.root / "drops-bundle"),
                        "--agent", "heuristic")
    watcher = Watcher([
        ("cut-upload", part_at_least(src_dir, 0.3, lambda: project.synthetic_size()), lambda _: dev.cut_connections()),
        ("restart-anchor", lambda: next(iter(procs(f"{device_home}/toolchains/", "-p 0 -n 32", program="llama-bench")),
                                        None), restart),
        ("cut-bench", trial_bench(device_home, "/Q4_0-"), cut_frozen),
        ("lose", trial_bench(device_home, "/Q4_0-", when=lambda: len(project.store(recipe, target)) == 1), lose),
    ])
    watcher.start()
    try:
        code, err = run.wait()
    finally:
        if dev.proc.poll() is not None:
            dev.start()
    assert watcher.finish() == ["cut-upload", "restart-anchor", "cut-bench", "lose"], err
    assert code == 2, err
    assert "resuming the upload" in err, err
    assert "lost while running llama-bench" in err and "run it again from the start" in err, err
    assert "left by the dropped connection" in err, err
    assert not group_alive(events["orphan"]), "the llama-bench cut off by the drop was left running"
    assert "error: cannot reach faulty-drops" in err and "Q4_0: failed (connection)" in err, err
    rows = project.store(recipe, target)
    assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [
        ("Q4_0", "ok", None),
        ("Q4_0", "failed", "connection"),
    ]
    assert group_alive(events["lost"]), "expected the frozen llama-bench of the lost connection to be left behind"

    again = project.run("deploy", "--target", target, "--recipe", recipe, "--out", str(project.root / "drops-bundle"),
                        "--agent", "heuristic")
    assert again.returncode == 0, again.stderr
    assert "resuming: 1 trial(s)" in again.stderr
    assert "left by the dropped connection" in again.stderr  # remembered across runs
    assert not group_alive(events["lost"]), "the next run did not stop the orphan of the lost connection"
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"]) for r in rows] == [("Q4_0", "ok"), ("Q4_0", "discarded"), ("Q4_0", "ok")]
    assert rows[1]["cause"].startswith("connection:") and rows[2]["key"] == rows[1]["key"]
    lock = json.loads((project.root / "drops-bundle" / "haqa.lock.json").read_text())
    assert lock["selection"]["trials"] == 2
    assert not device_procs(dev, device_home, f"{device_home}/toolchains/", "/llama-bench ")
    assert not list((device_home / "models").rglob("*.part"))


# -- Ctrl-C --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_at_each_stage_stops_the_device_and_the_next_run_resumes(project, dev, device_home, toolchain,
                                                                        tmp_path):
    """Ctrl-C during the model's upload, during llama-quantize and during a trial's llama-bench, each
    in its own run on a fresh work folder: every time haqa exits 130, nothing of it runs on the
    device, nothing half-made is in place and the store holds only finished trials; each next run
    resumes (the upload from where it stopped, the search from the store) and the last one finishes."""
    workdir = tmp_path / "device"
    (workdir / "toolchains").mkdir(parents=True)
    (workdir / "toolchains" / toolchain.key).symlink_to(Path(toolchain.root))  # the build is not under test here
    target = project.target("faulty-ctrlc", workdir=workdir)
    recipe = project.recipe("ctrlc", ["Q4_K_M"], trials=2)  # at the defaults, then with one knob changed
    src_dir, models = workdir / "models" / "src", workdir / "models"
    args = ("deploy", "--target", target, "--recipe", recipe, "--out", str(tmp_path / "bundle"), "--agent", "heuristic")

    def interrupted(steps) -> str:
        run = project.start(*args)
        for i, (name, cond, act) in enumerate(steps):
            steps[i] = (name, cond, (lambda a: (lambda v: (a(v), run.ctrl_c())))(act))
        watcher = Watcher(steps)
        watcher.start()
        code, err = run.wait()
        assert watcher.finish() == [s[0] for s in steps], err
        assert code == 130 and "interrupted" in err, err
        time.sleep(3)  # TERM, then KILL 2 s later
        left = device_procs(dev, workdir, str(workdir))
        assert not left, f"Ctrl-C left these running on the device: {left}"
        assert_store_consistent(project.store(recipe, target))
        return err

    # 1. during the upload: the partial upload stays for the next run; nothing is in place
    interrupted([("upload", part_at_least(src_dir, 0.2, lambda: project.synthetic_size()), lambda _: None)])
    assert list(src_dir.glob("*.gguf.part")) and not list(src_dir.glob("*.gguf"))

    # 2. during llama-quantize (frozen, so it cannot finish first): no candidate is left as if made
    err = interrupted([("quantize", lambda: next(iter(procs(str(workdir), program="llama-quantize")), None),
                        lambda m: stop_group(m[1]))])
    assert "resuming the upload" in err, err
    assert not [p for p in models.rglob("Q4_K_M-*.gguf")], "a half-quantized candidate was moved into place"

    # 3. during the second trial's llama-bench, once the first trial is in the store
    interrupted([("bench", trial_bench(workdir, "/Q4_K_M-", when=lambda: len(project.store(recipe, target)) == 1),
                  lambda m: stop_group(m[1]))])
    assert [(r["quant"], r["status"]) for r in project.store(recipe, target)] == [("Q4_K_M", "ok")]

    # 4. the next run resumes and finishes
    last = project.run(*args)
    assert last.returncode == 0, last.stderr
    assert "resuming: 1 trial(s)" in last.stderr and "1 new trial(s)" in last.stderr
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"]) for r in rows] == [("Q4_K_M", "ok"), ("Q4_K_M", "ok")]
    assert not list(models.rglob("*.part"))


# -- a hang --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_hung_benchmark_times_out_its_process_tree_is_killed_and_the_search_goes_on(project, dev, device_home,
                                                                                    toolchain, monkeypatch, capfd):
    """A trial's llama-bench stops making progress (SIGSTOP: alive, holding its memory, never exiting).
    With the benchmark timeout made short, the timeout fires, haqa kills the process group on the
    device (the peak-RSS wrapper and llama-bench), records the trial as failed (timeout) and the search
    goes on to the next candidate."""
    from haqa import pipeline
    from haqa.measure import bench

    monkeypatch.setattr(bench, "BENCH_TIMEOUT_S", 30)  # the other candidate's runs must fit, on a busy machine too
    monkeypatch.setenv("HAQA_HOME", str(project.home))
    monkeypatch.chdir(project.root)
    recipe = project.recipe("hang", ["Q4_0", "Q8_0"], trials=2)
    target = project.target("faulty-hang")
    hung: dict[str, int] = {}

    def freeze(match) -> None:
        pid, pgid, _ = match
        hung.update(pid=pid, pgid=pgid)
        FROZEN.append(pgid)
        os.kill(pid, signal.SIGSTOP)  # llama-bench alone: its parent (the peak-RSS wrapper) waits on

    watcher = Watcher([("freeze", trial_bench(device_home, "/Q4_0-"), freeze)])
    watcher.start()
    start = time.monotonic()
    result = pipeline.deploy(target, recipe, project.root / "hang-bundle", agent="heuristic")
    assert watcher.finish() == ["freeze"]
    err = capfd.readouterr().err
    assert time.monotonic() - start < 600
    assert not group_alive(hung["pgid"]), "the hung benchmark's process group survived its timeout"
    assert not device_procs(dev, device_home, f"{device_home}/toolchains/", "/llama-bench ")
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [
        ("Q4_0", "failed", "timeout"),
        ("Q8_0", "ok", None),
    ]
    assert "Q4_0: failed (timeout)" in err
    assert result.winner.quant == "Q8_0"


# -- out of memory -------------------------------------------------------------------------------

@pytest.mark.slow
def test_out_of_memory_is_recorded_and_the_memory_model_skips_what_needs_as_much(project, device_home, toolchain,
                                                                                   tmp_path_factory, monkeypatch):
    """The device's sshd, and so everything haqa starts there, runs in a cgroup limited to 48 MiB.
    A repacked Q4_0 (the memory model counts its weights twice, mapped and repacked: about 65 MiB of
    anonymous memory that a memory-mapped Q8_0 does not need; measured: 83 against 17 MiB for the
    whole cgroup) is killed by the kernel's OOM killer; the trial
    is recorded failed (oom); the memory model learns that its predicted peak does not fit, so Q4_K_M
    (predicted as high) is skipped without being run; Q8_0 (predicted lower) is measured and chosen.
    A second run learns the same from the store."""
    reason = MemoryLimit.unavailable()
    if reason:
        pytest.skip(reason)
    server = start_server(tmp_path_factory.mktemp("oom-sshd"))
    limit = None
    try:
        target = project.target("faulty-oom", server=server)
        recipe = project.recipe("oom", ["Q4_0", "Q4_K_M", "Q8_0"], trials=2)
        # The model and the Q4_0 candidate are put on the device before the limit (a small device would
        # get them from elsewhere): the limit is for running them. Their pages stay charged outside it.
        monkeypatch.setenv("HAQA_HOME", str(project.home))
        from types import SimpleNamespace

        from haqa.measure.quantize import quantize
        from haqa.model.synth import synthetic_q8_0
        from haqa.pipeline import prepare_device

        loaded = load_target(str(project.root / "targets" / f"{target}.toml"))
        runner = SshRunner(loaded.connect, label=target)
        try:
            model = SimpleNamespace(path=synthetic_q8_0(str(project.root / "shape.json")), sha256=project.model_sha)
            tc, device_source = prepare_device(runner, loaded, model, None)
            q4_0, _ = quantize(runner, tc, device_source, project.model_sha, "Q8_0", "Q4_0")
        finally:
            runner.close()
        for f in (device_source, q4_0):  # in the page cache, charged outside the limit: a limit below the
            with open(f, "rb") as fh:     # mapped file would have it read from disk again and again instead
                while fh.read(1 << 24):
                    pass
        limit = MemoryLimit(f"haqa-test-oom-{os.getpid()}", 48 * MIB)
        limit.add(server.proc.pid)

        out = project.root / "oom-bundle"
        proc = project.run("deploy", "--target", target, "--recipe", recipe, "--out", str(out), "--agent", "heuristic")
        assert proc.returncode == 0, proc.stderr
        assert limit.oom_kills() >= 1, "the kernel's OOM killer never fired"
        rows = project.store(recipe, target)
        assert_store_consistent(rows)
        assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [
            ("Q4_0", "failed", "oom"),
            ("Q8_0", "ok", None),
        ]
        assert "Q4_0: failed (oom)" in proc.stderr
        assert re.search(r"memory model: Q4_0 .* ran out of memory on the device just now", proc.stderr), proc.stderr
        assert re.search(r"memory model: skipping Q4_K_M .*which ran out of memory on the device",
                         proc.stderr), proc.stderr
        assert json.loads((out / "haqa.lock.json").read_text())["model"]["file_type"] == "Q8_0"

        again = project.run("deploy", "--target", target, "--recipe", recipe, "--out", str(out), "--agent", "heuristic")
        assert again.returncode == 0, again.stderr
        assert "ran out of memory on the device in an earlier run" in again.stderr
        assert len(project.store(recipe, target)) == 2
    finally:
        server.stop()
        if limit is not None:
            limit.remove()


# -- a full disk ---------------------------------------------------------------------------------

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


@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def make(mib: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", mib))
        return disks[-1]

    yield make
    for d in disks:
        d.unmount()


def test_upload_to_a_disk_that_fills_up_stops_with_the_path_and_sizes_and_no_partial_file(dev, device_home,
                                                                                          small_disk, tmp_path):
    """Another program fills the device's disk while haqa uploads (the free-space check before the
    upload passed): SFTP's write fails, and haqa reports DiskFull with the device path, the free space
    and the size, and removes the partial upload, instead of taking it for a dropped connection."""
    disk = small_disk(48)
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(32 * MIB))
    runner = SshRunner(connect_for(dev, disk.path), label="small-disk")
    remote = PurePosixPath(disk.path) / "models" / "blob.bin"
    filled = []

    def hook(done: int) -> None:
        if not filled and done > 8 * MIB:
            filled.append(disk.fill())

    runner.transfer.on_chunk = hook
    try:
        with pytest.raises(DiskFull) as e:
            runner.put(src, remote)
    finally:
        runner.close()
    message = str(e.value)
    assert filled and f"{remote} needs about 32.0 MiB" in message and "MiB free there" in message, message
    assert "free space on the device" in message
    assert not (disk.path / "models" / "blob.bin.part").exists() and not (disk.path / "models" / "blob.bin").exists()


@pytest.mark.slow
def test_deploy_onto_a_disk_too_small_for_the_model_is_refused_before_sending(project, dev, toolchain, small_disk):
    """A 64 MiB device disk and a 132 MiB model: haqa refuses before sending a byte, naming the path
    and both sizes (exit 2, no traceback), and leaves nothing on the device."""
    disk = small_disk(64)
    (disk.path / "toolchains").mkdir()
    (disk.path / "toolchains" / toolchain.key).symlink_to(Path(toolchain.root))
    target = project.target("faulty-tiny-disk", workdir=disk.path)
    recipe = project.recipe("tiny-disk", ["Q8_0"], trials=1)
    proc = project.run("deploy", "--target", target, "--recipe", recipe, "--agent", "heuristic")
    assert proc.returncode == 2, proc.stderr
    size = project.synthetic_size() / MIB
    assert re.search(rf"not enough disk space on faulty-tiny-disk for the upload of shape-\S+\.gguf: "
                     rf"{re.escape(str(disk.path))}/models/src/\w+\.gguf "
                     rf"needs about {size:.1f} MiB, 6\d\.\d MiB free there",
                     proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((disk.path / "models").rglob("*.gguf*")) if (disk.path / "models").exists() else True


@pytest.mark.slow
def test_quantize_running_out_of_disk_records_the_trial_failed_with_cause_disk(project, dev, toolchain, small_disk):
    """The device's disk holds the model and, by the free-space check, the predicted candidate; then
    it fills up while llama-quantize writes (frozen until the disk is full). llama-quantize fails
    (an iostream error, not a word about space); haqa sees the full filesystem, removes the partial
    output, records the trial as failed (disk) and stops with the path, the free and the needed space.
    Nothing half-written is in place. With space freed, the next run measures the candidate again."""
    disk = small_disk(240)  # the 132 MiB model + about 105 MiB: room for the predicted 68 MiB Q4_K_M
    (disk.path / "toolchains").mkdir()
    (disk.path / "toolchains" / toolchain.key).symlink_to(Path(toolchain.root))
    target = project.target("faulty-full-disk", workdir=disk.path)
    recipe = project.recipe("full-disk", ["Q4_K_M"], trials=1)
    args = ("deploy", "--target", target, "--recipe", recipe, "--out", str(project.root / "full-disk"),
            "--agent", "heuristic")
    filler: list[Path] = []

    def fill(match) -> None:
        pid, pgid, _ = match
        stop_group(pgid)
        filler.append(disk.fill())
        os.killpg(pgid, signal.SIGCONT)

    run = project.start(*args)
    watcher = Watcher([("fill", lambda: next(iter(procs(str(disk.path), program="llama-quantize")), None), fill)])
    watcher.start()
    code, err = run.wait()
    assert watcher.finish() == ["fill"], err
    assert code == 2, err
    assert re.search(rf"not enough disk space on faulty-full-disk for the Q4_K_M candidate \(llama-quantize\): "
                     rf"{re.escape(str(disk.path))}/models/\w+/Q4_K_M-\w+\.gguf needs about \d+\.\d MiB, "
                     rf"\d+\.\d MiB free there", err), err
    rows = project.store(recipe, target)
    assert [(r["quant"], r["status"], r["cause"]) for r in rows] == [("Q4_K_M", "failed", "disk")]
    assert not list((disk.path / "models").rglob("Q4_K_M*")), "a partial candidate was left on the device"

    filler[0].unlink()
    again = project.run(*args)
    assert again.returncode == 0, again.stderr
    rows = project.store(recipe, target)
    assert_store_consistent(rows)
    assert [(r["quant"], r["status"]) for r in rows] == [("Q4_K_M", "discarded"), ("Q4_K_M", "ok")]
