"""haqa.lock.json, typed and versioned: built in one place (build.py), read in one place (read.py),
its shape declared once (model.py). Every reader (ship, --from-lock, REPORT.md, pareto.png, the
benchmarks) reads the Lock's fields; nothing indexes the JSON by key."""

from haqa.bundle.lock.model import SCHEMA, Knobs, Lock, Runtime
from haqa.bundle.lock.read import LOCK_NAME, REDEPLOY, check_schema, load, parse, read_json

__all__ = ["LOCK_NAME", "REDEPLOY", "SCHEMA", "Knobs", "Lock", "Runtime", "check_schema", "load", "parse",
           "read_json"]
