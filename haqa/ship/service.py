"""How the server is kept running on the device: a systemd user unit (Linux with a user systemd), a
launchd agent (macOS), or else a detached process with a pid file and a log in the install folder.
The unit and the agent are rendered by haqa/bundle/services.py, as the bundle's own copies are.

The detached process is haqa/runner/detached.py's."""

from __future__ import annotations

import abc
import shlex
from pathlib import PurePath, PurePosixPath

from haqa import ui
from haqa.bundle.services import LOG, InstallFolder, agent_label, launchd_plist, service_name, systemd_unit
from haqa.errors import UserError
from haqa.runner import detached
from haqa.runner.base import Runner
from haqa.ship.device import check, device_path
from haqa.ship.verify import Bundle

LOG_LINES = 40
PIDFILE = "server.pid"

_HAS_USER_SYSTEMD = "command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1"
_CONFIG_HOME = 'printf "%s" "${XDG_CONFIG_HOME:-$HOME/.config}"'


class Service(abc.ABC):
    mode: str

    def __init__(self, runner: Runner, bundle: Bundle, dest: PurePath, host: str, port: int):
        self.runner, self.bundle, self.dest, self.host, self.port = runner, bundle, dest, host, port

    @property
    def folder(self) -> InstallFolder:
        return InstallFolder(PurePosixPath(str(self.dest)))

    @property
    def command(self) -> list[str]:
        return [str(self.dest / "run.sh"), "--host", self.host, "--port", str(self.port)]

    @abc.abstractmethod
    def stop(self) -> bool:
        """Stop this bundle's server if it runs; True when one was stopped."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def running(self) -> bool: ...

    @abc.abstractmethod
    def log_tail(self) -> str: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """What was installed, and how to look at it or stop it."""

    def _tail(self, path: PurePath) -> str:
        return self.runner.run(["tail", "-n", str(LOG_LINES), str(path)], timeout=60).stdout


class SystemdUserService(Service):
    mode = "systemd user unit"

    @property
    def unit(self) -> str:
        return f"{service_name(self.bundle.recipe)}.service"

    def _systemctl(self, *args: str, check_ok: bool = True):
        argv = ["systemctl", "--user", *args]
        return check(self.runner, argv, " ".join(argv)) if check_ok else self.runner.run(argv, timeout=120)

    def stop(self) -> bool:
        was_running = self.running()
        self._systemctl("stop", self.unit, check_ok=False)  # also ends a unit waiting to restart after a crash
        return was_running

    def start(self) -> None:
        config = check(self.runner, ["sh", "-c", _CONFIG_HOME], "finding the user's config folder").stdout.strip()
        self.runner.write_text(device_path(config, "the user's config folder") / "systemd" / "user" / self.unit,
                               systemd_unit(self.bundle.recipe, self.bundle.label, self.folder, self.host, self.port))
        self._systemctl("daemon-reload")
        self._systemctl("enable", "--now", self.unit)
        linger = self.runner.run(["sh", "-c", 'loginctl show-user "$(id -un)" --property=Linger --value'], timeout=60)
        if linger.ok and linger.stdout.strip() == "no":
            ui.note("user services stop when the user's last session ends; keep it running with "
                    "`loginctl enable-linger` on the device")

    def running(self) -> bool:
        return self._systemctl("is-active", "--quiet", self.unit, check_ok=False).ok

    def log_tail(self) -> str:
        return self.runner.run(["journalctl", "--user", "-u", self.unit, "-n", str(LOG_LINES), "--no-pager",
                                "-o", "cat"], timeout=60).stdout

    def describe(self) -> str:
        return (f"{self.unit} (enabled: starts with the user's systemd); "
                f"`systemctl --user status {self.unit}`, `journalctl --user -u {self.unit}`")


class LaunchdService(Service):
    mode = "launchd agent"

    @property
    def label(self) -> str:
        return agent_label(self.bundle.recipe)

    def _domain(self) -> str:
        uid = check(self.runner, ["id", "-u"], "reading the user id").stdout.strip()
        if not uid.isdigit():
            raise UserError(f"`id -u` on the device printed {uid[:40]!r}, not a user id")
        return f"gui/{uid}"

    def stop(self) -> bool:
        return self.runner.run(["launchctl", "bootout", f"{self._domain()}/{self.label}"], timeout=120).ok

    def start(self) -> None:
        home = check(self.runner, ["sh", "-c", 'printf "%s" "$HOME"'], "finding the user's home").stdout.strip()
        plist = device_path(home, "the user's home") / "Library" / "LaunchAgents" / f"{self.label}.plist"
        agent = launchd_plist(self.bundle.recipe, self.bundle.label, self.folder, self.host, self.port)
        self.runner.write_text(plist, agent.decode())
        check(self.runner, ["launchctl", "bootstrap", self._domain(), str(plist)], "launchctl bootstrap")

    def running(self) -> bool:
        r = self.runner.run(["launchctl", "print", f"{self._domain()}/{self.label}"], timeout=60)
        return r.ok and "state = running" in r.stdout

    def log_tail(self) -> str:
        return self._tail(self.dest / LOG)

    def describe(self) -> str:
        return f"{self.label} (loaded at login); `launchctl print gui/$(id -u)/{self.label}`, log {self.dest / LOG}"


class ProcessService(Service):
    mode = "detached process"

    def stop(self) -> bool:
        r = detached.stop(self.runner, self.dest / PIDFILE, self.dest)
        if not r.ok:
            raise UserError(f"stopping the previous server failed on the device (exit {r.returncode}): "
                            f"{r.stderr_tail[-800:] or r.stdout[-800:]}")
        return "stopped" in r.stdout

    def start(self) -> None:
        r = detached.start(self.runner, self.dest, self.dest / PIDFILE, self.dest / LOG, self.command)
        if not r.ok:
            raise UserError(f"starting llama-server failed on the device (exit {r.returncode}): "
                            f"{r.stderr_tail[-800:] or r.stdout[-800:]}")

    def running(self) -> bool:
        return detached.running(self.runner, self.dest / PIDFILE)

    def log_tail(self) -> str:
        return self._tail(self.dest / LOG)

    def describe(self) -> str:
        pidfile = shlex.quote(str(self.dest / PIDFILE))
        return (f"pid in {self.dest / PIDFILE}, log {self.dest / LOG}; not restarted after a reboot; "
                f"stop it with `kill $(cat {pidfile})`")


def choose_service(runner: Runner, facts: dict, bundle: Bundle, dest: PurePath, host: str, port: int) -> Service:
    if facts.get("os") == "macos":
        return LaunchdService(runner, bundle, dest, host, port)
    if runner.run(["sh", "-c", _HAS_USER_SYSTEMD], timeout=60).ok:
        return SystemdUserService(runner, bundle, dest, host, port)
    return ProcessService(runner, bundle, dest, host, port)
