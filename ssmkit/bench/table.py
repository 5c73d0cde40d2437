"""Markdown tables for the bench commands' terminal output (readable as text, pasteable into results files)."""

from __future__ import annotations

import math


def fmt_number(x, digits: int = 3) -> str:
    """Compact number: None/NaN -> 'n/a', inf -> 'inf', otherwise `digits` significant digits (ints as ints)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"


def markdown_table(headers: list[str], rows: list[list], right_align_from: int = 1) -> str:
    """Cells are str() of the given values, padded so columns line up; columns from `right_align_from` on are
    right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.rjust(w) if i >= right_align_from else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(r, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i >= right_align_from else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
