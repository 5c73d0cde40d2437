"""Baselines and alerts: per (phase, layer type) percentiles of one or more runs saved under a name, and a check of a
run against them that flags only deviations past both a relative and an absolute margin, on enough samples.

A percentile regresses when current > baseline * (1 + rel) + abs_ns. The relative margin absorbs run-to-run
scaling noise, the absolute margin absorbs jitter of very short layers, and min_samples keeps a handful of calls
from deciding anything. The p95 limit is at least the baseline's p99: a tail the baseline already had is noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .store import TraceStore, utcnow

_PERCENTILES = """
SELECT phase, layer_type, count(*) AS n, quantile_cont(duration_ns, 0.5) AS p50_ns,
       quantile_cont(duration_ns, 0.95) AS p95_ns, quantile_cont(duration_ns, 0.99) AS p99_ns,
       avg(duration_ns) AS mean_ns
FROM events WHERE list_contains($runs, run_id) GROUP BY ALL ORDER BY ALL
"""


@dataclass
class Thresholds:
    """Margins of `check_baseline`. p99 is compared only when check_p99 (it needs many samples to be stable)."""

    rel_p50: float = 0.5
    rel_p95: float = 1.0
    rel_p99: float = 2.0
    abs_ns: float = 50_000.0
    min_samples: int = 20
    check_p99: bool = False

    def __post_init__(self):
        for name in ("rel_p50", "rel_p95", "rel_p99", "abs_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples: expected >= 1, got {self.min_samples}")


@dataclass
class Alert:
    """One deviation. kind: "regression" (a percentile past its limit) or "missing" (a layer type of the
    baseline that the run never called)."""

    kind: str
    phase: str
    layer_type: str
    metric: str
    baseline_ns: float | None
    current_ns: float | None
    limit_ns: float | None
    ratio: float | None
    n_baseline: int
    n_current: int


def percentiles(store: TraceStore, run_ids: list[int]) -> list[dict]:
    """Per (phase, layer_type): n, p50_ns, p95_ns, p99_ns, mean_ns over the events of run_ids pooled."""
    return store.rows(_PERCENTILES, {"runs": run_ids})


def save_baseline(store: TraceStore, name: str, run_ids: list[int] | None = None) -> list[dict]:
    """Stores the percentiles of run_ids (default: the newest run) as baseline `name`, replacing an earlier one
    of that name. Returns the stored rows."""
    if not name:
        raise ValueError("name: expected a non-empty baseline name")
    run_ids = [store.check_run(r) for r in (run_ids or [None])]
    rows = percentiles(store, run_ids)
    if not rows:
        raise ValueError(f"run: runs {run_ids} hold no events to make a baseline from")
    now = utcnow()
    with store.transaction() as cur:
        cur.execute("DELETE FROM baselines WHERE name = ?", [name])
        for r in rows:
            cur.execute("INSERT INTO baselines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [name, r["phase"], r["layer_type"], r["n"], r["p50_ns"], r["p95_ns"], r["p99_ns"],
                         r["mean_ns"], run_ids, now])
    return rows


def baseline_names(store: TraceStore) -> list[str]:
    return [r[0] for r in store.query("SELECT DISTINCT name FROM baselines ORDER BY name")[1]]


def check_baseline(store: TraceStore, name: str, run_id: int | None = None,
                   thresholds: Thresholds | None = None) -> list[Alert]:
    """Alerts of run `run_id` (the newest when None) against baseline `name`; an empty list means no deviation.

    Faster layers never alert. A layer type the run has but the baseline lacks is not an alert (nothing to
    compare with); a layer type of the baseline with no call in the run is ("missing").
    """
    t = thresholds or Thresholds()
    base = {(r["phase"], r["layer_type"]): r for r in store.rows("SELECT * FROM baselines WHERE name = ?", [name])}
    if not base:
        raise ValueError(f"baseline: expected one of the saved baselines {baseline_names(store)}, got {name!r}")
    run_id = store.check_run(run_id)
    current = {(r["phase"], r["layer_type"]): r for r in percentiles(store, [run_id])}
    metrics = [("p50", t.rel_p50), ("p95", t.rel_p95)] + ([("p99", t.rel_p99)] if t.check_p99 else [])
    alerts = []
    for key, b in sorted(base.items()):
        c = current.get(key)
        if c is None:
            alerts.append(Alert("missing", *key, "calls", None, None, None, None, b["n"], 0))
            continue
        if b["n"] < t.min_samples or c["n"] < t.min_samples:
            continue
        for metric, rel in metrics:
            was, now = b[f"{metric}_ns"], c[f"{metric}_ns"]
            limit = max(was * (1 + rel), b["p99_ns"] if metric == "p95" else 0.0) + t.abs_ns
            if now > limit:
                alerts.append(Alert("regression", *key, metric, was, now, limit, now / max(was, 1.0), b["n"],
                                    c["n"]))
    return alerts


def alerts_json(alerts: list[Alert], *, baseline: str, run_id: int) -> str:
    return json.dumps({"baseline": baseline, "run_id": run_id, "alerts": [asdict(a) for a in alerts]}, indent=1)
