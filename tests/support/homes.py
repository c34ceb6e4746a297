"""haqa homes for tests that share the costly parts of the real one, and what ccache did in them."""

from __future__ import annotations

from pathlib import Path

from haqa.paths import cache_home

# The user's haqa home as it was when the tests started, before the fast tests' own homes (conftest's
# own_haqa_home) replace HAQA_HOME: where what is costly to make (the llama.cpp source) is shared from.
REAL_HOME = cache_home()


def shared_home(home: Path, real: Path, shared: tuple[str, ...]) -> Path:
    """A haqa home of a test's own whose `shared` folders (sources, models, toolchains ...) are links
    into the real home `real`: what is costly to make is shared, while the trial store starts empty."""
    home.mkdir(parents=True, exist_ok=True)
    for sub in shared:
        (real / sub).mkdir(parents=True, exist_ok=True)
        if not (home / sub).exists():
            (home / sub).symlink_to(real / sub)
    return home


def ccache_log(log: Path) -> dict[str, list[str]]:
    """ccache's counter updates per compiled file, from a stats log (CCACHE_STATSLOG):
    {"../src/ggml.c": ["direct_cache_hit", ...], ...}."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("# "):
            current = entries.setdefault(line[2:], [])
        elif line.strip():
            current.append(line.strip())
    return entries
