"""The trace store: an embedded DuckDB file holding runs, per-layer events, MoE routing and baselines.

Events arrive in batches; each batch is written in one transaction, so a run that is interrupted (an exception,
a killed process) keeps every batch committed before it. The schema is in schema.py.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
from pathlib import Path

import duckdb
import numpy as np

from .events import EVENT_COLUMNS, MOE_COLUMNS
from .schema import SCHEMA_VERSION, TABLES

_EVENT_DTYPES = {"run_id": np.int32, "call_id": np.int64, "request_id": np.int32, "phase": object,
                 "step": np.int32, "layer_idx": np.int32, "layer_type": object, "batch": np.int32,
                 "seqlen": np.int32, "start_ns": np.int64, "duration_ns": np.int64}

SqlError = duckdb.Error


class TraceStore:
    """A DuckDB trace store. path ":memory:" (the default) keeps it in memory.

    read_only opens an existing file for analysis; a missing file raises FileNotFoundError. Opening a store
    written with another schema version raises ValueError.
    """

    def __init__(self, path: str | Path = ":memory:", *, read_only: bool = False):
        self.path = str(path)
        if read_only and self.path != ":memory:" and not Path(self.path).is_file():
            raise FileNotFoundError(f"db: no trace store at {self.path}")
        self.con = duckdb.connect(self.path, read_only=read_only)
        self._lock = threading.Lock()  # one writer at a time (the profiler may write from a worker thread)
        if not read_only:
            self._create()
        self._check_version()

    def _create(self) -> None:
        self.con.execute("BEGIN")
        for ddl in TABLES.values():
            self.con.execute(ddl)
        self.con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                         [str(SCHEMA_VERSION)])
        self.con.execute("COMMIT")

    def _check_version(self) -> None:
        try:
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.CatalogException:
            row = None
        if row is None or row[0] != str(SCHEMA_VERSION):
            got = "no ssmkit schema" if row is None else f"schema version {row[0]}"
            raise ValueError(f"db: expected an ssmkit trace store of schema version {SCHEMA_VERSION}, "
                             f"got {got} in {self.path}")

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "TraceStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self):
        """A cursor inside BEGIN ... COMMIT (ROLLBACK on an exception), holding the store's write lock."""
        with self._lock:
            cur = self.con.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    # Runs
    def begin_run(self, name: str | None, *, clock: str, device: str, model: dict, environment: dict) -> int:
        """Inserts a run with status 'running' (committed at once) and returns its run_id."""
        with self.transaction() as cur:
            run_id = cur.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
            cur.execute("INSERT INTO runs (run_id, name, status, started_at, clock, device, model, environment) "
                        "VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                        [run_id, name, utcnow(), clock, device, json.dumps(model), json.dumps(environment)])
        return int(run_id)

    def end_run(self, run_id: int, *, status: str, wall_ns: int | None, error: str | None = None) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET status = ?, error = ?, ended_at = ?, wall_ns = ? WHERE run_id = ?",
                        [status, error, utcnow(), wall_ns, run_id])

    def latest_run_id(self) -> int:
        """The newest run; ValueError when the store holds none."""
        row = self.query("SELECT max(run_id) FROM runs")[1][0]
        if row[0] is None:
            raise ValueError(f"db: the trace store {self.path} holds no runs")
        return int(row[0])

    def check_run(self, run_id: int | None) -> int:
        """run_id itself when it exists, the newest run when None; ValueError naming the runs otherwise."""
        if run_id is None:
            return self.latest_run_id()
        if self.query("SELECT count(*) FROM runs WHERE run_id = ?", [run_id])[1][0][0] == 0:
            have = [r[0] for r in self.query("SELECT run_id FROM runs ORDER BY run_id")[1]]
            raise ValueError(f"run: expected one of the runs {have}, got {run_id}")
        return run_id

    # Batches
    def write_batch(self, events: list[tuple] | dict, moe: list[tuple] = (), kernels: list[tuple] = ()) -> None:
        """Writes events (rows in EVENT_COLUMNS order, or {column: numpy array} with every EVENT_COLUMNS name),
        moe_routing (MOE_COLUMNS order) and kernels rows in one transaction. Safe to call from one worker thread
        while the caller's thread records."""
        if isinstance(events, dict):
            columns = {name: np.asarray(events[name], dtype=_EVENT_DTYPES[name]) for name in EVENT_COLUMNS}
        else:
            columns = {name: np.array(col, dtype=_EVENT_DTYPES[name])
                       for name, col in zip(EVENT_COLUMNS, zip(*events))}
        with self.transaction() as cur:
            if columns and len(columns["call_id"]):
                _insert_columns(cur, "events", columns)
            if moe:  # object columns scanned by DuckDB: about half the time of binding lists as parameters
                _insert_columns(cur, "moe_routing", {name: _objects(col) for name, col in zip(MOE_COLUMNS, zip(*moe))})
            if kernels:
                cur.execute("INSERT INTO kernels SELECT unnest($1), unnest($2), unnest($3), unnest($4), "
                            "unnest($5)", [list(col) for col in zip(*kernels)])

    # Reading
    def query(self, sql: str, params: list | dict | None = None) -> tuple[list[str], list[tuple]]:
        """Runs any SQL; returns (column names, rows). SQL errors raise SqlError (duckdb.Error) with DuckDB's
        message."""
        with self._lock:
            cur = self.con.cursor()
            try:
                cur.execute(sql, params or [])
                if cur.description is None:
                    return [], []
                return [d[0] for d in cur.description], cur.fetchall()
            finally:
                cur.close()

    def rows(self, sql: str, params: list | dict | None = None) -> list[dict]:
        """query() as a list of {column: value} dicts."""
        columns, rows = self.query(sql, params)
        return [dict(zip(columns, r)) for r in rows]


def _insert_columns(cur, table: str, columns: dict[str, np.ndarray]) -> None:
    """INSERT of whole numpy columns through a registered view (no per-row Python work)."""
    cur.register("_ssmkit_batch", columns)
    try:
        cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM _ssmkit_batch")
    finally:
        cur.unregister("_ssmkit_batch")


def _objects(values: tuple) -> np.ndarray:
    """A 1-D object array of `values` (lists stay list elements, not a second axis)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
