"""The trial store: one SQLite file per (target, recipe) recording every trial.

A trial is identified by what makes its measurement valid: the candidate (quant and runtime flags),
the candidate GGUF's hash and the llama.cpp toolchain. A second deploy reuses what is still valid
and re-measures nothing else; failed trials are kept with their cause (out of memory, crash, timeout,
build error) so no proposer is offered them again. A trial that failed for a reason outside the
candidate (the connection to the device was lost for good, the device's disk was full) is kept too,
and the next run marks it discarded and measures the candidate again.

Every text and measurement is redacted of secrets before it is written (haqa/secrets.py): an error
text that echoes an API key does not keep it here.

A row is written only when its trial has ended, in one transaction: an interrupted run (Ctrl-C, a
lost connection, a crash) leaves every finished trial and no half-recorded one, so there is no
"running" state to clean up.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from haqa import paths, ui
from haqa.errors import UserError
from haqa.secrets import redact, redact_obj

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,              -- candidate key + model sha + toolchain: what keeps a result valid
    candidate TEXT NOT NULL,        -- JSON: quant and runtime flags
    quant TEXT NOT NULL,
    model_sha256 TEXT,
    toolchain TEXT NOT NULL,
    status TEXT NOT NULL,           -- ok | failed | discarded
    cause TEXT,                     -- for failed: oom | crash | timeout | error | connection | disk; for discarded: why
    error TEXT,
    bench TEXT,                     -- JSON, measured
    quality TEXT,                   -- JSON, measured
    memory TEXT,                    -- JSON, predicted and measured
    proposer TEXT NOT NULL,
    rationale TEXT,
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trials_key ON trials(key);
"""


@dataclass
class StoredTrial:
    id: int
    key: str
    candidate: dict
    quant: str
    model_sha256: str | None
    toolchain: str
    status: str
    cause: str | None
    error: str | None
    bench: dict | None
    quality: dict | None
    memory: dict | None
    proposer: str
    rationale: str | None
    created: str


_COLUMNS = ("id, key, candidate, quant, model_sha256, toolchain, status, cause, error, bench, quality, memory, "
            "proposer, rationale, created")


def _json_dict(text: str | None, *, required: bool = False) -> dict | None:
    if not text:
        if required:
            raise ValueError("missing")
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {text[:40]!r}")
    return value


def _decode(r: tuple) -> StoredTrial:
    if not all(isinstance(v, str) for v in (r[1], r[3], r[5], r[6])) or not isinstance(r[0], int):
        raise ValueError("a key column is not text")
    return StoredTrial(id=r[0], key=r[1], candidate=_json_dict(r[2], required=True), quant=r[3], model_sha256=r[4],
                       toolchain=r[5], status=r[6], cause=r[7], error=r[8], bench=_json_dict(r[9]),
                       quality=_json_dict(r[10]), memory=_json_dict(r[11]), proposer=str(r[12]),
                       rationale=r[13], created=str(r[14]))


def store_path(target: str, recipe: str) -> Path:
    return paths.cache_home() / "trials" / f"{recipe}@{target}.sqlite"


class TrialStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.damaged = 0  # rows that could not be read back (skipped)
        try:
            self.db = sqlite3.connect(str(path))
            self.db.executescript(SCHEMA)
            self.db.commit()
            self.db.execute(f"SELECT {_COLUMNS} FROM trials LIMIT 1").fetchall()
        except sqlite3.Error as e:
            raise UserError(f"the trial store {path} cannot be read ({e}): it is damaged or is not haqa's",
                            hint=f"move it aside (mv '{path}' '{path}.damaged') and run again: haqa then starts a "
                                 "new store and measures every trial anew") from None

    def close(self) -> None:
        self.db.close()

    def add(self, *, key: str, candidate: dict, quant: str, model_sha256: str | None, toolchain: str, status: str,
            proposer: str, rationale: str | None = None, cause: str | None = None, error: str | None = None,
            bench: dict | None = None, quality: dict | None = None, memory: dict | None = None) -> int:
        """Record one trial (in its own transaction: an interrupted run leaves every finished trial)."""
        candidate, bench, quality, memory = (redact_obj(x) for x in (candidate, bench, quality, memory))
        rationale, cause, error = (redact(x) if x else x for x in (rationale, cause, error))
        with self.db:
            cur = self.db.execute(
                "INSERT INTO trials (key, candidate, quant, model_sha256, toolchain, status, cause, error, bench, "
                "quality, memory, proposer, rationale, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, json.dumps(candidate), quant, model_sha256, toolchain, status, cause, error,
                 json.dumps(bench) if bench else None, json.dumps(quality) if quality else None,
                 json.dumps(memory) if memory else None, proposer, rationale,
                 dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
            return int(cur.lastrowid)

    def discard(self, trial_id: int, why: str) -> None:
        with self.db:
            self.db.execute("UPDATE trials SET status = 'discarded', cause = ? WHERE id = ?", (redact(why), trial_id))

    def _rows(self, where: str = "", args: tuple = ()) -> list[StoredTrial]:
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM trials {where} ORDER BY id", args)
        out, damaged = [], 0
        for r in cur.fetchall():
            try:
                out.append(_decode(r))
            except (TypeError, ValueError):  # edited or damaged by hand: not a trial haqa can trust
                damaged += 1
        if damaged > self.damaged:
            self.damaged = damaged
            ui.note(f"trial store {self.path}: {damaged} damaged row(s) skipped (their candidates are measured again)")
        return out

    def all(self) -> list[StoredTrial]:
        return self._rows()

    def latest(self, key: str) -> StoredTrial | None:
        """The newest ok or failed record of a key (a discarded one does not count)."""
        rows = self._rows("WHERE key = ? AND status != 'discarded'", (key,))
        return rows[-1] if rows else None
