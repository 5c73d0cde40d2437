"""Plain SVG charts for the HTML report (no plotting library needed): latency histograms on a log axis, a timeline
of layer calls, a stacked share bar and a heatmap. Every function returns one `<svg>` element as a string.
"""

from __future__ import annotations

import math
from html import escape

COLORS = {"mamba": "#4e79a7", "mamba2": "#2f6db3", "attention": "#e15759", "s4": "#76b7b2", "mlp": "#59a14f",
          "moe": "#f28e2b", "all_to_all": "#b07aa1", "other": "#bab0ac"}
FONT = 'font-family="sans-serif" font-size="11"'


def color(layer_type: str) -> str:
    return COLORS.get(layer_type, "#9c755f")


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")


def _text(x, y, s, anchor="start", extra="") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT} {extra}>{escape(str(s))}</text>'


def _legend(names: list[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        out.append(f'<rect x="{x}" y="{y + 16 * i - 9}" width="10" height="10" fill="{color(name)}"/>')
        out.append(_text(x + 14, y + 16 * i, name))
    return out


def histograms(series: dict[str, list[float]], title: str, width: int = 720, height: int = 300) -> str:
    """One step-line histogram per series of durations in microseconds, on a shared log10 x axis; y is the
    fraction of that series' calls in each bin, so types with few calls stay visible."""
    values = [v for vs in series.values() for v in vs if v > 0]
    left, right, top, bottom = 50, width - 130, 20, height - 40
    body = [_text(left, 14, title, extra='font-weight="bold"')]
    if not values:
        return _svg(width, height, body + [_text(left, height / 2, "no calls")], title)
    lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)) + 1e-9)
    hi = max(hi, lo + 1)
    n_bins = 12 * (hi - lo)
    fractions = {}
    for name, vs in series.items():
        counts = [0] * n_bins
        for v in vs:
            if v > 0:
                counts[min(n_bins - 1, int((math.log10(v) - lo) / (hi - lo) * n_bins))] += 1
        fractions[name] = [c / max(len(vs), 1) for c in counts]
    y_max = max(max(f) for f in fractions.values()) or 1.0

    def px(i):
        return left + (right - left) * i / n_bins

    def py(f):
        return bottom - (bottom - top) * f / y_max

    body.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>')
    for decade in range(lo, hi + 1):
        x = px((decade - lo) * 12)
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#ddd"/>')
        body.append(_text(x, bottom + 14, _us_label(10.0 ** decade), "middle"))
    body.append(_text((left + right) / 2, height - 6, "call duration (log scale)", "middle"))
    body.append(_text(12, (top + bottom) / 2, "fraction of calls", "middle",
                      f'transform="rotate(-90 12 {(top + bottom) / 2:.1f})"'))
    for name, f in fractions.items():
        points = [(px(0), bottom)]
        for i, v in enumerate(f):
            points += [(px(i), py(v)), (px(i + 1), py(v))]
        points.append((px(n_bins), bottom))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color(name)}" stroke-width="1.8"/>')
    body += _legend(list(series), right + 15, top + 10)
    return _svg(width, height, body, title)


def timeline(calls: list[dict], rows: list[tuple[int, str]], title: str, width: int = 960) -> str:
    """Rectangles per call (dicts with layer_idx, layer_type, start_ns, duration_ns, step), one row per
    (layer_idx, layer_type) in `rows` order; x is time from the first call."""
    row_h, left, right, top = 16, 110, width - 20, 24
    height = top + row_h * len(rows) + 36
    body = [_text(left, 14, title, extra='font-weight="bold"')]
    if not calls:
        return _svg(width, height, body + [_text(left, top + 20, "no calls")], title)
    t0 = min(c["start_ns"] for c in calls)
    span = max(c["start_ns"] + c["duration_ns"] for c in calls) - t0 or 1
    index = {r: i for i, r in enumerate(rows)}
    for (layer_idx, layer_type), i in index.items():
        body.append(_text(left - 6, top + row_h * i + 12, f"{layer_idx} {layer_type}", "end"))
    for c in calls:
        i = index.get((c["layer_idx"], c["layer_type"]))
        if i is None:
            continue
        x = left + (right - left) * (c["start_ns"] - t0) / span
        w = max(0.5, (right - left) * c["duration_ns"] / span)
        tip = f"step {c['step']} layer {c['layer_idx']} {c['layer_type']}: {c['duration_ns'] / 1e3:.1f} us"
        body.append(f'<rect x="{x:.2f}" y="{top + row_h * i + 2}" width="{w:.2f}" height="{row_h - 4}" '
                    f'fill="{color(c["layer_type"])}"><title>{escape(tip)}</title></rect>')
    axis_y = top + row_h * len(rows) + 4
    body.append(f'<line x1="{left}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="#333"/>')
    for k in range(6):
        x = left + (right - left) * k / 5
        body.append(_text(x, axis_y + 14, f"{span * k / 5 / 1e6:.2f} ms", "middle"))
    return _svg(width, height, body, title)


def share_bar(shares: dict[str, float], title: str, width: int = 720) -> str:
    """A horizontal bar split by share of wall time (fractions summing to at most 1; the rest is 'other')."""
    left, right, height = 10, width - 10, 90
    body = [_text(left, 14, title, extra='font-weight="bold"')]
    parts = dict(shares)
    parts["other"] = max(0.0, 1.0 - sum(shares.values()))
    x = left
    for name, f in parts.items():
        w = (right - left) * f
        body.append(f'<rect x="{x:.2f}" y="24" width="{w:.2f}" height="26" fill="{color(name)}">'
                    f"<title>{escape(name)}: {100 * f:.1f}%</title></rect>")
        if w > 50:
            body.append(_text(x + w / 2, 41, f"{100 * f:.0f}%", "middle", 'fill="white"'))
        x += w
    for i, name in enumerate(parts):
        body.append(f'<rect x="{left + 110 * i}" y="62" width="10" height="10" fill="{color(name)}"/>')
        body.append(_text(left + 110 * i + 14, 71, f"{name} {100 * parts[name]:.1f}%"))
    return _svg(width, height, body, title)


def heatmap(matrix: list[list[float]], row_labels: list[str], col_labels: list[str], title: str,
            value_label: str = "") -> str:
    """Cells shaded from white (0) to dark orange (the largest value), each labelled with its value."""
    cell_w, cell_h, left, top = 46, 24, 90, 40
    width = max(560, left + cell_w * max(len(col_labels), 1) + 20)
    height = top + cell_h * max(len(row_labels), 1) + 30
    body = [_text(10, 14, title, extra='font-weight="bold"')]
    peak = max((v for row in matrix for v in row), default=0) or 1
    for j, label in enumerate(col_labels):
        body.append(_text(left + cell_w * j + cell_w / 2, top - 6, label, "middle"))
    for i, (label, row) in enumerate(zip(row_labels, matrix)):
        body.append(_text(left - 6, top + cell_h * i + 16, label, "end"))
        for j, v in enumerate(row):
            a = v / peak
            fill = f"rgb({255 - int(a * 13)},{255 - int(a * 140)},{255 - int(a * 212)})"
            body.append(f'<rect x="{left + cell_w * j}" y="{top + cell_h * i}" width="{cell_w - 2}" '
                        f'height="{cell_h - 2}" fill="{fill}"><title>{escape(label)}, {escape(col_labels[j])}: '
                        f'{v:g}</title></rect>')
            body.append(_text(left + cell_w * j + cell_w / 2 - 1, top + cell_h * i + 15, f"{v:.3g}", "middle",
                              'fill="black"' if a < 0.6 else 'fill="white"'))
    if value_label:
        body.append(_text(left, height - 8, value_label))
    return _svg(width, height, body, title)


def _us_label(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:g} s"
    if us >= 1e3:
        return f"{us / 1e3:g} ms"
    return f"{us:g} us"
