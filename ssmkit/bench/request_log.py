"""Benchmark requests and the JSONL request-log format replayed open-loop at its recorded arrival times.

One JSON object per line: `arrival_s` (seconds, any origin), `output_tokens`, and `prompt_tokens` or `prompt` (text).
Other keys are ignored (production logs carry ids and model names). Blank lines are skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Request:
    """One request to send. `prompt` (text) or `prompt_tokens` (a length to synthesize) says what to send;
    `output_tokens` is how many tokens to generate (forced: no early stop). `arrival_s` counts from the start of
    the run and matters only in open loop."""

    request_id: int
    output_tokens: int
    prompt_tokens: int | None = None
    prompt: str | None = None
    arrival_s: float = 0.0


def scale_length(n: int, length_scale: float) -> int:
    """Rounds n * length_scale to an int of at least 1 (a request always has a prompt token and an output token)."""
    return max(1, round(n * length_scale))


def read_request_log(path, *, time_scale: float = 1.0, length_scale: float = 1.0,
                     limit: int | None = None) -> list[Request]:
    """Reads a JSONL request log into Requests sorted by arrival, the first arrival at t = 0.

    time_scale multiplies arrival times (0.5 replays twice as fast); length_scale multiplies `prompt_tokens` and
    `output_tokens` (text prompts are sent as they are). `limit` keeps the earliest `limit` requests.
    Raises ValueError naming the file and line for a malformed line.
    """
    path = Path(path)
    _check_scale("time_scale", time_scale, allow_zero=True)
    _check_scale("length_scale", length_scale)
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive number of requests or None, got {limit}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                rows.append(_parse_line(line, f"{path}:{lineno}"))
    if not rows:
        raise ValueError(f"{path}: no requests (the file is empty)")
    rows.sort(key=lambda r: r[0])  # stable: equal arrival times keep file order
    rows = rows[:limit]
    t0 = rows[0][0]
    return [Request(request_id=i, output_tokens=scale_length(out, length_scale),
                    prompt_tokens=None if ptok is None else scale_length(ptok, length_scale), prompt=text,
                    arrival_s=(t - t0) * time_scale)
            for i, (t, ptok, text, out) in enumerate(rows)]


def write_request_log(requests, path) -> None:
    """Writes Requests in the JSONL format read_request_log reads (arrival, lengths, and text when present)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for r in requests:
            row = {"arrival_s": round(r.arrival_s, 6)}
            if r.prompt is not None:
                row["prompt"] = r.prompt
            if r.prompt_tokens is not None:
                row["prompt_tokens"] = r.prompt_tokens
            row["output_tokens"] = r.output_tokens
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _parse_line(line: str, where: str) -> tuple[float, int | None, str | None, int]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    arrival = row.get("arrival_s")
    if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not (
            math.isfinite(arrival) and arrival >= 0):
        raise ValueError(f"{where}: arrival_s: expected a number of seconds >= 0, got {arrival!r}")
    out = _positive_int(row.get("output_tokens"), "output_tokens", where)
    text, ptok = row.get("prompt"), row.get("prompt_tokens")
    if text is None and ptok is None:
        raise ValueError(f"{where}: expected prompt_tokens (an int) or prompt (text), got neither")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"{where}: prompt: expected text, got {type(text).__name__}")
    if ptok is not None:
        ptok = _positive_int(ptok, "prompt_tokens", where)
    return float(arrival), ptok, text, out


def _positive_int(v, name: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{where}: {name}: expected an integer >= 1, got {v!r}")
    return v


def _check_scale(name: str, v: float, allow_zero: bool = False) -> None:
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            or not (v >= 0 if allow_zero else v > 0)):
        raise ValueError(f"{name}: expected a number {'>= 0' if allow_zero else '> 0'}, got {v!r}")
