"""A self-contained HTML report of one run: latency distribution per layer type, a per-layer timeline of one
request, share of wall time, the expert load heatmap and the summary tables. Inline SVG and CSS only, so the
file opens offline and can be attached to an issue.
"""

from __future__ import annotations

import datetime
from html import escape
from pathlib import Path

from . import svg
from .analysis import Summary, summarize
from .store import TraceStore

_CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1000px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
td, th { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
td.l, th.l { text-align: left; }
.note { color: #555; font-size: 12px; }
"""


def write_report(store: TraceStore, path: str | Path, run_id: int | None = None, *, request_id: int | None = None,
                 max_timeline_steps: int = 6) -> Path:
    """Writes the report of run `run_id` (the newest when None) to `path` and returns the path.

    The timeline shows `request_id` (default: the request with the most model calls), its first
    max_timeline_steps model calls.
    """
    run_id = store.check_run(run_id)
    s = summarize(store, run_id)
    run = store.rows("SELECT * FROM runs WHERE run_id = ?", [run_id])[0]
    sections = [_header(run), _summary_table(s), _distribution(store, run_id), _share(s),
                _timeline(store, run_id, request_id, max_timeline_steps), _expert_load(store, run_id),
                _outliers(s)]
    html = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>ssmkit trace: run {run_id}</title><style>{_CSS}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path


def _header(run: dict) -> str:
    wall = "n/a" if run["wall_ns"] is None else f"{run['wall_ns'] / 1e6:.1f} ms"
    started = run["started_at"].isoformat(sep=" ", timespec="seconds") if isinstance(
        run["started_at"], datetime.datetime) else run["started_at"]
    return (f"<h1>ssmkit trace: run {run['run_id']} {escape(run['name'] or '')}</h1>"
            f"<p class=\"note\">status {escape(run['status'])}, started {escape(str(started))} UTC, wall time "
            f"{wall}, clock {escape(run['clock'])}, device {escape(str(run['device']))}</p>")


_LEFT = ' class="l"'


def _table(head: list[str], rows: list[list], left_cols: int = 1) -> str:
    def cells(r, tag):
        return "".join(f"<{tag}{_LEFT if i < left_cols else ''}>{escape(str(c))}</{tag}>" for i, c in enumerate(r))

    return ("<table><tr>" + cells(head, "th") + "</tr>"
            + "".join("<tr>" + cells(r, "td") + "</tr>" for r in rows) + "</table>")


def _us(ns) -> str:
    return "" if ns is None else f"{ns / 1e3:.1f}"


def _summary_table(s: Summary) -> str:
    rows = [[r["phase"], r["layer_type"], r["calls"], "" if r.get("share") is None else f"{100 * r['share']:.1f}%",
             _us(r["p50_ns"]), _us(r["p95_ns"]), _us(r["p99_ns"]), _us(r["max_ns"]), f"{r['cv']:.2f}"]
            for r in s.layer_types + s.aggregates]
    hidden = "".join(f"<li>{escape(h['layer_type'])} ({escape(h['phase'])}): p99 {_us(h['p99_ns'])} us = "
                     f"{h['tail_ratio']:.1f}x its p50, while whole model calls have p99 = "
                     f"{h['step_p99_over_p50']:.1f}x their p50</li>" for h in s.hidden_tails)
    return ("<h2>Per layer type</h2>"
            + _table(["phase", "layer type", "calls", "share of wall", "p50 us", "p95 us", "p99 us", "max us",
                      "cv"], rows, 2)
            + "<p class=\"note\">(all layers): every call pooled; (model call): the sum over the layers of one "
              "step, what end-to-end latency shows.</p>"
            + (f"<p>Tails hidden in the aggregate:</p><ul>{hidden}</ul>" if hidden else ""))


def _distribution(store: TraceStore, run_id: int) -> str:
    parts = []
    for phase in ("decode", "prefill"):
        rows = store.query("SELECT layer_type, list(duration_ns / 1e3) FROM events WHERE run_id = ? AND phase = ? "
                           "GROUP BY ALL ORDER BY layer_type", [run_id, phase])[1]
        if rows:
            parts.append(svg.histograms(dict(rows), f"{phase}: call duration per layer type"))
    return "<h2>Latency distribution</h2>" + "".join(parts)


def _share(s: Summary) -> str:
    shares: dict[str, float] = {}
    for r in s.layer_types:
        if r["layer_type"] == "all_to_all":  # inside the MoE calls' time already
            continue
        shares[r["layer_type"]] = shares.get(r["layer_type"], 0.0) + (r["share"] or 0.0)
    return "<h2>Share of wall time</h2>" + svg.share_bar(shares, "share of the run's wall time by layer type "
                                                                  "(other: embeddings, head, sampling, Python)")


def _timeline(store: TraceStore, run_id: int, request_id: int | None, max_steps: int) -> str:
    if request_id is None:
        row = store.query("SELECT request_id FROM events WHERE run_id = ? GROUP BY ALL "
                          "ORDER BY max(step) DESC, request_id LIMIT 1", [run_id])[1]
        if not row:
            return "<h2>Timeline</h2><p>no calls</p>"
        request_id = row[0][0]
    calls = store.rows("SELECT step, layer_idx, layer_type, start_ns, duration_ns FROM events WHERE run_id = ? "
                       "AND request_id = ? AND step < ? ORDER BY call_id", [run_id, request_id, max_steps])
    rows = sorted({(c["layer_idx"], c["layer_type"]) for c in calls},
                  key=lambda r: (r[0], r[1] in ("mlp", "moe")))
    title = f"request {request_id}: the first {max_steps} model calls (hover a bar for its duration)"
    return "<h2>Timeline of one request</h2>" + svg.timeline(calls, rows, title)


def _expert_load(store: TraceStore, run_id: int) -> str:
    rows = store.query("SELECT layer_idx, list(expert_counts), avg(imbalance), max(imbalance), sum(over_capacity), "
                       "sum(dropped), list(expert_overflow) FROM moe_routing WHERE run_id = ? GROUP BY ALL "
                       "ORDER BY layer_idx", [run_id])[1]
    if not rows:
        return "<h2>Expert load</h2><p class=\"note\">no MoE layer in this run</p>"
    matrix, labels, stats = [], [], []
    for layer_idx, counts, mean_imb, max_imb, over, dropped, overflows in rows:
        totals = [sum(c[e] for c in counts) for e in range(len(counts[0]))]
        per_expert = [sum(o[e] for o in overflows if o) for e in range(len(counts[0]))]
        mean = sum(totals) / len(totals) or 1.0
        matrix.append([t / mean for t in totals])
        labels.append(f"layer {layer_idx}")
        stats.append([f"layer {layer_idx}", len(counts), f"{mean_imb or 0:.2f}", f"{max_imb or 0:.2f}", over,
                      " ".join(map(str, per_expert)), dropped])
    n_experts = max(len(r) for r in matrix)
    return ("<h2>Expert load</h2>"
            + svg.heatmap(matrix, labels, [f"e{e}" for e in range(n_experts)],
                          "tokens routed to each expert / the layer's mean (1 = balanced)")
            + _table(["MoE layer", "calls", "mean max/mean", "worst max/mean", "assignments over capacity",
                      "over capacity per expert", "dropped"], stats))


def _outliers(s: Summary) -> str:
    worst = [[r["phase"], r["layer_idx"], r["layer_type"], r["calls"], _us(r["p50_ns"]), _us(r["p99_ns"]),
              _us(r["max_ns"])] for r in s.worst_layers]
    calls = [[r["request_id"], r["step"], r["phase"], r["layer_idx"], r["layer_type"], _us(r["duration_ns"]),
              _us(r["p50_ns"]), f"{r['ratio']:.1f}x"] for r in s.outliers]
    return ("<h2>Worst layers and outlier calls</h2>"
            + _table(["phase", "layer", "type", "calls", "p50 us", "p99 us", "max us"], worst, 3)
            + _table(["request", "step", "phase", "layer", "type", "us", "layer median us", "ratio"], calls, 5))
