"""Plain SVG charts for the benchmark report (no plotting library needed): line charts and grouped bar charts.

Each function returns one `<svg>` element as a string, sized in pixels, with axes, ticks, a legend and optional
markers (e.g. an out-of-memory point); log axes use powers of 2 or 10 for ticks.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
W, H = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 36, 48


def _ticks(lo: float, hi: float, log: bool, base: int = 10) -> list[float]:
    if log:
        a, b = math.floor(math.log(lo, base) + 1e-9), math.ceil(math.log(hi, base) - 1e-9)
        ticks = [base ** k for k in range(a, b + 1)]
        step = max(1, len(ticks) // 8)
        return ticks[::step]
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 and math.log2(abs(v)).is_integer():
        return f"{int(v) // 1024}K" if v < 2**20 else f"{int(v) // 2**20}M"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


class _Axes:
    def __init__(self, xs, ys, logx, logy, xbase):
        self.logx, self.logy, self.xbase = logx, logy, xbase
        xs = [x for x in xs if not logx or x > 0] or [1.0]
        ys = [y for y in ys if not logy or y > 0] or [1.0]
        self.x0, self.x1 = min(xs), max(xs)
        self.y0, self.y1 = (min(ys), max(ys)) if logy else (0.0, max(max(ys), 1e-12) * 1.08)
        if self.x0 == self.x1:
            self.x0, self.x1 = (self.x0 / 2, self.x1 * 2) if logx else (self.x0 - 1, self.x1 + 1)
        if self.y0 == self.y1:
            self.y0, self.y1 = self.y0 / 2, self.y1 * 2

    def _f(self, v, lo, hi, log):
        if log:
            v, lo, hi = math.log(max(v, 1e-300)), math.log(lo), math.log(hi)
        return (v - lo) / (hi - lo) if hi != lo else 0.5

    def px(self, x):
        return LEFT + self._f(x, self.x0, self.x1, self.logx) * (W - LEFT - RIGHT)

    def py(self, y):
        return H - BOTTOM - self._f(y, self.y0, self.y1, self.logy) * (H - TOP - BOTTOM)


def _frame(ax: _Axes, title: str, xlabel: str, ylabel: str, xticks: bool = True) -> list[str]:
    out = [f'<text x="{W / 2:.0f}" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#333"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#333"/>',
           f'<text x="{(LEFT + W - RIGHT) / 2:.0f}" y="{H - 10}" text-anchor="middle">{escape(xlabel)}</text>',
           f'<text x="16" y="{(TOP + H - BOTTOM) / 2:.0f}" text-anchor="middle" '
           f'transform="rotate(-90 16 {(TOP + H - BOTTOM) / 2:.0f})">{escape(ylabel)}</text>']
    for t in _ticks(ax.x0, ax.x1, ax.logx, ax.xbase) if xticks else []:
        if ax.x0 <= t <= ax.x1:
            x = ax.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{H - BOTTOM}" x2="{x:.1f}" y2="{H - BOTTOM + 4}" stroke="#333"/>'
                       f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{_label(t)}</text>')
    for t in _ticks(ax.y0, ax.y1, ax.logy):
        if ax.y0 <= t <= ax.y1:
            y = ax.py(t)
            out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#eee"/>'
                       f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    return out


def _svg(parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="sans-serif" font-size="11">' + "".join(parts) + "</svg>")


def line_chart(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
               logx: bool = False, logy: bool = False, xbase: int = 2,
               markers: dict[str, list[tuple[float, str]]] | None = None) -> str:
    """One polyline per series name; markers[name] = [(x, label)] draws a cross on the x axis (e.g. 'OOM')."""
    markers = markers or {}
    xs = [x for pts in series.values() for x, _ in pts] + [x for ms in markers.values() for x, _ in ms]
    ys = [y for pts in series.values() for _, y in pts]
    if not xs:
        return _svg([f'<text x="20" y="40">{escape(title)}: no data</text>'])
    ax = _Axes(xs, ys or [1.0], logx, logy, xbase)
    parts = _frame(ax, title, xlabel, ylabel)
    names = list(dict.fromkeys(list(series) + list(markers)))
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted(series.get(name, []))
        if pts:
            path = " ".join(f"{ax.px(x):.1f},{ax.py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            parts += [f'<circle cx="{ax.px(x):.1f}" cy="{ax.py(y):.1f}" r="3" fill="{color}"/>' for x, y in pts]
        for j, (x, label) in enumerate(markers.get(name, [])):
            cx, cy = ax.px(x), H - BOTTOM - 8 - 12 * i
            parts.append(f'<path d="M{cx - 5:.1f},{cy - 5:.1f} L{cx + 5:.1f},{cy + 5:.1f} M{cx - 5:.1f},{cy + 5:.1f} '
                         f'L{cx + 5:.1f},{cy - 5:.1f}" stroke="{color}" stroke-width="2"/>'
                         f'<text x="{cx + 7:.1f}" y="{cy + 4:.1f}" fill="{color}">{escape(label)}</text>')
        y = TOP + 14 * i
        parts.append(f'<rect x="{W - RIGHT + 10}" y="{y}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{W - RIGHT + 24}" y="{y + 9}">{escape(name[:22])}</text>')
    return _svg(parts)


def bar_chart(groups: dict[str, dict[str, float]], *, title: str, ylabel: str) -> str:
    """Grouped bars: groups[group][bar] = value (e.g. groups[model]['p95'] = ms); NaN bars are left out."""
    bars = list(dict.fromkeys(b for g in groups.values() for b in g))
    values = [v for g in groups.values() for v in g.values() if v is not None and not math.isnan(v)]
    if not values:
        return _svg([f'<text x="20" y="40">{escape(title)}: no data</text>'])
    top = max(values) * 1.1 or 1.0
    ax = _Axes([0, 1], [0, top], False, False, 10)
    ax.y0, ax.y1 = 0.0, top
    parts = _frame(ax, title, "", ylabel, xticks=False)
    slot = (W - LEFT - RIGHT) / max(len(groups), 1)
    width = slot * 0.8 / max(len(bars), 1)
    for gi, (group, vals) in enumerate(groups.items()):
        x0 = LEFT + gi * slot + slot * 0.1
        for bi, bar in enumerate(bars):
            v = vals.get(bar)
            if v is None or math.isnan(v):
                continue
            y = ax.py(v)
            parts.append(f'<rect x="{x0 + bi * width:.1f}" y="{y:.1f}" width="{width * 0.9:.1f}" '
                         f'height="{H - BOTTOM - y:.1f}" fill="{PALETTE[bi % len(PALETTE)]}"/>')
        lx, ly = x0 + slot * 0.4, H - BOTTOM + 12
        parts.append(f'<text x="{lx:.1f}" y="{ly}" text-anchor="end" font-size="10" '
                     f'transform="rotate(-20 {lx:.1f} {ly})">{escape(group[:24])}</text>')
    for bi, bar in enumerate(bars):
        parts.append(f'<rect x="{W - RIGHT + 10}" y="{TOP + 14 * bi}" width="10" height="10" '
                     f'fill="{PALETTE[bi % len(PALETTE)]}"/><text x="{W - RIGHT + 24}" y="{TOP + 14 * bi + 9}">'
                     f'{escape(bar)}</text>')
    return _svg(parts)
