"""Usage history: a linear prediction of when a group fills its quota, lurge's warning
levels, and a plot of one group's usage against its quota.

The prediction is a least-squares line through the group's stored usage on the volume
(the last :data:`FIT_POINTS` reports, the current one included). With two points it is
lurge's two-point line. ``date_no_space`` (wrstat-ui's DateNoSpace) is where the line
reaches the quota; None when the usage is flat or falling, or there is no quota.

Warning levels (lurge HEAD's ``WARNINGS``): **3** if the usage predicted 3 days ahead
exceeds 80 % of the quota or the one 7 days ahead exceeds 95 %; **2** if the 7-day one
exceeds 85 %; else **1**. Without a quota (None or 0) the level is 1.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass

FIT_POINTS = 30
WARNINGS = {3: ((3, 0.80), (7, 0.95)), 2: ((7, 0.85),)}


@dataclass(frozen=True)
class Trend:
    slope_per_day: float  # bytes per day
    intercept: float  # bytes at day 0 (the last point's date)
    points: int

    def at(self, days_from_last: float) -> float:
        return self.intercept + self.slope_per_day * days_from_last


def fit(points: list[tuple[dt.date, int]]) -> Trend | None:
    """Least-squares line through ``(date, used)``, x in days from the last date."""
    points = sorted(points)[-FIT_POINTS:]
    if not points:
        return None
    last = points[-1][0]
    xs = [(d - last).days for d, _ in points]
    ys = [float(u) for _, u in points]
    if len(points) == 1 or len(set(xs)) == 1:
        return Trend(0.0, ys[-1], len(points))
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return Trend(slope, my - slope * mx, len(points))


def date_no_space(points: list[tuple[dt.date, int]], quota: int | None) -> dt.date | None:
    """The date the fitted line reaches ``quota``; None if it never does."""
    trend = fit(points)
    if trend is None or not quota:
        return None
    last = max(points)[0]
    if trend.at(0) >= quota:
        return last
    if trend.slope_per_day <= 0:
        return None
    days = (quota - trend.intercept) / trend.slope_per_day
    if days > 365 * 100:
        return None
    return last + dt.timedelta(days=math.ceil(days))


def warning_level(points: list[tuple[dt.date, int]], quota: int | None) -> int:
    trend = fit(points)
    if trend is None or not quota:
        return 1
    for level in sorted(WARNINGS, reverse=True):
        if any(trend.at(days) / quota > share for days, share in WARNINGS[level]):
            return level
    return 1


def plot_svg(group: str, volume: str, points: list[tuple[dt.date, int, int | None]], width: int = 720,
             height: int = 360) -> str:  # fmt: skip
    """An SVG of one group's usage (line), quota (step line) and the prediction (dashed,
    up to the date it fills the quota or 30 days ahead)."""
    points = sorted(points)
    pad_l, pad_r, pad_t, pad_b = 80, 20, 40, 50
    title = html.escape(f"{group} on {volume}: usage against quota")
    if not points:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                f'<text x="10" y="20">{title}: no data</text></svg>\n')  # fmt: skip
    quota = next((q for _, _, q in reversed(points) if q), None)
    usage = [(d, u) for d, u, _ in points]
    full = date_no_space(usage, quota)
    first, last = points[0][0], points[-1][0]
    end = min(full, last + dt.timedelta(days=365)) if full else last + dt.timedelta(days=30)
    span = max((end - first).days, 1)
    top = max([u for _, u in usage] + [q for _, _, q in points if q] + [1]) * 1.1

    def x(day: dt.date) -> float:
        return pad_l + (width - pad_l - pad_r) * (day - first).days / span

    def y(value: float) -> float:
        return height - pad_b - (height - pad_t - pad_b) * value / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="12">', f'<text x="{pad_l}" y="20" font-size="14">{title}</text>',
             f'<line x1="{pad_l}" y1="{y(0):.1f}" x2="{width - pad_r}" y2="{y(0):.1f}" stroke="black"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{y(0):.1f}" stroke="black"/>']  # fmt: skip
    for i in range(5):
        value = top * i / 4
        parts.append(f'<text x="{pad_l - 5}" y="{y(value) + 4:.1f}" text-anchor="end">{_human(value)}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 20}">{first.isoformat()}</text>')
    parts.append(f'<text x="{width - pad_r}" y="{height - 20}" text-anchor="end">{end.isoformat()}</text>')
    line = " ".join(f"{x(d):.1f},{y(u):.1f}" for d, u in usage)
    parts.append(f'<polyline class="usage" fill="none" stroke="#1f77b4" stroke-width="2" points="{line}"/>')
    quota_line = [(d, q) for d, _, q in points if q]
    if quota_line:
        pts = " ".join(f"{x(d):.1f},{y(q):.1f}" for d, q in [*quota_line, (end, quota_line[-1][1])])
        parts.append(f'<polyline class="quota" fill="none" stroke="#d62728" stroke-width="2" points="{pts}"/>')
    trend = fit(usage)
    if trend is not None and len(usage) > 1:
        stop_day = full or end
        days = (stop_day - last).days
        parts.append(f'<line class="prediction" x1="{x(last):.1f}" y1="{y(trend.at(0)):.1f}" x2="{x(stop_day):.1f}" '
                     f'y2="{y(max(trend.at(days), 0)):.1f}" stroke="#1f77b4" stroke-dasharray="6,4"/>')  # fmt: skip
    label = f"full on {full.isoformat()}" if full else "not predicted to fill"
    parts.append(f'<text x="{width - pad_r}" y="20" text-anchor="end">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _human(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)
