"""The run's SQLite store: the generation cache, per-example records, finished arms and the runs
that used the directory.

Every stored result is keyed by a content key (`keys.py`): a generation by the serving identity of
the model, the decoding settings and the exact prompt; an arm's records and notes by everything
that determined them. A re-run with other settings therefore never reads a result its settings did
not produce, and reads back every one they did.

One file per run directory, in WAL mode so a reader (a notebook, `sqlite3`) can look while a run
writes. Every write is committed at once: an interrupted run loses at most the batch in flight.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

from tuneorprompt.keys import STORE_LAYOUT, generation_key
from tuneorprompt.records import Completion, ExampleRecord, GenerationSettings

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,          -- content_key(serving identity, settings, prompt)
    fingerprint TEXT NOT NULL,     -- serving identity: weights (+ adapter), dtype, device type, chat template
    settings TEXT NOT NULL,        -- decoding settings as JSON
    prompt TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    generated_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    key TEXT NOT NULL,             -- the arm result (or dev selection) these records belong to
    arm TEXT NOT NULL, seed INTEGER NOT NULL, split TEXT NOT NULL, example_id TEXT NOT NULL,
    targets TEXT NOT NULL,         -- JSON list of the acceptable answers
    prompt TEXT NOT NULL, completion TEXT NOT NULL, answer TEXT NOT NULL,
    correct REAL NOT NULL, correct_lenient REAL NOT NULL,
    relevance REAL,                -- NULL where not computed (dev records: no choice uses relevance)
    prompt_tokens INTEGER NOT NULL, generated_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
    PRIMARY KEY (key, arm, split, example_id)
);
CREATE TABLE IF NOT EXISTS arm_results (
    key TEXT PRIMARY KEY,          -- content_key of everything that determined the arm's test records
    arm TEXT NOT NULL, seed INTEGER NOT NULL,
    info TEXT NOT NULL,            -- JSON: notes (chosen instruction, k, ...) and training cost
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    key TEXT PRIMARY KEY,          -- keys.plan_key: what the plan's checks and cost estimates depended on
    estimates TEXT NOT NULL        -- JSON: every arm's estimated cost, cheapest first
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    status TEXT NOT NULL,          -- running | finished | failed | interrupted
    error TEXT,                    -- the error's message for failed / interrupted runs
    config_key TEXT NOT NULL       -- content_key of the resolved config
);
"""

RUN_STATUSES = ("running", "finished", "failed", "interrupted")


class StoreError(ValueError):
    """A store that cannot be used (not a database, another layout, disk full); names the file."""


@dataclass(frozen=True)
class RunRow:
    id: int
    pid: int
    started_at: float
    ended_at: float | None
    status: str
    error: str | None
    config_key: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        text = f"the previous run (pid {self.pid}, started {started}) {self.status}"
        if self.status == "running":
            text = f"the previous run (pid {self.pid}, started {started}) ended without recording how (killed?)"
        return text + (f": {self.error}" if self.error else "")


_RECORD_FIELDS = tuple(f.name for f in fields(ExampleRecord))


def _column(record: ExampleRecord, field: str):
    value = getattr(record, field)
    return json.dumps(list(value), ensure_ascii=False) if field == "targets" else value


def _nan_if_null(value: float | None) -> float:
    return float("nan") if value is None else value


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._check_layout()
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise StoreError(self._explain(error)) from None

    def _check_layout(self) -> None:
        layout = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if tables and layout != STORE_LAYOUT:
            raise StoreError(
                f"{self.path}: written by another version of tuneorprompt (store layout {layout}, this one reads "
                f"{STORE_LAYOUT}); use a new run directory (--out) or delete this one"
            )
        self._db.execute(f"PRAGMA user_version = {STORE_LAYOUT}")

    def _explain(self, error: sqlite3.Error) -> str:
        message = str(error)
        if "not a database" in message or "malformed" in message:
            return f"{self.path}: not a readable tuneorprompt store ({message}); move it away or use a new run directory"
        if "disk is full" in message or "disk I/O" in message:
            return f"{self.path}: cannot write ({message}); free disk space and run again: finished work is kept"
        return f"{self.path}: {message}"

    def _write(self, sql: str, args: tuple = (), *, many: Sequence[tuple] | None = None) -> sqlite3.Cursor:
        """One committed write (of `many` rows, when given); sqlite errors (disk full, a corrupted
        file) become StoreError."""
        try:
            with self._db:
                return self._db.executemany(sql, many) if many is not None else self._db.execute(sql, args)
        except sqlite3.DatabaseError as error:
            raise StoreError(self._explain(error)) from None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as error:
            raise StoreError(self._explain(error)) from None

    def close(self) -> None:
        self._db.close()

    # ---- generation cache -------------------------------------------------------------------

    def cached(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            rows = self._read(
                f"SELECT key, text, prompt_tokens, generated_tokens, seconds FROM generations "
                f"WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update(
                {row["key"]: Completion(row["text"], row["prompt_tokens"], row["generated_tokens"], row["seconds"])
                 for row in rows}
            )
        return found

    def put_generations(
        self, fingerprint: str, settings: GenerationSettings, prompts: Sequence[str], completions: Sequence[Completion]
    ) -> None:
        settings_json = json.dumps(asdict(settings))
        self._write(
            "INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?)",
            many=[
                (generation_key(fingerprint, settings, p), fingerprint, settings_json, p,
                 c.text, c.prompt_tokens, c.generated_tokens, c.seconds)
                for p, c in zip(prompts, completions)
            ],
        )

    # ---- per-example records and finished arms ---------------------------------------------

    def put_records(self, key: str, records: Sequence[ExampleRecord]) -> None:
        if not records:
            return
        columns = ",".join(("key",) + _RECORD_FIELDS)
        self._write(
            f"INSERT OR REPLACE INTO records ({columns}) VALUES ({','.join('?' * (len(_RECORD_FIELDS) + 1))})",
            many=[(key, *(_column(r, f) for f in _RECORD_FIELDS)) for r in records],
        )

    def records(self, key: str, split: str) -> list[ExampleRecord]:
        rows = self._read("SELECT * FROM records WHERE key=? AND split=? ORDER BY rowid", (key, split))
        # SQLite stores a NaN as NULL: an uncomputed relevance comes back as NaN, as it went in.
        return [
            ExampleRecord(**{f: row[f] for f in _RECORD_FIELDS} | {
                "targets": tuple(json.loads(row["targets"])), "relevance": _nan_if_null(row["relevance"])
            })
            for row in rows
        ]

    def finish_arm(self, key: str, arm: str, seed: int, info: dict) -> None:
        self._write("INSERT OR REPLACE INTO arm_results VALUES (?,?,?,?,?)",
                    (key, arm, seed, json.dumps(info), time.time()))

    def finished_arm(self, key: str) -> dict | None:
        rows = self._read("SELECT info FROM arm_results WHERE key=?", (key,))
        return json.loads(rows[0]["info"]) if rows else None

    # ---- plans: checks passed and costs estimated, by content ------------------------------------

    def put_plan(self, key: str, plan: dict) -> None:
        """A run's plan: its cost estimates and its searches' budgets (`experiment.plan_run`)."""
        self._write("INSERT OR REPLACE INTO plans VALUES (?,?)", (key, json.dumps(plan)))

    # ---- runs: who used this directory, and how it ended ----------------------------------------

    def begin_run(self, config_key: str) -> int:
        cursor = self._write(
            "INSERT INTO runs (pid, started_at, status, config_key) VALUES (?,?,?,?)",
            (os.getpid(), time.time(), "running", config_key),
        )
        return int(cursor.lastrowid)

    def end_run(self, run_id: int, status: str, error: str | None = None) -> None:
        if status not in RUN_STATUSES[1:]:
            raise ValueError(f"unknown final run status {status!r}")
        self._write("UPDATE runs SET status=?, error=?, ended_at=? WHERE id=?", (status, error, time.time(), run_id))

    def runs(self) -> Iterator[RunRow]:
        for row in self._read("SELECT * FROM runs ORDER BY id"):
            yield RunRow(**{name: row[name] for name in row.keys()})


def stored_plan(path: Path, key: str) -> dict | None:
    """The cost estimates a run directory's store holds for a plan of this content key, read without
    writing (a plan is checked before anything is written). None when there is no store or no such
    plan: the plan is then made in full, and anything wrong with the store is reported when it opens."""
    if not Path(path).is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT estimates FROM plans WHERE key=?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    return json.loads(row[0]) if row else None
