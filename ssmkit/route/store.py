"""The router's SQLite database: every decision with its features, every outcome, and the learned per-arm sums.

The arms table is the whole learned state, so a new process on the same file continues exactly where the last one
stopped. The schema is versioned in `meta`; opening a file of another version is an error naming the file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (      -- schema_version, seed, decisions (the decision counter), config (JSON)
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    seq               INTEGER PRIMARY KEY,   -- 1, 2, ...; also indexes the random draws of this decision
    request_id        TEXT NOT NULL UNIQUE,
    created_at        REAL NOT NULL,         -- clock seconds
    bucket            TEXT NOT NULL,
    seq_len           INTEGER NOT NULL,
    task              TEXT NOT NULL,
    latency_budget_ms REAL,
    gpu_memory_gb     REAL,
    requires_icl      INTEGER NOT NULL,
    rule              TEXT NOT NULL,
    rule_backend      TEXT NOT NULL,         -- what the rule alone would have chosen
    backend           TEXT NOT NULL,         -- where the request went
    source            TEXT NOT NULL,         -- rule | feedback | explore | fallback | unavailable
    confidence        REAL NOT NULL,
    reason            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_bucket ON decisions (bucket, seq);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id  TEXT PRIMARY KEY REFERENCES decisions (request_id),
    latency_ms  REAL,                        -- measured by the server
    error       INTEGER NOT NULL DEFAULT 0,
    quality     REAL,                        -- posted by the client, in [0, 1]
    reward      REAL,                        -- set once the outcome is complete and applied to `arms`
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS arms (          -- sufficient statistics of each (bucket, backend) reward distribution
    bucket        TEXT NOT NULL,
    backend       TEXT NOT NULL,
    n             INTEGER NOT NULL,
    reward_sum    REAL NOT NULL,
    reward_sq_sum REAL NOT NULL,
    errors        INTEGER NOT NULL,
    PRIMARY KEY (bucket, backend)
);
"""


class FeedbackStore:
    """A connection to one router database (a file path, or ":memory:"), safe to share between threads."""

    def __init__(self, path):
        self.path = str(path)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        try:
            if self.path != ":memory:":
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(SCHEMA)  # idempotent (IF NOT EXISTS); executescript commits, so outside BEGIN
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise ValueError(f"{self.path}: not a router database ({err})") from None
        with self.transaction():
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise ValueError(f"{self.path}: router database schema version {version}, "
                                 f"this ssmkit reads version {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error), serialized across threads."""
        with self._lock:
            if self.conn.in_transaction:  # nested use joins the outer transaction
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def next_seq(self) -> int:
        """Increments and returns the decision counter; call inside a transaction."""
        seq = int(self.get_meta("decisions") or 0) + 1
        self.set_meta("decisions", str(seq))
        return seq

    def insert_decision(self, row: dict) -> None:
        cols = ", ".join(row)
        self.conn.execute(f"INSERT INTO decisions ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def decision(self, request_id: str):
        return self.conn.execute("SELECT * FROM decisions WHERE request_id = ?", (request_id,)).fetchone()

    def outcome(self, request_id: str):
        return self.conn.execute("SELECT * FROM outcomes WHERE request_id = ?", (request_id,)).fetchone()

    def upsert_outcome(self, request_id: str, now: float, **values) -> None:
        """Sets the given outcome columns (latency_ms, error, quality, reward) of one request."""
        self.conn.execute("INSERT INTO outcomes (request_id, updated_at) VALUES (?, ?) "
                          "ON CONFLICT (request_id) DO NOTHING", (request_id, now))
        sets = ", ".join(f"{k} = ?" for k in values)
        self.conn.execute(f"UPDATE outcomes SET {sets}, updated_at = ? WHERE request_id = ?",
                          (*values.values(), now, request_id))

    def add_reward(self, bucket: str, backend: str, reward: float, error: bool) -> None:
        self.conn.execute(
            "INSERT INTO arms (bucket, backend, n, reward_sum, reward_sq_sum, errors) VALUES (?, ?, 1, ?, ?, ?) "
            "ON CONFLICT (bucket, backend) DO UPDATE SET n = n + 1, reward_sum = reward_sum + excluded.reward_sum, "
            "reward_sq_sum = reward_sq_sum + excluded.reward_sq_sum, errors = errors + excluded.errors",
            (bucket, backend, reward, reward * reward, int(error)))

    def arms(self, bucket: str) -> dict[str, tuple[int, float]]:
        """backend -> (n, reward_sum) for one bucket."""
        rows = self.conn.execute("SELECT backend, n, reward_sum FROM arms WHERE bucket = ?", (bucket,))
        return {r["backend"]: (r["n"], r["reward_sum"]) for r in rows}

    def dump(self) -> dict:
        """Everything in the database as plain Python values, ordered, for comparing two states."""
        out = {"meta": dict(self.conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall())}
        for table, order in (("decisions", "seq"), ("outcomes", "request_id"), ("arms", "bucket, backend")):
            out[table] = [tuple(r) for r in self.conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
        return out

    def save_config(self, config: dict) -> None:
        self.set_meta("config", json.dumps(config, sort_keys=True))

    def close(self) -> None:
        self.conn.close()


def open_readonly(path) -> sqlite3.Connection:
    """Opens an existing router database for reading (FileNotFoundError when missing, ValueError on a bad version)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such router database")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as err:
        conn.close()
        raise ValueError(f"{path}: not a router database ({err})") from None
    if row is None or int(row[0]) != SCHEMA_VERSION:
        conn.close()
        raise ValueError(f"{path}: router database schema version {row and row[0]}, expected {SCHEMA_VERSION}")
    return conn
