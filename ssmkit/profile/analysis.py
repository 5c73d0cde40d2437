"""The summary of a run, computed in SQL over the events table: per (phase, layer type) the call count, share of
wall time, p50/p95/p99, coefficient of variation; the worst layers; the calls furthest above their layer's median;
and the layer types whose tail the aggregate hides (the type's p99 is far above its p50 while the latency of whole
model calls, what an end-to-end dashboard shows, varies much less).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .store import TraceStore

_TYPE_ROWS = """
WITH wall AS (
    SELECT coalesce((SELECT wall_ns FROM runs WHERE run_id = $run),
                    (SELECT max(start_ns + duration_ns) FROM events WHERE run_id = $run)) AS ns
)
SELECT phase, layer_type, count(*) AS calls, sum(duration_ns) AS total_ns,
       sum(duration_ns) / (SELECT ns FROM wall) AS share,
       quantile_cont(duration_ns, 0.5) AS p50_ns, quantile_cont(duration_ns, 0.95) AS p95_ns,
       quantile_cont(duration_ns, 0.99) AS p99_ns, max(duration_ns) AS max_ns,
       coalesce(stddev_samp(duration_ns) / avg(duration_ns), 0) AS cv
FROM events WHERE run_id = $run
GROUP BY ALL ORDER BY phase DESC, total_ns DESC
"""

_POOLED_ROWS = """
SELECT phase, '(all layers)' AS layer_type, count(*) AS calls, sum(duration_ns) AS total_ns,
       quantile_cont(duration_ns, 0.5) AS p50_ns, quantile_cont(duration_ns, 0.95) AS p95_ns,
       quantile_cont(duration_ns, 0.99) AS p99_ns, max(duration_ns) AS max_ns,
       coalesce(stddev_samp(duration_ns) / avg(duration_ns), 0) AS cv
FROM events WHERE run_id = $run AND layer_type != 'all_to_all' GROUP BY phase
"""

_STEP_ROWS = """
SELECT phase, '(model call)' AS layer_type, count(*) AS calls, sum(ns) AS total_ns,
       quantile_cont(ns, 0.5) AS p50_ns, quantile_cont(ns, 0.95) AS p95_ns, quantile_cont(ns, 0.99) AS p99_ns,
       max(ns) AS max_ns, coalesce(stddev_samp(ns) / avg(ns), 0) AS cv
FROM (SELECT phase, request_id, step, sum(duration_ns) AS ns FROM events
      WHERE run_id = $run AND layer_type != 'all_to_all' GROUP BY ALL)
GROUP BY phase
"""

_WORST_LAYERS = """
SELECT phase, layer_idx, layer_type, count(*) AS calls, quantile_cont(duration_ns, 0.5) AS p50_ns,
       quantile_cont(duration_ns, 0.99) AS p99_ns, max(duration_ns) AS max_ns,
       max(duration_ns) / greatest(quantile_cont(duration_ns, 0.5), 1) AS max_over_p50,
       max(duration_ns) - quantile_cont(duration_ns, 0.5) AS max_excess_ns
FROM events WHERE run_id = $run
GROUP BY ALL HAVING count(*) >= 3 ORDER BY max_excess_ns DESC LIMIT $k
"""

# A call's excess over the median of the same layer in the same phase and at the same sequence length.
_OUTLIERS = """
WITH med AS (
    SELECT phase, layer_idx, layer_type, seqlen, median(duration_ns) AS p50_ns, count(*) AS n
    FROM events WHERE run_id = $run GROUP BY ALL
)
SELECT e.call_id, e.request_id, e.phase, e.step, e.layer_idx, e.layer_type, e.seqlen, e.duration_ns, m.p50_ns,
       e.duration_ns / greatest(m.p50_ns, 1) AS ratio, e.duration_ns - m.p50_ns AS excess_ns
FROM events e JOIN med m USING (phase, layer_idx, layer_type, seqlen)
WHERE e.run_id = $run AND m.n >= 3
ORDER BY excess_ns DESC LIMIT $k
"""


@dataclass
class Summary:
    """Rows are dicts with the SQL column names above; durations in ns. all_to_all calls happen inside MoE calls:
    they have their own row in layer_types but are left out of the aggregates, which would count them twice."""

    run_id: int
    wall_ns: int | None
    layer_types: list[dict]
    aggregates: list[dict]  # per phase: all calls pooled, and whole model calls
    worst_layers: list[dict]
    outliers: list[dict]
    hidden_tails: list[dict] = field(default_factory=list)


def summarize(store: TraceStore, run_id: int | None = None, *, k: int = 5, tail_factor: float = 3.0,
              min_tail_calls: int = 20) -> Summary:
    """The summary of run `run_id` (the newest when None).

    worst_layers ranks (phase, layer) of 3 calls or more by max - p50, and outliers rank calls by their time above
    the median of the same layer, phase and seqlen: time lost, so a long stall outranks jitter of a short layer.
    hidden_tails lists (phase, layer type) of min_tail_calls calls or more whose p99 / p50 >= tail_factor and at
    least twice the p99 / p50 of whole model calls (the sum over the layers of one step), largest p99 - p50 first:
    the type has a tail that end-to-end latency does not show.
    """
    run_id = store.check_run(run_id)
    params = {"run": run_id}
    wall = store.query("SELECT wall_ns FROM runs WHERE run_id = $run", params)[1][0][0]
    types = store.rows(_TYPE_ROWS, params)
    pooled = {r["phase"]: r for r in store.rows(_POOLED_ROWS, params)}
    steps = {r["phase"]: r for r in store.rows(_STEP_ROWS, params)}
    aggregates = [row for phase in ("prefill", "decode") for row in (pooled.get(phase), steps.get(phase)) if row]
    hidden = []
    for row in types:
        agg, ratio = pooled[row["phase"]], row["p99_ns"] / max(row["p50_ns"], 1)
        step_ratio = _ratio(steps.get(row["phase"]))
        if row["calls"] >= min_tail_calls and ratio >= tail_factor and ratio >= 2 * step_ratio:
            hidden.append({"phase": row["phase"], "layer_type": row["layer_type"], "p50_ns": row["p50_ns"],
                           "p99_ns": row["p99_ns"], "tail_ratio": ratio,
                           "pooled_p50_ns": agg["p50_ns"], "pooled_p99_ns": agg["p99_ns"],
                           "pooled_ratio": agg["p99_ns"] / max(agg["p50_ns"], 1),
                           "step_p99_over_p50": step_ratio})
    hidden.sort(key=lambda h: h["p50_ns"] - h["p99_ns"])  # the largest tail in time first
    return Summary(run_id=run_id, wall_ns=wall, layer_types=types, aggregates=aggregates,
                   worst_layers=store.rows(_WORST_LAYERS, {**params, "k": k}),
                   outliers=store.rows(_OUTLIERS, {**params, "k": k}), hidden_tails=hidden)


def _ratio(row: dict) -> float:
    return row["p99_ns"] / max(row["p50_ns"], 1)


def _us(ns) -> str:
    return "n/a" if ns is None else f"{ns / 1e3:.1f}"


def format_summary(s: Summary) -> str:
    """The summary as text: the per-type table (times in microseconds), worst layers, top outlier calls, and one
    line per hidden tail."""
    from .format import text_table

    wall = "n/a" if s.wall_ns is None else f"{s.wall_ns / 1e6:.1f} ms"
    head = ["phase", "layer type", "calls", "share", "p50 us", "p95 us", "p99 us", "max us", "cv"]
    rows = [[r["phase"], r["layer_type"], r["calls"], f"{100 * r['share']:.1f}%" if r.get("share") is not None
             else "", _us(r["p50_ns"]), _us(r["p95_ns"]), _us(r["p99_ns"]), _us(r["max_ns"]), f"{r['cv']:.2f}"]
            for r in s.layer_types + [{**a, "share": None} for a in s.aggregates]]
    out = [f"run {s.run_id}: wall time {wall}", text_table(head, rows, right_from=2), "",
           "worst layers (largest max - p50):"]
    out.append(text_table(["phase", "layer", "type", "calls", "p50 us", "p99 us", "max us", "max/p50"],
                          [[r["phase"], r["layer_idx"], r["layer_type"], r["calls"], _us(r["p50_ns"]),
                            _us(r["p99_ns"]), _us(r["max_ns"]), f"{r['max_over_p50']:.1f}x"]
                           for r in s.worst_layers], right_from=3))
    out += ["", "top outlier calls (time above the median of the same layer, phase and seqlen):"]
    out.append(text_table(["request", "step", "phase", "layer", "type", "us", "median us", "excess us", "ratio"],
                          [[r["request_id"], r["step"], r["phase"], r["layer_idx"], r["layer_type"],
                            _us(r["duration_ns"]), _us(r["p50_ns"]), _us(r["excess_ns"]), f"{r['ratio']:.1f}x"]
                           for r in s.outliers],
                          right_from=5))
    out += ["", "tails hidden in the aggregate:"]
    if not s.hidden_tails:
        out.append("  none (no layer type's p99 / p50 is both >= 3 and twice that of whole model calls)")
    for h in s.hidden_tails:
        out.append(f"  {h['layer_type']} ({h['phase']}): p99 {_us(h['p99_ns'])} us = {h['tail_ratio']:.1f}x its "
                   f"p50, but whole model calls have p99 = {h['step_p99_over_p50']:.1f}x their p50 and all layers "
                   f"pooled {_us(h['pooled_p99_ns'])} us = {h['pooled_ratio']:.1f}x")
    return "\n".join(out)
