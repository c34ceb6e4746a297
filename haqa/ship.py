"""`haqa ship`: put a bundle on a device, start it as a service, and check that it answers.

1. Verify the bundle here (haqa/bundle/verify.py, haqa/bundle/lock.py): no symbolic link in it, every
   file against SHA256SUMS, SHA256SUMS against its signature when --allowed-signers is given, and the
   lock's fields, every name in it a schema name.
2. Read the device's facts through its runner (haqa/probe.py) and refuse a device the bundle cannot
   run on: another OS or CPU architecture, a CPU without the features the native build uses, no GPU
   of the kind it was built for, or too little RAM for the lock's predicted peak plus the headroom.
3. Upload every file SHA256SUMS lists into `<work dir>/bundles/<recipe>@<target>/` on the device;
   files already there with the same sha256 are skipped. haqa marks the folder it makes there as its
   own, and removes files an earlier bundle left only in a folder so marked.
4. Install and start it: a systemd user unit (Linux with a user systemd), a launchd agent (macOS),
   or else a detached process with a pid file and a log in the install folder.
5. Health check: wait for /health, then one chat completion through the openai client.

`--ollama` also creates the model in the device's Ollama (the ollama client); `--to-hf` uploads the
bundle to a Hugging Face repo (huggingface_hub, which uploads through the Hub's xet protocol when
hf_xet is installed; HF_HUB_DISABLE_XET=1 uses plain LFS uploads, e.g. for an endpoint without xet).
Every command sent to the device is an argv list; the shell scripts below are constants that take
every value as a positional argument. What the device prints and haqa uses as a path (its home, its
config folder, the user id) is checked first (`device_path`).
"""

from __future__ import annotations

import abc
import contextlib
import glob
import http.client
import os
import plistlib
import re
import shlex
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from haqa import __version__, ui
from haqa.bundle.lock import LOCK_NAME as LOCK
from haqa.bundle.lock import REDEPLOY as _REDEPLOY
from haqa.bundle.lock import Lock, load
from haqa.bundle.services import plain, service_name
from haqa.bundle.verify import SIGNATURE, SUMS, verify_sums
from haqa.errors import UserError
from haqa.runner.base import Runner
from haqa.secrets import redact, remember

PROMPT = "In one short sentence: what can you help me with?"
OLLAMA_PORT = 11434
LOG_LINES = 40
_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")
_OLLAMA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_WILDCARD = ("0.0.0.0", "::")

# Detached process fallback (no user systemd): constant scripts, values as "$@". A zombie is not alive.
_PID = ('alive() { kill -0 "$1" 2>/dev/null && ! grep -q "^State:.*Z" "/proc/$1/status" 2>/dev/null; }; '
        'pid=$(cat "$1" 2>/dev/null); case $pid in ""|*[!0-9]*) pid= ;; esac; ')
_RUNNING = _PID + '[ -n "$pid" ] && alive "$pid"'
# Stop the process the pid file names only if it is this bundle's server (its command line names the
# install folder), so a pid that another program got since is never signalled.
_STOP = _PID + (
    'if [ -n "$pid" ] && alive "$pid" && grep -qF -- "$2/" "/proc/$pid/cmdline" 2>/dev/null; then '
    'kill -TERM "$pid"; i=0; while alive "$pid" && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
    'alive "$pid" && kill -KILL "$pid"; echo stopped; fi; rm -f "$1"')
_START = ('command -v setsid >/dev/null 2>&1 || { echo "setsid is not installed on the device" >&2; exit 3; }; '
          'dir=$1 pidfile=$2 log=$3; shift 3; cd "$dir" || exit 1; '
          'setsid "$@" </dev/null >"$log" 2>&1 & echo $! >"$pidfile"')
_HAS_USER_SYSTEMD = "command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1"
_CONFIG_HOME = 'printf "%s" "${XDG_CONFIG_HOME:-$HOME/.config}"'


# -- the bundle, verified here ----------------------------------------------------------------------

@dataclass(frozen=True)
class Bundle:
    root: Path
    files: dict[str, str]  # name -> sha256, every file SHA256SUMS lists
    lock: Lock  # the fields of haqa.lock.json that ship reads, checked (haqa/bundle/lock.py)
    recipe: str
    label: str  # <recipe>@<target it was made for>: the install folder's name
    model_file: str
    signed_by: str | None = None  # the principal whose key signed SHA256SUMS, when that was checked


def verify_bundle(path: Path, allowed_signers: Path | None = None) -> Bundle:
    """The bundle at `path` once it passed haqa/bundle/verify.py (no symbolic link in it, every file
    against SHA256SUMS, and the signature of SHA256SUMS when `allowed_signers` is given) and its lock
    passed haqa/bundle/lock.py (every name it holds a schema name)."""
    root = Path(path)
    checked = verify_sums(root, allowed_signers)
    files = checked.files
    if LOCK not in files:
        raise UserError(f"{SUMS} in {root} does not list {LOCK}", hint=_REDEPLOY)
    lock = load(root / LOCK)
    for name, digest in lock.files.items():
        if files.get(name) != digest:
            raise UserError(f"{LOCK} and {SUMS} disagree about {name}", hint=_REDEPLOY)
    model_file = f"{lock.recipe.name}-{lock.model.file_type}.gguf"
    for needed in (model_file, "run.sh", "bin/llama-server"):
        if needed not in files:
            raise UserError(f"{SUMS} in {root} does not list {needed}", hint=_REDEPLOY)
    if unlisted := sorted(checked.present - set(files) - {SUMS, SIGNATURE}):
        ui.note(f"not listed in {SUMS}, so not shipped: {', '.join(unlisted)}")
    if checked.signed_by is None and SIGNATURE in checked.present:
        ui.note(f"{SIGNATURE} was not checked: pass --allowed-signers FILE to verify who signed the bundle")
    return Bundle(root=root, files=files, lock=lock, recipe=lock.recipe.name,
                  label=f"{lock.recipe.name}@{lock.target.name}", model_file=model_file,
                  signed_by=checked.signed_by)


# -- the device --------------------------------------------------------------------------------------

def device_problems(bundle: Bundle, facts: dict, headroom_gib: float) -> list[str]:
    """Why the bundle cannot run on a device with these probed facts (empty: it can)."""
    built = bundle.lock.target.facts
    hw = built.hardware
    # llama.cpp builds natively (GGML_NATIVE) unless told otherwise: the server uses every feature of the
    # CPU it was built on, and stops at the first instruction a CPU without one cannot run.
    native = bundle.lock.llama_cpp.cmake_options.get("GGML_NATIVE", "ON") != "OFF"
    problems = []
    if facts.get("os") != built.os:
        problems.append(f"the bundle is for {built.os}, the device runs {facts.get('os') or 'an unknown OS'}")
    if facts.get("arch") != hw.arch:
        problems.append(f"the bundled llama-server is a native {hw.arch} program, the device's CPU is "
                        f"{facts.get('arch') or 'unknown'}")
    elif native and hw.cpu_features:
        if "cpu_features" not in facts:
            problems.append("the device's CPU features could not be read (/proc/cpuinfo or sysctl), so it is "
                            "unknown whether it runs the natively built llama-server")
        elif missing := sorted(set(hw.cpu_features) - set(facts["cpu_features"])):
            problems.append(f"the bundled llama-server was built for the CPU it was measured on (GGML_NATIVE), "
                            f"which has {', '.join(missing)}; the device's CPU does not")
    if hw.gpu.kind == "cuda" and (facts.get("gpu") or {}).get("kind") != "cuda":
        problems.append("the bundled llama-server was built with CUDA; the device has no NVIDIA GPU "
                        "(nvidia-smi and /etc/nv_tegra_release found none)")
    predicted = bundle.lock.metrics.memory.deployment_predicted
    need = float(predicted.host_bytes)
    ctx = bundle.lock.runtime.ctx_size
    ram = facts.get("ram_gib")
    if not ram:
        problems.append("the device's RAM could not be read (/proc/meminfo or sysctl hw.memsize), so the "
                        "bundle's fit cannot be checked")
    elif need + headroom_gib * 2**30 > ram * 2**30:
        problems.append(f"the memory model predicts a peak of {need / 2**30:.2f} GiB in RAM (context {ctx}); "
                        f"with the target's {headroom_gib:g} GiB headroom that needs "
                        f"{need / 2**30 + headroom_gib:.2f} GiB, and the device has {ram:g} GiB")
    gpu_need = float(predicted.gpu_bytes)
    gpu_mem = (facts.get("gpu") or {}).get("memory_gib")
    if gpu_need and gpu_mem and gpu_need > gpu_mem * 2**30:
        problems.append(f"the memory model predicts {gpu_need / 2**30:.2f} GiB on the GPU, which has {gpu_mem:g} GiB")
    return problems


def device_path(text: str, what: str) -> PurePosixPath:
    """A path the device printed (its home, its config folder) or that haqa made from one, once it is
    absolute, without '..' and without control characters."""
    if not text.startswith("/") or ".." in PurePosixPath(text).parts or not text.isprintable():
        raise UserError(f"{what} on the device is {text!r}, which is not an absolute plain path; refusing to use it",
                        hint="check the device's HOME and XDG_CONFIG_HOME, and the target's connect.workdir")
    return PurePosixPath(text)


def install_dir(runner: Runner, bundle: Bundle) -> PurePath:
    dest = runner.dir("bundles", bundle.label)
    device_path(str(dest), "the install folder")
    return dest


def _executable(name: str) -> bool:
    return name == "run.sh" or name.startswith("bin/")


def _check(runner: Runner, argv: list[str], what: str, timeout: float = 120):
    r = runner.run(argv, timeout=timeout)
    if not r.ok:
        raise UserError(f"{what} failed on the device (exit {r.returncode}): {r.stderr_tail[-800:] or r.stdout[-800:]}")
    return r


# An install folder haqa made holds MARKER; only there are files of an earlier bundle removed.
MARKER = ".haqa-install"
_MARKER_TEXT = ("This folder was made by `haqa ship`. The next ship removes any file in it that its bundle's "
                "SHA256SUMS does not list.\n")
_FOLDER_STATE = ('if [ -L "$1" ]; then echo link; elif [ ! -e "$1" ]; then echo absent; '
                 'elif [ ! -d "$1" ]; then echo other; elif [ -f "$1/$2" ]; then echo haqa; '
                 'elif [ -z "$(ls -A "$1")" ]; then echo empty; '
                 'elif [ -f "$1/haqa.lock.json" ] && [ -f "$1/run.sh" ]; then echo earlier; else echo foreign; fi')


def claim_install_dir(runner: Runner, dest: PurePath) -> None:
    """Make dest haqa's install folder (with MARKER in it), or refuse: a folder without the marker is
    taken only when it is empty or an install of an earlier haqa (a lock and run.sh in it)."""
    state = _check(runner, ["sh", "-c", _FOLDER_STATE, "haqa-ship", str(dest), MARKER],
                   "looking at the install folder").stdout.strip()
    if state in ("link", "other", "foreign"):
        what = {"link": "a symbolic link", "other": "not a folder",
                "foreign": f"a folder haqa did not make (it has no {MARKER} and no haqa bundle)"}[state]
        raise UserError(f"{dest} on the device is {what}; refusing to install a bundle there and remove its files",
                        hint="move it out of the way on the device, or set another connect.workdir in the target")
    if state == "haqa":
        return
    runner.mkdir(dest)
    runner.write_text(dest / MARKER, _MARKER_TEXT)


def upload(runner: Runner, bundle: Bundle, dest: PurePath) -> tuple[int, int]:
    """Every listed file into dest (skipped when the device has it with the same sha256), modes set,
    and files of an earlier bundle that this one no longer has removed (dest is haqa's own: see
    claim_install_dir). Returns (sent, already there)."""
    claim_install_dir(runner, dest)
    sent = 0
    for name in sorted(bundle.files):
        sent += runner.put(bundle.root / name, dest / name)
    run_bits = [str(dest / n) for n in sorted(bundle.files) if _executable(n)]
    plain_files = [str(dest / n) for n in sorted(bundle.files) if not _executable(n)]
    _check(runner, ["chmod", "0755", *run_bits], "setting file modes")
    _check(runner, ["chmod", "0644", *plain_files], "setting file modes")
    keep = {str(dest / n) for n in bundle.files} | {str(dest / n) + ".sha256.json" for n in bundle.files}
    keep |= {str(dest / MARKER), str(dest / ProcessService.PIDFILE), str(dest / ProcessService.LOG)}
    listed = _check(runner, ["find", str(dest), "-type", "f", "-print0"], "listing the install folder").stdout
    stale = [p for p in listed.split("\0") if p.startswith(f"{dest}/") and p not in keep]
    if stale:
        _check(runner, ["rm", "-f", "--", *stale], "removing files of an earlier bundle")
        ui.note(f"removed {len(stale)} file(s) an earlier bundle left in {dest}")
    return sent, len(bundle.files) - sent


# -- services: how the server is kept running on the device ---------------------------------------

class Service(abc.ABC):
    mode: str

    def __init__(self, runner: Runner, bundle: Bundle, dest: PurePath, host: str, port: int):
        self.runner, self.bundle, self.dest, self.host, self.port = runner, bundle, dest, host, port

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

    def _systemctl(self, *args: str, check: bool = True):
        argv = ["systemctl", "--user", *args]
        return _check(self.runner, argv, " ".join(argv)) if check else self.runner.run(argv, timeout=120)

    def stop(self) -> bool:
        was_running = self.running()
        self._systemctl("stop", self.unit, check=False)  # also ends a unit waiting to restart after a crash
        return was_running

    def start(self) -> None:
        config = _check(self.runner, ["sh", "-c", _CONFIG_HOME], "finding the user's config folder").stdout.strip()
        self.runner.write_text(device_path(config, "the user's config folder") / "systemd" / "user" / self.unit,
                               systemd_unit(self.bundle.label, self.command))
        self._systemctl("daemon-reload")
        self._systemctl("enable", "--now", self.unit)
        linger = self.runner.run(["sh", "-c", 'loginctl show-user "$(id -un)" --property=Linger --value'], timeout=60)
        if linger.ok and linger.stdout.strip() == "no":
            ui.note("user services stop when the user's last session ends; keep it running with "
                    "`loginctl enable-linger` on the device")

    def running(self) -> bool:
        return self._systemctl("is-active", "--quiet", self.unit, check=False).ok

    def log_tail(self) -> str:
        return self.runner.run(["journalctl", "--user", "-u", self.unit, "-n", str(LOG_LINES), "--no-pager",
                                "-o", "cat"], timeout=60).stdout

    def describe(self) -> str:
        return (f"{self.unit} (enabled: starts with the user's systemd); "
                f"`systemctl --user status {self.unit}`, `journalctl --user -u {self.unit}`")


class LaunchdService(Service):
    mode = "launchd agent"
    LOG = "server.log"

    @property
    def label(self) -> str:
        return f"dev.haqa.{self.bundle.recipe}"

    def _domain(self) -> str:
        uid = _check(self.runner, ["id", "-u"], "reading the user id").stdout.strip()
        if not uid.isdigit():
            raise UserError(f"`id -u` on the device printed {uid[:40]!r}, not a user id")
        return f"gui/{uid}"

    def stop(self) -> bool:
        return self.runner.run(["launchctl", "bootout", f"{self._domain()}/{self.label}"], timeout=120).ok

    def start(self) -> None:
        home = _check(self.runner, ["sh", "-c", 'printf "%s" "$HOME"'], "finding the user's home").stdout.strip()
        plist = device_path(home, "the user's home") / "Library" / "LaunchAgents" / f"{self.label}.plist"
        self.runner.write_text(plist, launchd_plist(self.label, self.command, self.dest / self.LOG))
        _check(self.runner, ["launchctl", "bootstrap", self._domain(), str(plist)], "launchctl bootstrap")

    def running(self) -> bool:
        r = self.runner.run(["launchctl", "print", f"{self._domain()}/{self.label}"], timeout=60)
        return r.ok and "state = running" in r.stdout

    def log_tail(self) -> str:
        return self._tail(self.dest / self.LOG)

    def describe(self) -> str:
        return f"{self.label} (loaded at login); `launchctl print gui/$(id -u)/{self.label}`, log {self.dest / self.LOG}"


class ProcessService(Service):
    mode = "detached process"
    PIDFILE = "server.pid"
    LOG = "server.log"

    def stop(self) -> bool:
        r = _check(self.runner, ["sh", "-c", _STOP, "haqa-ship", str(self.dest / self.PIDFILE), str(self.dest)],
                   "stopping the previous server")
        return "stopped" in r.stdout

    def start(self) -> None:
        _check(self.runner, ["sh", "-c", _START, "haqa-ship", str(self.dest), str(self.dest / self.PIDFILE),
                             str(self.dest / self.LOG), *self.command], "starting llama-server")

    def running(self) -> bool:
        return self.runner.run(["sh", "-c", _RUNNING, "haqa-ship", str(self.dest / self.PIDFILE)], timeout=60).ok

    def log_tail(self) -> str:
        return self._tail(self.dest / self.LOG)

    def describe(self) -> str:
        pidfile = shlex.quote(str(self.dest / self.PIDFILE))
        return (f"pid in {self.dest / self.PIDFILE}, log {self.dest / self.LOG}; not restarted after a reboot; "
                f"stop it with `kill $(cat {pidfile})`")


def systemd_unit(label: str, command: list[str]) -> str:
    plain(label, "the bundle label")
    for arg in command:
        plain(arg, "the server command's argument")

    def quote(arg: str, program: bool) -> str:
        """systemd's quoting: C escapes inside "...", %% for a literal %, and $$ for a literal $ in the
        arguments (the program's path is not subject to variable expansion)."""
        arg = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
        return '"' + (arg if program else arg.replace("$", "$$")) + '"'

    return "\n".join([
        f"# systemd user unit written by `haqa ship` (haqa {__version__}) for {label}.",
        "[Unit]",
        f"Description=llama-server for {label} (haqa bundle)",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(quote(a, i == 0) for i, a in enumerate(command)),
        "Restart=on-failure",
        "RestartSec=5",
        "NoNewPrivileges=true",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def launchd_plist(label: str, command: list[str], log: PurePath) -> str:
    plain(label, "the launchd label")
    plain(str(log), "the log path")
    for arg in command:
        plain(arg, "the server command's argument")
    return plistlib.dumps({
        "Label": label, "ProgramArguments": command, "RunAtLoad": True, "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": str(log), "StandardErrorPath": str(log),
    }).decode()


def choose_service(runner: Runner, facts: dict, bundle: Bundle, dest: PurePath, host: str, port: int) -> Service:
    if facts.get("os") == "macos":
        return LaunchdService(runner, bundle, dest, host, port)
    if runner.run(["sh", "-c", _HAS_USER_SYSTEMD], timeout=60).ok:
        return SystemdUserService(runner, bundle, dest, host, port)
    return ProcessService(runner, bundle, dest, host, port)


# -- health check ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Health:
    tokens: int
    seconds: float
    reply: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _http_status(url: str, timeout: float = 5) -> int | None:
    """The HTTP status url answers with, or None when nothing answers."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, http.client.HTTPException):
        return None


def _failed(service: Service, message: str) -> UserError:
    tail = service.log_tail().rstrip()
    return UserError(f"{message}; the last lines of its log:\n{tail or '(empty)'}",
                     hint=f"the server is installed as a {service.mode}: {service.describe()}")


def health_check(service: Service, base: str, alias: str, wait_s: float) -> Health:
    """Wait (at most wait_s) for llama-server's /health, then time one chat completion."""
    import httpx
    import openai

    deadline = time.monotonic() + wait_s
    next_look = 0.0
    while (status := _http_status(f"{base}/health")) != 200:
        if time.monotonic() >= next_look:
            if not service.running():
                raise _failed(service, "llama-server stopped before it answered /health")
            next_look = time.monotonic() + 2
        if time.monotonic() > deadline:
            raise _failed(service, f"llama-server did not answer /health within {wait_s:g} s "
                                   f"(last answer: {status or 'none'})")
        time.sleep(0.5)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="haqa-ship", max_retries=0, timeout=max(wait_s, 60),
                           http_client=httpx.Client(trust_env=False))
    start = time.perf_counter()
    try:
        reply = client.chat.completions.create(model=alias, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=32, temperature=0)
    except openai.OpenAIError as e:
        raise _failed(service, f"the chat completion failed: {e}") from None
    finally:
        client.close()
    seconds = time.perf_counter() - start
    tokens = reply.usage.completion_tokens if reply.usage else 0
    text = (reply.choices[0].message.content or "").strip() if reply.choices else ""
    if tokens <= 0 or not text:
        raise _failed(service, "the chat completion came back without any generated tokens")
    return Health(tokens=tokens, seconds=seconds, reply=text)


# -- Ollama and the Hugging Face Hub -----------------------------------------------------------------

def ollama_parameters(bundle: Bundle) -> dict[str, int | float | str]:
    """The PARAMETER lines of the bundle's Modelfile, as the values Ollama's API takes."""
    if "Modelfile" not in bundle.files:
        raise UserError(f"{bundle.root} has no Modelfile, so the Ollama parameters are unknown", hint=_REDEPLOY)
    params: dict[str, int | float | str] = {}
    for line in (bundle.root / "Modelfile").read_text().splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "PARAMETER":
            value = parts[2].strip()
            try:
                params[parts[1]] = int(value)
            except ValueError:
                try:
                    params[parts[1]] = float(value)
                except ValueError:
                    params[parts[1]] = value
    return params


def ollama_client(url: str, where: str):
    """An ollama client for url, once an Ollama server answers there (something else is refused)."""
    import httpx
    import ollama

    client = ollama.Client(host=url, trust_env=False, timeout=600)
    where = redact(where)
    try:
        client.list()
    except (ConnectionError, httpx.HTTPError) as e:
        raise UserError(f"no Ollama server answers {where} ({type(e).__name__})",
                        hint="start Ollama there (`ollama serve`), point --ollama-host at one, "
                             "or leave out --ollama") from None
    except ollama.ResponseError as e:
        raise UserError(f"the server {where} does not answer as Ollama does: /api/tags gave HTTP {e.status_code} "
                        f"({_short(e.error)})", hint=_NOT_OLLAMA) from None
    except Exception as e:  # an answer the ollama client cannot read (HTML, other JSON)
        raise UserError(f"the server {where} does not answer as Ollama does: its /api/tags answer is not Ollama's "
                        f"({type(e).__name__}: {_short(str(e))})", hint=_NOT_OLLAMA) from None
    return client


_NOT_OLLAMA = "point --ollama-host at an Ollama server (its API is on port 11434), or leave out --ollama"


def _short(text: str) -> str:
    return redact(" ".join(str(text).split()))[:200]


def create_ollama_model(client, bundle: Bundle, name: str) -> str:
    """Upload the GGUF as a blob and create `name` from it with the Modelfile's parameters; returns
    the blob's digest."""
    import httpx
    import ollama

    params = ollama_parameters(bundle)
    try:
        digest = client.create_blob(bundle.root / bundle.model_file)
        client.create(model=name, files={bundle.model_file: digest}, parameters=params, stream=False)
    except ollama.ResponseError as e:
        raise UserError(f"Ollama refused to create {name}: {_short(e.error)} (HTTP {e.status_code})",
                        hint=_NOT_OLLAMA if e.status_code in (404, 405) else None) from None
    except (ConnectionError, httpx.HTTPError) as e:
        raise UserError(f"lost the Ollama server while creating {name}: {type(e).__name__}: {_short(str(e))}") from None
    except Exception as e:  # an answer the ollama client cannot read
        raise UserError(f"creating {name} in Ollama failed: the server's answer is not Ollama's "
                        f"({type(e).__name__}: {_short(str(e))})", hint=_NOT_OLLAMA) from None
    return digest


def check_hub_repo(repo: str) -> None:
    """A UserError unless `repo` is a Hugging Face repo id (checked by huggingface_hub itself)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise UserError(f"--to-hf {repo!r} is not a Hugging Face repo name: {e}",
                        hint="namespace/name or name, like me/smollm2-135m-haqa: letters, digits, '-', '_' and "
                             "'.', at most 96 characters, not starting or ending with '-' or '.'") from None


def push_to_hub(bundle: Bundle, repo: str, private: bool) -> str:
    """create_repo (exist_ok) and upload_folder of every listed file plus SHA256SUMS; the commit URL.
    Whatever goes wrong (a bad name, the network, the Hub) is one UserError, without the token."""
    from huggingface_hub import HfApi, get_token

    check_hub_repo(repo)
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        token = get_token()
    except Exception as e:  # a token exchange (HF_OIDC_RESOURCE) that failed
        raise UserError(f"could not get a Hugging Face token: {type(e).__name__}: {redact(str(e))}") from None
    if not token:
        raise UserError("no Hugging Face token for --to-hf",
                        hint="set HF_TOKEN, or run `hf auth login` once (the token is never printed)")
    remember(token)  # whichever way get_token() found it, it is masked in everything haqa prints
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    signature = [SIGNATURE] if (bundle.root / SIGNATURE).is_file() else []  # so the Hub copy can be verified
    try:
        api.create_repo(repo, exist_ok=True, private=private or None)
        info = api.upload_folder(repo_id=repo, folder_path=bundle.root,
                                 allow_patterns=[glob.escape(n) for n in sorted([*bundle.files, SUMS, *signature])],
                                 commit_message=f"haqa bundle {bundle.label}")
    except Exception as e:  # only huggingface_hub runs here; each failure gets its message
        raise _hub_failure(e, repo, endpoint) from None
    return info.commit_url


def _hub_failure(e: Exception, repo: str, endpoint: str) -> UserError:
    """The message for what huggingface_hub raised: an HTTP error, a network failure, or an answer that
    is not the Hub's (its HTTP library differs between versions, so transport errors go by their names)."""
    from huggingface_hub.errors import HfHubHTTPError

    detail = redact(" ".join(str(e).split()))[:300]
    name = type(e).__name__
    check = "check the network and HF_ENDPOINT (unset, it is https://huggingface.co)"
    if isinstance(e, HfHubHTTPError) and getattr(e.response, "status_code", None):
        status = e.response.status_code
        detail = redact(" ".join((e.server_message or str(e).splitlines()[0]).split()))[:300]
        if status >= 500:
            return UserError(f"the Hub at {endpoint} answered HTTP {status} while uploading to {repo}: {detail}",
                             hint=f"a failure on the Hub's side: try again later; {check}")
        return UserError(f"the Hub at {endpoint} refused the upload to {repo} (HTTP {status}): {detail}",
                         hint="check the repo name and that the token may write to it (`hf auth whoami`)")
    if "Connect" in name and "Timeout" not in name:
        return UserError(f"cannot connect to the Hub at {endpoint}: {detail}", hint=check)
    if isinstance(e, OSError) or "Timeout" in name or any(c.__name__ == "TransportError" for c in type(e).__mro__):
        return UserError(f"the connection to the Hub at {endpoint} broke while uploading to {repo}: {name}: {detail}",
                         hint=f"{check}; then run the same command again")
    return UserError(f"the Hub at {endpoint} did not answer as a Hugging Face Hub does while uploading to {repo} "
                     f"({name}: {detail})", hint="check that HF_ENDPOINT points at a Hugging Face Hub (unset, it is "
                                                  "https://huggingface.co)")


# -- the command -------------------------------------------------------------------------------------

@dataclass
class ShipResult:
    bundle: Bundle
    device: str | None = None
    endpoint: str | None = None
    mode: str | None = None
    health: Health | None = None
    ollama_model: str | None = None
    hf_commit_url: str | None = None


def ship(bundle_path: Path, *, target_name: str | None, host: str = "127.0.0.1", port: int = 8080,
         wait_s: float = 120, ollama: bool = False, ollama_host: str | None = None, ollama_name: str | None = None,
         hf_repo: str | None = None, hf_private: bool = False, allowed_signers: Path | None = None) -> ShipResult:
    if not (target_name or hf_repo or ollama):
        raise UserError("say where to ship the bundle", hint="--target T (a device), --to-hf REPO, or both")
    if (ollama_host or ollama_name) and not ollama:
        raise UserError("--ollama-host and --ollama-name go with --ollama")
    if ollama and not (target_name or ollama_host):
        raise UserError("--ollama needs --target (the device's Ollama) or --ollama-host URL")
    if not _HOST.match(host):
        raise UserError(f"--host {host!r} is not an address", hint="an IP address like 127.0.0.1 or 0.0.0.0, or a host name")
    if ollama_host is not None and not re.match(r"^https?://[^\s/]+/?$", ollama_host):
        raise UserError(f"--ollama-host {ollama_host!r} is not an http(s) URL", hint="like http://192.168.1.20:11434")
    if ollama_name is not None and not _OLLAMA_NAME.match(ollama_name):
        raise UserError(f"--ollama-name {ollama_name!r} is not an Ollama model name",
                        hint="letters, digits, '.', '_', '-', ':' and '/'")
    if hf_repo is not None:
        check_hub_repo(hf_repo)  # before anything is shipped
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
                ollama_api = ollama_client(_url(*addr), f"on {target.name} (port {OLLAMA_PORT} there)")
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
        base = _url(*addr)
        if (status := _http_status(f"{base}/health", timeout=3)) is not None:
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
    result.endpoint, result.mode, result.health = f"{_url(reach, port)}/v1", service.mode, health
