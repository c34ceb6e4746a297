"""Content hashes for caches: sha256 of files, remembered beside large files so they are read once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haqa import paths


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _memo_file(path: Path, suffix: str) -> Path:
    """Beside the file when it lives in haqa's cache; otherwise in the cache, so user folders stay untouched."""
    home = paths.cache_home().resolve()
    resolved = path.resolve()
    if resolved.is_relative_to(home):
        return path.with_name(path.name + suffix)
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:24]
    memo = home / "memo"
    memo.mkdir(parents=True, exist_ok=True)
    return memo / f"{key}{suffix}"


def memo_beside(path: Path, suffix: str, compute: Callable[[Path], Any]) -> Any:
    """compute(path), remembered in `<path><suffix>` and keyed by the file's size and mtime."""
    sidecar = _memo_file(path, suffix)
    stamp = _stamp(path)
    try:
        saved = json.loads(sidecar.read_text())
        if saved.get("stamp") == stamp:
            return saved["value"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    value = compute(path)
    _remember(sidecar, stamp, value)
    return value


def _remember(sidecar: Path, stamp: str, value: Any) -> None:
    try:
        sidecar.write_text(json.dumps({"stamp": stamp, "value": value}))
    except OSError:
        pass  # a read-only folder only costs a recomputation next time


def cached_sha256(path: Path) -> str:
    """sha256 of a (possibly multi-GB) file, read once per content change."""
    return memo_beside(path, ".sha256.json", sha256_file)


def remember_sha256(path: Path, digest: str) -> None:
    """Tell cached_sha256 the hash of a file just written (hashed while it was written, so not read again)."""
    _remember(_memo_file(path, ".sha256.json"), _stamp(path), digest)
