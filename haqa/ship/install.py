"""The install folder on the device: `<work dir>/bundles/<recipe>@<target>/` (haqa/bundle/services.py
says why there), made haqa's own with a marker file, and the bundle uploaded into it.

Files already there with the same sha256 are skipped. haqa removes files an earlier bundle left only
in a folder it marked as its own; a folder without the marker is taken only when it is empty or holds
an install of an earlier haqa (a lock and run.sh)."""

from __future__ import annotations

from pathlib import PurePath

from haqa import ui
from haqa.bundle.services import BUNDLES, LOG
from haqa.errors import UserError
from haqa.runner.base import Runner
from haqa.ship.device import check, device_path
from haqa.ship.service import PIDFILE
from haqa.ship.verify import Bundle

MARKER = ".haqa-install"
_MARKER_TEXT = ("This folder was made by `haqa ship`. The next ship removes any file in it that its bundle's "
                "SHA256SUMS does not list.\n")
_FOLDER_STATE = ('if [ -L "$1" ]; then echo link; elif [ ! -e "$1" ]; then echo absent; '
                 'elif [ ! -d "$1" ]; then echo other; elif [ -f "$1/$2" ]; then echo haqa; '
                 'elif [ -z "$(ls -A "$1")" ]; then echo empty; '
                 'elif [ -f "$1/haqa.lock.json" ] && [ -f "$1/run.sh" ]; then echo earlier; else echo foreign; fi')


def install_dir(runner: Runner, bundle: Bundle) -> PurePath:
    dest = runner.dir(BUNDLES, bundle.label)
    device_path(str(dest), "the install folder")
    return dest


def claim_install_dir(runner: Runner, dest: PurePath) -> None:
    """Make dest haqa's install folder (with MARKER in it), or refuse: a folder without the marker is
    taken only when it is empty or an install of an earlier haqa (a lock and run.sh in it)."""
    state = check(runner, ["sh", "-c", _FOLDER_STATE, "haqa-ship", str(dest), MARKER],
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


def _executable(name: str) -> bool:
    return name == "run.sh" or name.startswith("bin/")


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
    check(runner, ["chmod", "0755", *run_bits], "setting file modes")
    check(runner, ["chmod", "0644", *plain_files], "setting file modes")
    remove_stale(runner, bundle, dest)
    return sent, len(bundle.files) - sent


def remove_stale(runner: Runner, bundle: Bundle, dest: PurePath) -> None:
    """Remove what an earlier bundle left in dest: every file but this bundle's (and their sha256
    records), the marker, and the running server's pid file and log."""
    keep = {str(dest / n) for n in bundle.files} | {str(dest / n) + ".sha256.json" for n in bundle.files}
    keep |= {str(dest / MARKER), str(dest / PIDFILE), str(dest / LOG)}
    listed = check(runner, ["find", str(dest), "-type", "f", "-print0"], "listing the install folder").stdout
    stale = [p for p in listed.split("\0") if p.startswith(f"{dest}/") and p not in keep]
    if stale:
        check(runner, ["rm", "-f", "--", *stale], "removing files of an earlier bundle")
        ui.note(f"removed {len(stale)} file(s) an earlier bundle left in {dest}")
