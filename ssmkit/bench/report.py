"""One self-contained HTML report per benchmark run: tables and inline SVG charts, no external files or scripts.

Sections (each only when its data is given): runs with p50/p95/p99 per model, throughput vs concurrency, latency and
memory vs prompt length with out-of-memory points, the OOM-remedy table, memory plans, and preformatted extras
(compare and gate output).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from .memory_plan import MemoryPlan, format_bytes, format_plan
from .remedies import RemedyResult
from .results import GB, RunResult
from .svg import bar_chart, line_chart
from .sweep import SweepResult
from .table import fmt_number

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}"
         "td.n{text-align:right}th{background:#f4f4f4}pre{background:#f8f8f8;padding:1em;overflow-x:auto}"
         "figure{display:inline-block;margin:0.5em}.oom{color:#b00;font-weight:bold}")


def html_table(headers: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td{" class=n" if i >= numeric_from else ""}>{c if isinstance(c, _Raw) else escape(str(c))}</td>'
        for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """A table cell that is already HTML."""


def _runs_section(runs: list[RunResult]) -> list[str]:
    rows = []
    for r in runs:
        s = r.summary
        rows.append([r.model, r.workload, f"{r.mode} x{r.concurrency}", f"{len(r.requests) - r.failed_requests}/"
                     f"{len(r.requests)}", *(fmt_number(getattr(s["ttft_ms"], p)) for p in ("p50", "p95", "p99")),
                     *(fmt_number(getattr(s["total_latency_ms"], p)) for p in ("p50", "p95", "p99")),
                     fmt_number(s["time_per_output_token_ms"].p50), fmt_number(s["tokens_per_s"].p50),
                     fmt_number(r.throughput_tokens_per_s), f"{r.peak_memory_bytes / GB:.3g} ({r.memory_source})",
                     fmt_number(r.quality_score)])
    out = ["<h2>Runs</h2>", html_table(
        ["model", "workload", "loop x concurrency", "ok/requests", "TTFT p50 ms", "p95", "p99", "latency p50 ms",
         "p95", "p99", "TPOT p50 ms", "tokens/s p50", "throughput tok/s", "peak GiB", "quality"], rows, 3)]
    workloads, concurrencies = len({r.workload for r in runs}) > 1, len({r.concurrency for r in runs}) > 1

    def key(r):
        return (r.model + (f" {r.workload[:12]}" if workloads else "")
                + (f" x{r.concurrency}" if concurrencies else ""))

    for field, label in (("ttft_ms", "TTFT"), ("total_latency_ms", "total latency")):
        groups = {key(r): {p: getattr(r.summary[field], p) for p in ("p50", "p95", "p99")} for r in runs}
        out.append(f"<figure>{bar_chart(groups, title=f'{label} p50 / p95 / p99', ylabel='ms')}</figure>")
    by_model: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        by_model.setdefault(f"{r.model} ({r.workload})", []).append((r.concurrency, r.throughput_tokens_per_s))
    if any(len({c for c, _ in pts}) > 1 for pts in by_model.values()):
        out.append("<h3>Throughput vs concurrency</h3><figure>" + line_chart(
            by_model, title="throughput vs concurrency", xlabel="concurrent clients",
            ylabel="output tokens/s", logx=True) + "</figure>")
    return out


def _sweep_section(sweeps: list[SweepResult]) -> list[str]:
    def key(s):
        return f"{s.model} b{s.batch}"

    def series(attr, scale=1.0):
        return {key(s): [(p.prompt_tokens, getattr(p, attr) * scale) for p in s.points
                         if p.status == "ok" and getattr(p, attr) is not None] for s in sweeps}

    markers = {key(s): [(p.prompt_tokens, p.status.upper())] for s in sweeps for p in s.points if p.status != "ok"}
    out = ["<h2>Prompt length sweep</h2>",
           "<p>Latency and memory as the prompt grows; a cross marks the first length that ran out of memory (or "
           "was refused by the memory cap). KV cache memory grows with the length, SSM state stays flat.</p>"]
    charts = [(series("ttft_ms"), "TTFT vs prompt length", "ms", True),
              (series("decode_ms_per_token"), "decode time per token vs prompt length", "ms/token", True),
              (series("peak_memory_bytes", 1 / 2**20), "peak memory vs prompt length", "MiB", True),
              ({**{f"{key(s)} KV": [(p.prompt_tokens, p.kv_bytes / 2**20) for p in s.points] for s in sweeps},
                **{f"{key(s)} state": [(p.prompt_tokens, p.state_bytes / 2**20) for p in s.points] for s in sweeps}},
               "planned cache: KV vs SSM state", "MiB", False)]
    for data, title, unit, with_markers in charts:
        out.append("<figure>" + line_chart(data, title=title, xlabel="prompt tokens", ylabel=unit, logx=True,
                                           markers=markers if with_markers else None) + "</figure>")
    rows = []
    for s in sweeps:
        for p in s.points:
            status = _Raw(f'<span class="oom">{escape(p.status.upper())}</span>') if p.status != "ok" else "ok"
            rows.append([s.model, p.prompt_tokens, s.batch, status, fmt_number(p.ttft_ms),
                         fmt_number(p.decode_ms_per_token), format_bytes(p.peak_memory_bytes),
                         format_bytes(p.planned_bytes), format_bytes(p.kv_bytes), format_bytes(p.state_bytes),
                         p.error or ""])
    out.append(html_table(["model", "prompt tokens", "batch", "status", "TTFT ms", "decode ms/token", "peak memory",
                           "planned total", "KV (plan)", "SSM state (plan)", "note"], rows, 1))
    caps = {s.memory_cap_bytes for s in sweeps if s.memory_cap_bytes}
    if caps:
        out.append(f"<p>Memory cap: {', '.join(format_bytes(c) for c in sorted(caps))} (planned bytes above it are "
                   "refused as OOM before running).</p>")
    return out


def _remedy_section(results: list[RemedyResult]) -> list[str]:
    rows = [[r.name, r.model, r.description, format_bytes(r.peak_bytes), format_bytes(r.cache_bytes),
             f"{format_bytes(abs(r.saved_bytes))} {'saved' if r.saved_bytes >= 0 else 'more'} "
             f"({r.saved_pct:.0f}%)", f"{r.ppl:.4g}", "n/a" if r.ppl_delta is None else f"{r.ppl_delta:+.3g}",
             "n/a" if r.greedy_agreement is None else f"{r.greedy_agreement:.1%}", r.output[:40]] for r in results]
    n = results[0].prompt_tokens if results else 0
    return ["<h2>Out-of-memory remedies</h2>",
            f"<p>One prompt of {n} tokens. Peak: live tensors created while prefilling and decoding (weights "
            "excluded). Perplexity delta and argmax agreement are against the first row on the same weights.</p>",
            html_table(["remedy", "model", "what", "peak memory", "cache", "vs first", "perplexity", "ppl delta",
                        "argmax agreement", "greedy output"], rows, 3)]


def render_report(*, title: str = "ssmkit benchmark report", runs: list[RunResult] = (),
                  sweeps: list[SweepResult] = (), remedies: list[RemedyResult] = (), plans: list[MemoryPlan] = (),
                  extras: dict[str, str] | None = None, environment: dict | None = None) -> str:
    """The report as one HTML string (see write_report)."""
    env = environment or (runs[0].__dict__ if runs else sweeps[0].__dict__ if sweeps else None)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"]
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        parts.append(html_table(["device", "versions", "date", "command"],
                                [[env.get("device", ""), versions, env.get("date", ""), env.get("command", "")]], 9))
    if runs:
        parts += _runs_section(list(runs))
    if sweeps:
        parts += _sweep_section(list(sweeps))
    if remedies:
        parts += _remedy_section(list(remedies))
    if plans:
        parts.append("<h2>Memory plans</h2>")
        parts += [f"<pre>{escape(format_plan(p))}</pre>" for p in plans]
    for heading, text in (extras or {}).items():
        parts.append(f"<h2>{escape(heading)}</h2><pre>{escape(text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path, **sections) -> Path:
    """Writes render_report(**sections) to `path` (UTF-8) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(**sections), encoding="utf-8")
    return path
