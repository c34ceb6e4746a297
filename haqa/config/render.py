"""Write a target file (what `haqa targets probe` produces): TOML, written by tomli-w so that any value
a device reports (a host name with quotes, control characters or a `[table]` in it) parses back as
the same value, under comments saying where the facts came from."""

from __future__ import annotations

import tomli_w

from haqa.probe import device_text


def _comment(line: str) -> str:
    """One comment line: whatever it says stays a comment (no newline can end it early)."""
    return "# " + device_text(line, limit=1000)


def _without_none(table: dict) -> dict:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in table.items() if v is not None}


def target_toml(*, name: str, description: str, os: str, hardware: dict, connect: dict, header: list[str],
                limits: dict | None = None) -> str:
    doc = {"name": name, "description": device_text(description), "os": os, "hardware": _without_none(hardware),
           "connect": _without_none(connect)}
    if limits:
        doc["limits"] = limits
    return "\n".join(_comment(h) for h in header) + "\n" + tomli_w.dumps(doc)
