"""Write a target file (what `haqa targets probe` produces): plain TOML with comments saying where each fact came from."""

from __future__ import annotations

import json
from collections.abc import Mapping


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(name: str, values: Mapping, comments: Mapping[str, str] | None = None) -> list[str]:
    lines = [f"[{name}]"]
    for k, v in values.items():
        if v is None or isinstance(v, Mapping):
            continue
        c = (comments or {}).get(k)
        lines.append(f"{k} = {_value(v)}" + (f"  # {c}" if c else ""))
    return lines


def target_toml(*, name: str, description: str, os: str, hardware: dict, connect: dict, header: list[str],
                hardware_comments: Mapping[str, str] | None = None, limits: dict | None = None) -> str:
    lines = [f"# {h}" for h in header]
    lines += [f"name = {_value(name)}", f"description = {_value(description)}", f"os = {_value(os)}", ""]
    lines += _table("hardware", hardware, hardware_comments) + [""]
    if hardware.get("gpu"):
        lines += _table("hardware.gpu", hardware["gpu"]) + [""]
    lines += _table("connect", connect) + [""]
    if limits:
        lines += _table("limits", limits) + [""]
    return "\n".join(lines)
