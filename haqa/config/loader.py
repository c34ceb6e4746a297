"""Find, read, merge (`extends`) and validate target and recipe files.

Every failure becomes a UserError that names the file, the key, the valid values and the next
command to run.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from haqa import paths, probe
from haqa.config.schema import Recipe, Target
from haqa.errors import UserError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10
    import tomli as tomllib

KINDS = {"targets": Target, "recipes": Recipe}
FAMILY_DIR = "families"


def list_names(kind: str) -> dict[str, Path]:
    """Every target or recipe name visible from here, mapped to the file that wins the search order."""
    found: dict[str, Path] = {}
    for d in paths.catalog_dirs(kind):
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return dict(sorted(found.items()))


def find_file(kind: str, name: str) -> Path:
    """The file for a name (searched in the catalog folders) or an explicit path to a .toml file."""
    p = Path(name).expanduser()
    if name.endswith(".toml") or "/" in name:
        if not p.is_file():
            raise UserError(f"{kind[:-1]} file not found: {p}", hint=f"run `haqa {kind} list` to see the known names")
        return p
    names = list_names(kind)
    if name in names:
        return names[name]
    where = ", ".join(str(d) for d in paths.catalog_dirs(kind))
    raise UserError(
        f"unknown {kind[:-1]} '{name}'{did_you_mean(name, names)}; known: {', '.join(names) or 'none'}",
        hint=f"run `haqa {kind} list`; files are searched in {where}",
    )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} on line {line}); TOML files are UTF-8",
                        hint="save the file as UTF-8 (iconv -f latin1 -t utf-8, "
                             "or your editor's encoding menu)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_parent(path: Path, ref: str, kind: str) -> Path:
    rel = ref if ref.endswith(".toml") else f"{ref}.toml"
    candidates = [path.parent / rel, path.parent.parent / rel]
    candidates += [d / rel for d in paths.catalog_dirs(kind)]
    for c in candidates:
        if c.is_file():
            return c
    family_names = sorted({f"{FAMILY_DIR}/{f.stem}"
                           for d in paths.catalog_dirs(kind) for f in (d / FAMILY_DIR).glob("*.toml")})
    raise UserError(
        f"{path}: key 'extends': no file '{rel}'{did_you_mean(ref, family_names)}; "
        f"valid: {', '.join(family_names) or 'none'}"
    )


def load_merged(path: Path, kind: str, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's data with its `extends` chain merged in (child keys win; tables merge)."""
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise UserError(f"{path}: key 'extends' makes a cycle: {cycle}", hint="remove one of the `extends` lines")
    data = read_toml(path)
    ref = data.pop("extends", None)
    if ref is None:
        return data
    if not isinstance(ref, str):
        raise UserError(f"{path}: key 'extends' must be a string like 'families/cortex-a76', got {ref!r}")
    parent = load_merged(_resolve_parent(path, ref, kind), kind, (*_chain, resolved))
    return _merge(parent, data)


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _section(loc: tuple) -> str:
    return f"[{'.'.join(str(p) for p in loc)}]" if loc else "the top level"


def explain(error: ValidationError, path: Path, model: type[BaseModel]) -> str:
    """Turn pydantic's errors into lines a user can act on."""
    lines = []
    for e in error.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = sorted(parent.model_fields) if parent else []
            lines.append(
                f"unknown key '{loc[-1]}' in {_section(loc[:-1])}{did_you_mean(str(loc[-1]), valid)}; "
                f"valid keys: {', '.join(valid)}"
            )
        elif kind == "missing":
            lines.append(f"missing required key '{loc[-1]}' in {_section(loc[:-1])}")
        elif kind == "value_error":
            msg = str(e["msg"]).removeprefix("Value error, ")
            lines.append(f"key '{key}': {msg}" if key else msg)
        else:
            lines.append(f"key '{key}': {e['msg']} (got {e.get('input')!r})")
    return f"{path}: invalid {model.__name__.lower()} file\n  - " + "\n  - ".join(lines)


def _validate(kind: str, path: Path, data: dict) -> Any:
    model = KINDS[kind]
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise UserError(explain(e, path, model), hint=f"compare with `haqa {kind} show <a shipped one>`") from None
    if obj.name != path.stem:
        raise UserError(f"{path}: key 'name' is '{obj.name}' but the file is named '{path.stem}.toml'; make them equal")
    return obj


def fingerprint(obj: BaseModel) -> str:
    """sha256 of the validated, merged content: an edit anywhere in the `extends` chain changes it."""
    return hashlib.sha256(obj.model_dump_json().encode()).hexdigest()


def load_target(name: str) -> Target:
    path = find_file("targets", name)
    data = load_merged(path, "targets")
    if data.get("detect") is True:
        detected = probe.local_facts()
        data.setdefault("os", detected.pop("os"))
        data["hardware"] = _merge(detected, data.get("hardware", {}))
    return _validate("targets", path, data)


def load_recipe(name: str) -> Recipe:
    path = find_file("recipes", name)
    return _validate("recipes", path, load_merged(path, "recipes"))
