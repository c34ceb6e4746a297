"""A process left running on a device after the command that started it returns: started in a session
of its own (setsid, or perl's POSIX::setsid where there is no setsid, as on macOS), its pid in a file,
its output in a log. Asked whether it runs, and stopped only while its command line still names its
folder, so a pid that another program got since is never signalled. The scripts are constants that take
every value as "$@"; nothing is put into a shell's text."""

from __future__ import annotations

from pathlib import PurePath

from haqa.runner.base import CommandResult, Runner

# A zombie is not alive; where there is no /proc (macOS), kill -0 decides.
_PID = ('alive() { kill -0 "$1" 2>/dev/null && ! grep -q "^State:.*Z" "/proc/$1/status" 2>/dev/null; }; '
        'pid=$(cat "$1" 2>/dev/null); case $pid in ""|*[!0-9]*) pid= ;; esac; ')
_RUNNING = _PID + '[ -n "$pid" ] && alive "$pid"'
_NAMES_FOLDER = ('names() { if [ -r "/proc/$1/cmdline" ]; then grep -qF -- "$2/" "/proc/$1/cmdline"; '
                 'else ps -o args= -p "$1" 2>/dev/null | grep -qF -- "$2/"; fi; }; ')
_STOP = _PID + _NAMES_FOLDER + (
    'if [ -n "$pid" ] && alive "$pid" && names "$pid" "$2"; then '
    'kill -TERM "$pid"; i=0; while alive "$pid" && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
    'alive "$pid" && kill -KILL "$pid"; echo stopped; fi; rm -f "$1"')
_START = ('dir=$1 pidfile=$2 log=$3; shift 3; cd "$dir" || exit 1; '
          'if command -v setsid >/dev/null 2>&1; then set -- setsid "$@"; '
          'elif command -v perl >/dev/null 2>&1; then set -- perl -MPOSIX -e "POSIX::setsid(); exec @ARGV" -- "$@"; '
          'else echo "neither setsid nor perl is installed on the device" >&2; exit 3; fi; '
          '"$@" </dev/null >"$log" 2>&1 & echo $! >"$pidfile"')


def start(runner: Runner, folder: PurePath, pidfile: PurePath, log: PurePath, argv: list[str],
          timeout: float = 120) -> CommandResult:
    """Start argv detached, in `folder` (its working directory, which its command line must name for
    `stop` to act on it)."""
    return runner.run(["sh", "-c", _START, "haqa-detached", str(folder), str(pidfile), str(log), *argv],
                      timeout=timeout)


def running(runner: Runner, pidfile: PurePath) -> bool:
    return runner.run(["sh", "-c", _RUNNING, "haqa-detached", str(pidfile)], timeout=60).ok


def stop(runner: Runner, pidfile: PurePath, folder: PurePath, timeout: float = 120) -> CommandResult:
    """Stop the process the pid file names if it is still the one started for `folder` (TERM, then KILL
    after 10 s); its stdout says "stopped" when one was. The pid file is removed either way."""
    return runner.run(["sh", "-c", _STOP, "haqa-detached", str(pidfile), str(folder)], timeout=timeout)
