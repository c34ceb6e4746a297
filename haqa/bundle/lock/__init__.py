"""haqa.lock.json, typed and versioned: its shape declared once (model.py for the lock's tables,
records.py for the measurements it records), built in one place (build.py) and read in one place
(read.py). Every reader (ship, --from-lock, REPORT.md, pareto.png, the benchmarks) reads the Lock's
fields; nothing indexes the JSON by key."""

from haqa.bundle.lock.model import SCHEMA, Lock, Runtime
from haqa.bundle.lock.read import LOCK_NAME, REDEPLOY, check_schema, load, parse, read_json
from haqa.bundle.lock.records import Knobs

__all__ = ["LOCK_NAME", "REDEPLOY", "SCHEMA", "Knobs", "Lock", "Runtime", "check_schema", "load", "parse",
           "read_json"]
