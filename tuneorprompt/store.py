"""The run's SQLite store: the generation cache, per-example records and finished arms.

One file per run directory, in WAL mode so a reader (a notebook, `sqlite3`) can look while a run
writes. Every write is committed at once: an interrupted run loses at most the batch in flight,
and a re-run takes every finished generation and arm from here instead of recomputing it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tuneorprompt.backends.base import Backend
from tuneorprompt.records import Completion, ExampleRecord, GenerationSettings

SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY,          -- sha256(fingerprint, settings, prompt)
    fingerprint TEXT NOT NULL,     -- model weights (+ adapter)
    settings TEXT NOT NULL,        -- decoding settings as JSON
    prompt TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    generated_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    arm TEXT NOT NULL, seed INTEGER NOT NULL, split TEXT NOT NULL, example_id TEXT NOT NULL,
    prompt TEXT NOT NULL, completion TEXT NOT NULL, answer TEXT NOT NULL,
    correct REAL NOT NULL, relevance REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL, generated_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
    PRIMARY KEY (arm, seed, split, example_id)
);
CREATE TABLE IF NOT EXISTS arms (
    arm TEXT NOT NULL, seed INTEGER NOT NULL,
    info TEXT NOT NULL,            -- JSON: notes (chosen instruction, k, ...) and training cost
    PRIMARY KEY (arm, seed)
);
"""


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.cache_stats = CacheStats()  # generations served from / added to this store by this process
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ---- generation cache -------------------------------------------------------------------

    @staticmethod
    def generation_key(fingerprint: str, settings: GenerationSettings, prompt: str) -> str:
        payload = json.dumps([fingerprint, asdict(settings), prompt], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def cached(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, text, prompt_tokens, generated_tokens, seconds FROM generations "
                f"WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update({row[0]: Completion(*row[1:]) for row in rows})
        return found

    def put_generations(
        self, fingerprint: str, settings: GenerationSettings, prompts: Sequence[str], completions: Sequence[Completion]
    ) -> None:
        settings_json = json.dumps(asdict(settings))
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?)",
                [
                    (self.generation_key(fingerprint, settings, p), fingerprint, settings_json, p,
                     c.text, c.prompt_tokens, c.generated_tokens, c.seconds)
                    for p, c in zip(prompts, completions)
                ],
            )

    # ---- per-example records and finished arms ---------------------------------------------

    def put_records(self, records: Sequence[ExampleRecord]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [tuple(asdict(r).values()) for r in records],
            )

    def records(self, arm: str, seed: int, split: str) -> list[ExampleRecord]:
        rows = self._db.execute(
            "SELECT * FROM records WHERE arm=? AND seed=? AND split=? ORDER BY rowid", (arm, seed, split)
        )
        return [ExampleRecord(*row) for row in rows]

    def finish_arm(self, arm: str, seed: int, info: dict) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO arms VALUES (?,?,?)", (arm, seed, json.dumps(info)))

    def finished_arm(self, arm: str, seed: int) -> dict | None:
        row = self._db.execute("SELECT info FROM arms WHERE arm=? AND seed=?", (arm, seed)).fetchone()
        return json.loads(row[0]) if row else None


class CachedBackend:
    """A backend whose generations go through the store: only prompts never seen for this model
    and these settings reach the wrapped backend. Composition, so any backend gets a cache."""

    def __init__(self, backend: Backend, store: Store):
        self.inner = backend
        self.store = store
        self.fingerprint = backend.fingerprint
        self.context_length = backend.context_length
        self.num_parameters = backend.num_parameters

    def generate(self, prompts: Sequence[str], settings: GenerationSettings) -> list[Completion]:
        keys = [Store.generation_key(self.fingerprint, settings, p) for p in prompts]
        found = self.store.cached(keys)
        missing = list(dict.fromkeys(p for p, k in zip(prompts, keys) if k not in found))
        self.store.cache_stats.hits += len(prompts) - len(missing)
        self.store.cache_stats.misses += len(missing)
        if missing:
            fresh = self.inner.generate(missing, settings)
            self.store.put_generations(self.fingerprint, settings, missing, fresh)
            found.update({Store.generation_key(self.fingerprint, settings, p): c for p, c in zip(missing, fresh)})
        return [found[k] for k in keys]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[float]:
        return self.inner.loglikelihood(requests)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)
