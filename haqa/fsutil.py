"""Writing a file on this machine so that a reader sees the old content or the new, never half of it."""

from __future__ import annotations

import os
from pathlib import Path


def partial_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (same folder, so the rename is atomic)."""
    return path.with_name(path.name + ".part")


def atomic_write_text(path: Path, text: str, *, hidden: bool = False) -> None:
    """Write `text` to `path` through a partial file renamed into place; `hidden` puts a dot before the
    partial file's name, for folders that other tools list (a catalog)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part") if hidden else partial_path(path)
    try:
        part.write_text(text)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
