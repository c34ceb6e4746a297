"""Reading a lock: the file's JSON, its schema number, then the typed lock (haqa/bundle/lock/model.py).

Whatever is wrong with a lock file (missing, not UTF-8, not JSON, another schema, a key missing or of
the wrong type) is one UserError naming the file and every key that is wrong, never a traceback.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from haqa.bundle.lock.model import READABLE, SCHEMA, Lock
from haqa.errors import UserError

LOCK_NAME = "haqa.lock.json"
REDEPLOY = "run `haqa deploy` again to write a fresh bundle"
SHOWN = 8  # problems listed in one message


def read_json(path: Path) -> dict:
    """The JSON object in a lock file; a UserError for a file that is missing, a folder, unreadable,
    not UTF-8, not JSON or not an object."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"no lock file at {path}", hint="pass a bundle folder or its haqa.lock.json") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a lock file",
                        hint="pass a bundle folder or its haqa.lock.json") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a haqa lock: it is not UTF-8 text (byte {e.start})", hint=REDEPLOY) from None
    except ValueError as e:
        raise UserError(f"{path} is not a haqa lock (invalid JSON: {e})", hint=REDEPLOY) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a haqa lock: it holds a JSON {type(data).__name__}, not an object",
                        hint=REDEPLOY)
    return data


def check_schema(data: dict, where: Path) -> None:
    """A UserError unless the lock is of the schema this haqa reads, saying which one it needs."""
    found = data.get("schema")
    reads = f"lock schemas {READABLE[0]} to {READABLE[-1]}"
    if type(found) is int and found in READABLE:
        return
    if type(found) is not int:
        raise UserError(f"{where} is not a haqa lock: its 'schema' is {found!r}, not a lock schema number "
                        f"(this haqa reads {reads})", hint=REDEPLOY)
    if found > SCHEMA:
        raise UserError(f"{where}: lock schema {found} was written by a newer haqa; this haqa reads {reads}",
                        hint="upgrade haqa to read it, or deploy again with this one (`haqa deploy`)")
    raise UserError(f"{where}: lock schema {found} is not one this haqa reads ({reads}): an older haqa wrote it",
                    hint="deploy again with `haqa deploy` to write a current lock")


def parse(data: dict, where: Path) -> Lock:
    """`data` as a Lock, once its schema number is this haqa's; a UserError naming every key that is wrong."""
    check_schema(data, where)
    try:
        return Lock.model_validate(data)
    except ValidationError as e:
        problems = _problems(e, data)
        more = f"\n  - ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise UserError(f"{where} is not a lock this haqa can use: it was written by another haqa version, or edited\n"
                        "  - " + "\n  - ".join(problems[:SHOWN]) + more, hint=REDEPLOY) from None


def load(path: Path) -> Lock:
    """The lock in the file at `path` (its bundle's sums are the caller's to check)."""
    return parse(read_json(path), path)


def _problems(e: ValidationError, data: dict) -> list[str]:
    """One line per wrong key. A union (a number is an int or a float) reports each of its branches:
    only the first is kept, and a branch that failed at the table is dropped for one that went deeper."""
    found: dict[str, str] = {}
    for err in e.errors():
        key = _key(err, data)
        found.setdefault(key, _problem(key, err))
    return [line for key, line in found.items()
            if not any(other.startswith(key + ".") for other in found if other != key)]


def _key(err: dict, data) -> str:
    """The error's path into the lock's keys; the names pydantic gives union branches are left out."""
    parts, node = [], data
    for i, part in enumerate(err["loc"]):
        last = i == len(err["loc"]) - 1
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (last and err["type"] == "missing" and isinstance(node, dict)):
            if isinstance(node, (dict, list)):
                continue
            break
        parts.append(str(part))
    return ".".join(parts)


def _problem(key: str, err: dict) -> str:
    if err["type"] == "missing":
        return f"'{key}' is missing"
    if err["type"] == "extra_forbidden":
        table = _model_at(Lock, key.split(".")[:-1])
        valid = f"; valid: {', '.join(table.model_fields)}" if table else ""
        return f"'{key}' is not a key haqa knows there{valid}"
    got = repr(err.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"'{key}': {msg}" + ("" if err["type"] == "value_error" else f" (got {got})")


def _model_at(model: type[BaseModel], parts: list[str]) -> type[BaseModel] | None:
    """The table (model class) at a path of keys, through optional fields, lists and dicts."""
    annotation: object = model
    for part in parts:
        table = _table(annotation)
        if table is not None:
            field = next((f for n, f in table.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return None
            annotation = field.annotation
        else:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if typing.get_origin(annotation) in (list, dict) and args:
                annotation = args[-1]
            else:
                return None
    return _table(annotation)


def _table(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(annotation) if _table(a)), None)
    return None
