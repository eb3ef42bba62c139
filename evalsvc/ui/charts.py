"""Server-rendered charts: inline SVG, no JavaScript.

>>> from evalsvc.ui.data import DayRate
>>> svg = pass_rate_svg([DayRate("2026-11-01", 9, 1), DayRate("2026-11-02", 8, 2)])
>>> svg.startswith("<svg") and "90.0%" in svg
True
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from .data import DayRate

__all__ = ["pass_rate_svg"]

W, H = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 12, 30


def pass_rate_svg(points: Sequence[DayRate]) -> Markup:
    """A line of the pass rate per day (0-100 %), one dot per day with its counts as a tooltip."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>pass rate per day</title>'
    ]
    for pct in (0, 50, 100):
        y = TOP + ph * (1 - pct / 100)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{pct}%</text>')
    n = len(points)
    coords: list[tuple[float, float]] = []
    for i, p in enumerate(points):
        x = LEFT + (pw * i / (n - 1) if n > 1 else pw / 2)
        coords.append((x, TOP + ph * (1 - p.rate)))
    if n > 1:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline class="line" points="{line}"/>')
    for (x, y), p in zip(coords, points, strict=True):
        tip = escape(f"{p.day}: {p.rate:.1%} ({p.passed} passed, {p.failed} failed)")
        cls = "dot low" if p.rate < 0.9 else "dot"
        parts.append(f'<circle class="{cls}" cx="{x:.1f}" cy="{y:.1f}" r="4"><title>{tip}</title></circle>')
    if points:
        parts.append(f'<text class="axis" x="{LEFT}" y="{H - 8}">{escape(points[0].day)}</text>')
        if n > 1:
            parts.append(
                f'<text class="axis" x="{W - RIGHT}" y="{H - 8}" text-anchor="end">{escape(points[-1].day)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
