"""Query results as text: an aligned table, CSV or JSON (one object per row)."""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import math

FORMATS = ("table", "csv", "json")


def cell(value) -> str:
    """A value as a table cell: floats with 6 significant digits, None as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def text_table(headers: list[str], rows: list[list], right_from: int | None = None) -> str:
    """Columns padded to line up; columns from right_from on (default: numeric columns) are right-aligned."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if right_from is None:
        numeric = [bool(rows) and all(isinstance(r[i], (int, float, decimal.Decimal)) for r in rows)
                   for i in range(len(headers))]
    else:
        numeric = [i >= right_from for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(columns: list[str], rows: list[tuple], fmt: str = "table") -> str:
    """Rows of a query in `fmt` ("table", "csv" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "table":
        return text_table(columns, [list(r) for r in rows]) + f"\n({len(rows)} row{'s' * (len(rows) != 1)})"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_plain(v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    return json.dumps([{c: _plain(v) for c, v in zip(columns, r)} for r in rows], indent=1)


def _plain(value):
    """JSON-safe value: timestamps as ISO strings, decimals as floats, NaN as None."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
