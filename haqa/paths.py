"""Where haqa keeps things: the catalog of targets and recipes, and the content-addressed cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def builtin_catalog_dir() -> Path:
    """The folder holding the built-in targets/ and recipes/: inside the package when haqa was
    installed from a wheel (pyproject.toml maps them to haqa/catalog), else the repository haqa runs
    from (a checkout or an editable install), where they sit at the top level."""
    packaged = PACKAGE_DIR / "catalog"
    return packaged if packaged.is_dir() else REPO_DIR


def cache_home() -> Path:
    """Root of haqa's cache on this machine ($HAQA_HOME, else $XDG_CACHE_HOME/haqa, else ~/.cache/haqa)."""
    if os.environ.get("HAQA_HOME"):
        home, why = Path(os.environ["HAQA_HOME"]).expanduser(), "HAQA_HOME"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        home, why = (Path(xdg) if xdg else Path.home() / ".cache") / "haqa", "XDG_CACHE_HOME" if xdg else "the default"
    if home.exists() and not home.is_dir():
        from haqa.errors import UserError

        raise UserError(f"haqa's cache folder {home} ({why}) is a file, not a folder",
                        hint="point HAQA_HOME at a folder (haqa creates it), or move that file away")
    return home


def catalog_dirs(kind: str) -> list[Path]:
    """Folders searched for `kind` ('targets' or 'recipes'), first match wins.

    The project folder (the current directory) first, then the user's config folder, then the
    built-in catalog, as PlatformIO does for boards. $HAQA_<KIND>_PATH (os.pathsep-separated) goes
    before all of them.
    """
    dirs: list[Path] = []
    extra = os.environ.get(f"HAQA_{kind.upper()}_PATH")
    if extra:
        dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    dirs.append(Path.cwd() / kind)
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "haqa" / kind
    dirs.append(config)
    dirs.append(builtin_catalog_dir() / kind)
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        r = d.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(d)
    return unique
