"""`haqa toolchain build` over SSH survives a dropped connection and Ctrl-C, and resumes."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.faults import (
    Watcher,
    device_procs,
    group_alive,
    procs,
    stop_group,
)


@pytest.mark.slow
def test_build_survives_a_dropped_connection_and_ctrl_c_then_resumes(project, dev, device_home):
    """`haqa toolchain build` over SSH: the connection is cut mid-compile (with the build's process
    group frozen, so only haqa can end it), haqa reconnects, stops the orphaned make and compilers and
    runs the build again; a Ctrl-C later stops everything on the device; the next build resumes from
    the objects already compiled and finishes."""
    if list(device_home.glob("toolchains/*/toolchain.json")):
        pytest.skip("the device's toolchain was already built in this session (by another test)")
    logs = project.home / "devices" / "faulty" / "toolchains"

    def compiled() -> int:
        """Objects this build invocation has started compiling (its log is new with each invocation)."""
        return sum(len(re.findall(r"Building \w+ object", log.read_text())) for log in logs.glob("*/build.log"))

    frozen: dict[str, int] = {}

    def cut(match) -> None:
        pid, pgid, _ = match
        frozen["pgid"] = pgid
        stop_group(pgid)  # a build that cannot end by itself: only haqa's clean-up can stop it
        dev.cut_connections()

    # A real compile whatever the compiler cache holds (what it compiles is stored), so the faults land
    # mid-build: the cut after 3 objects, Ctrl-C once the build haqa ran again has compiled some more (of
    # about 200); the resumed build below takes the rest from the cache.
    dev.set_env({**dev.env, "CCACHE_RECACHE": "1"})
    run = project.start("toolchain", "build", "--target", "faulty")
    watcher = Watcher([
        ("cut", lambda: compiled() >= 3 and next(iter(procs(str(device_home), "cmake --build")), None), cut),
        ("ctrl-c", lambda: frozen and not group_alive(frozen["pgid"]) and compiled() >= 9 and
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
