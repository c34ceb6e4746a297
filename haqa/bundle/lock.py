"""The fields of haqa.lock.json that `haqa ship` and `haqa deploy --from-lock` read, typed.

A lock is read once, here, and checked before anything uses it: a key missing or of the wrong type, a
runtime knob haqa does not have, a name that is not a schema name (names become paths and service
names) or a quant type haqa does not know is refused with the key. Keys this module does not read are
kept as they are. (A later issue turns this into the full typed lock.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationError)

from haqa.config.quants import QUANT_NAMES
from haqa.config.schema import KV_TYPES, Name, Target
from haqa.errors import UserError
from haqa.runtime import RuntimeConfig

LOCK_NAME = "haqa.lock.json"
REDEPLOY = "run `haqa deploy` again to write a fresh bundle"


def _quant(v: str) -> str:
    if v not in QUANT_NAMES:
        raise ValueError(f"not a GGUF quant type haqa knows, got {v!r}; valid: {', '.join(QUANT_NAMES)}")
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {v!r}")
    return v


Quant = Annotated[StrictStr, AfterValidator(_quant)]
Bytes = Annotated[StrictInt | StrictFloat, AfterValidator(_finite), Field(ge=0)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]


class _Part(BaseModel):
    """A table of the lock: the keys haqa reads are typed, any others are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Runtime(BaseModel):
    """The locked llama.cpp flags: RuntimeConfig's fields and the server argv they made, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    threads: StrictInt = Field(gt=0)
    ctx_size: StrictInt = Field(gt=0)
    n_gpu_layers: StrictInt = Field(default=0, ge=0)
    batch_size: StrictInt = Field(default=2048, gt=0)
    ubatch_size: StrictInt = Field(default=512, gt=0)
    cache_type_k: Literal[tuple(KV_TYPES)] = "f16"  # type: ignore[valid-type]
    cache_type_v: Literal[tuple(KV_TYPES)] = "f16"  # type: ignore[valid-type]
    flash_attn: Literal["on", "off", "auto"] = "auto"
    threads_batch: Optional[StrictInt] = Field(default=None, gt=0)
    repack: StrictBool = True
    load_mode: Literal["auto", "mmap", "none", "mlock", "mmap+mlock"] = "auto"
    poll: StrictInt = Field(default=50, ge=0, le=100)
    server_args: list[StrictStr] = []

    def config(self) -> RuntimeConfig:
        return RuntimeConfig(**self.model_dump(exclude={"server_args"}))


class LockedTarget(_Part):
    name: Name
    facts: Target


class LockedRecipe(_Part):
    name: Name


class LockedModel(_Part):
    file_type: Quant


class LlamaCpp(_Part):
    cmake_options: dict[StrictStr, StrictStr] = {}


class Predicted(_Part):
    host_bytes: Bytes
    gpu_bytes: Bytes = 0


class Memory(_Part):
    deployment_predicted: Predicted


class Metrics(_Part):
    memory: Memory


class Lock(_Part):
    """What `haqa ship` reads."""

    target: LockedTarget
    recipe: LockedRecipe
    model: LockedModel
    runtime: Runtime
    llama_cpp: LlamaCpp = LlamaCpp()
    metrics: Metrics
    files: dict[StrictStr, Sha256] = {}


# -- what `haqa deploy --from-lock` reads as well ---------------------------------------------------

class HashedRecipe(LockedRecipe):
    sha256: Sha256


class SourceModel(_Part):
    sha256: Sha256


class HashedModel(LockedModel):
    sha256: Sha256


class LockedBuild(LlamaCpp):
    commit: StrictStr


class Speed(_Part):
    mean: Annotated[StrictInt | StrictFloat, AfterValidator(_finite), Field(gt=0)]


class Bench(_Part):
    decode: Speed
    prefill: Speed


class MeasuredMetrics(Metrics):
    bench: Bench


class ReproducibleLock(Lock):
    """What `haqa deploy --from-lock` reads: the ship fields, and what the choice was made from."""

    haqa_version: StrictStr
    created: StrictStr
    recipe: HashedRecipe
    source_model: SourceModel
    model: HashedModel
    llama_cpp: LockedBuild
    metrics: MeasuredMetrics
    selection: dict = {}


def read_json(path: Path) -> dict:
    """The JSON object in a lock file; a UserError for a file that is missing, a folder, unreadable,
    not UTF-8, not JSON or not an object."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"no lock file at {path}", hint="pass a bundle folder or its haqa.lock.json") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a lock file", hint="pass a bundle folder or its haqa.lock.json") from None
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


def parse(data: dict, where: Path, model: type[Lock] = Lock) -> Lock:
    """`data` checked against `model`; a UserError naming every key that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = [_problem(err, model) for err in e.errors()]
        more = f"\n  - ... and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise UserError(f"{where} is not a lock this haqa can use: it was written by another haqa version, or edited\n"
                        "  - " + "\n  - ".join(problems[:8]) + more, hint=REDEPLOY) from None


def _problem(err: dict, model: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "missing":
        return f"'{key}' is missing"
    if err["type"] == "extra_forbidden":
        for part in err["loc"][:-1]:
            field = model.model_fields.get(str(part))
            model = field.annotation if field else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                return f"'{key}' is not a key haqa knows there"
        return f"'{key}' is not a key haqa knows there; valid: {', '.join(model.model_fields)}"
    got = repr(err.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"'{key}': {msg}" + ("" if err["type"] == "value_error" else f" (got {got})")
