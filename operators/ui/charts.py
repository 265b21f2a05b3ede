"""Charts drawn on the server as inline SVG: no script, no external library, and colours from the page's CSS.

Every mark carries a class (``series-N``, ``decision-drift``, ...) that ``static/mledge.css`` colours from the
page's theme variables, so a chart follows Airflow's light or dark mode with the rest of the page. Each point has a
``<title>`` (its value on hover) and each chart a text alternative; the pages also show the numbers as a table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 230
MARGIN = {"left": 48, "right": 12, "top": 14, "bottom": 40}
P_FLOOR_EXPONENT = 20  # p-values below 1e-20 are drawn at the top edge (their value is in the point's title)


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    css: str  # class of the line and its points
    emphasis: bool = False
    titles: list[str] = field(default_factory=list)  # one per point; default "name: x, y"


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _attrs(**attributes: object) -> str:
    return " ".join(f'{k.rstrip("_").replace("_", "-")}="{escape(str(v), quote=True)}"' for k, v in attributes.items())


class _Frame:
    """Plot area and scales of one chart."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], width: int, height: int) -> None:
        self.width, self.height = width, height
        self.x0, self.x1 = MARGIN["left"], width - MARGIN["right"]
        self.y0, self.y1 = height - MARGIN["bottom"], MARGIN["top"]
        lo, hi = x_range
        self.x_lo, self.x_hi = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
        self.y_lo, self.y_hi = y_range

    def x(self, value: float) -> float:
        return self.x0 + (value - self.x_lo) / (self.x_hi - self.x_lo) * (self.x1 - self.x0)

    def y(self, value: float) -> float:
        value = min(max(value, self.y_lo), self.y_hi)
        return self.y0 - (value - self.y_lo) / (self.y_hi - self.y_lo) * (self.y0 - self.y1)

    def axes(self, x_ticks: Iterable[tuple[float, str]], y_ticks: Iterable[tuple[float, str]], x_label: str,
             y_label: str) -> list[str]:
        parts = []
        for value, label in y_ticks:
            y = self.y(value)
            parts.append(f'<line class="grid" {_attrs(x1=self.x0, x2=self.x1, y1=_fmt(y), y2=_fmt(y))}/>')
            parts.append(f'<text class="tick" text-anchor="end" {_attrs(x=self.x0 - 6, y=_fmt(y + 4))}>'
                         f"{escape(label)}</text>")
        for value, label in x_ticks:
            x = self.x(value)
            parts.append(f'<text class="tick" text-anchor="middle" {_attrs(x=_fmt(x), y=self.y0 + 15)}>'
                         f"{escape(label)}</text>")
        parts.append(f'<line class="axis" {_attrs(x1=self.x0, x2=self.x1, y1=self.y0, y2=self.y0)}/>')
        parts.append(f'<line class="axis" {_attrs(x1=self.x0, x2=self.x0, y1=self.y0, y2=self.y1)}/>')
        middle = _attrs(x=_fmt((self.x0 + self.x1) / 2), y=self.height - 4)
        parts.append(f'<text class="label" text-anchor="middle" {middle}>{escape(x_label)}</text>')
        parts.append(f'<text class="label" text-anchor="middle" transform="rotate(-90)" '
                     f'{_attrs(x=_fmt(-(self.y0 + self.y1) / 2), y=12)}>{escape(y_label)}</text>')
        return parts


def _svg(frame: _Frame, label: str, css: str, body: list[str], chart_id: str) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart-svg {escape(css)}" role="img" '
            f'{_attrs(id=chart_id, viewBox=f"0 0 {frame.width} {frame.height}")} '
            f'aria-labelledby="{escape(chart_id)}-title"><title id="{escape(chart_id)}-title">{escape(label)}</title>')
    return Markup(head + "".join(body) + "</svg>")


def _ticks(lo: int, hi: int, most: int = 10) -> list[int]:
    step = max(1, math.ceil((hi - lo + 1) / most))
    return list(range(lo, hi + 1, step))


def line_chart(series: Sequence[Series], *, chart_id: str, label: str, x_label: str = "round",
               y_label: str = "F1 (failure class)", y_range: tuple[float, float] = (0.0, 1.0),
               width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """Lines over whole-number x (rounds), one per series; the emphasised one (global) drawn last and thicker."""
    xs = [x for s in series for x, _ in s.points]
    frame = _Frame((min(xs, default=0), max(xs, default=1)), y_range, width, height)
    y_ticks = [(v / 4 * (y_range[1] - y_range[0]) + y_range[0], "") for v in range(5)]
    y_ticks = [(v, f"{v:.2f}") for v, _ in y_ticks]
    x_ticks = [(x, str(x)) for x in _ticks(int(min(xs, default=0)), int(max(xs, default=1)))]
    body = frame.axes(x_ticks, y_ticks, x_label, y_label)
    for s in sorted(series, key=lambda s: s.emphasis):
        points = sorted(s.points)
        if not points:
            continue
        line = " ".join(f"{_fmt(frame.x(x))},{_fmt(frame.y(y))}" for x, y in points)
        weight = " emphasis" if s.emphasis else ""
        body.append(f'<g class="series {escape(s.css)}{weight}" data-series="{escape(s.name)}">')
        body.append(f'<polyline class="line" fill="none" points="{line}"/>')
        titles = s.titles or [f"{s.name}, {x_label} {x:g}: {y:.3f}" for x, y in points]
        for (x, y), title in zip(points, titles, strict=False):
            body.append(f'<circle class="point" r="3" {_attrs(cx=_fmt(frame.x(x)), cy=_fmt(frame.y(y)))}>'
                        f"<title>{escape(title)}</title></circle>")
        body.append("</g>")
    return _svg(frame, label, "line-chart", body, chart_id)


def neg_log10(p: float | None) -> float | None:
    """-log10(p) for the timeline's y axis; None when there is no p-value."""
    if p is None or not isinstance(p, int | float) or math.isnan(p) or p < 0:
        return None
    return P_FLOOR_EXPONENT if p <= 10 ** -P_FLOOR_EXPONENT else -math.log10(p) if p > 0 else P_FLOOR_EXPONENT


def batch_number(batch: str) -> int | None:
    digits = "".join(ch for ch in str(batch) if ch.isdigit())
    return int(digits) if digits else None


def drift_timeline(alerts: Sequence[Mapping], *, site: str, chart_id: str, width: int = WIDTH,
                   height: int = HEIGHT) -> Markup:
    """One site's evaluations per batch: -log10(p) on y (higher is stronger evidence of drift), a circle for data
    drift and a square for concept drift, filled where the decision was drift."""
    marks = []
    for a in alerts:
        x, y = batch_number(a.get("batch", "")), neg_log10(a.get("p_value"))
        if x is not None and y is not None:
            marks.append((x, y, a))
    xs = [m[0] for m in marks] or [0, 1]
    top = max([m[1] for m in marks] + [3.0])
    top = float(min(P_FLOOR_EXPONENT, math.ceil(top)))
    frame = _Frame((min(xs), max(xs)), (0.0, top), width, height)
    y_step = max(1, math.ceil(top / 5))
    y_ticks = [(float(v), f"1e-{v}" if v else "1") for v in range(0, int(top) + 1, y_step)]
    x_ticks = [(x, str(x)) for x in _ticks(min(xs), max(xs))]
    body = frame.axes(x_ticks, y_ticks, "batch", "p-value (log scale)")
    for kind in sorted({m[2].get("kind") for m in marks}):
        line = sorted((x, y) for x, y, a in marks if a.get("kind") == kind)
        if len(line) > 1:
            points = " ".join(f"{_fmt(frame.x(x))},{_fmt(frame.y(y))}" for x, y in line)
            body.append(f'<polyline class="trail kind-{escape(str(kind))}" fill="none" points="{points}"/>')
    for x, y, a in sorted(marks, key=lambda m: m[2].get("decision") == "drift"):
        cx, cy = frame.x(x), frame.y(y)
        css = f"mark decision-{escape(str(a.get('decision')))} kind-{escape(str(a.get('kind')))}"
        title = (f"{site} {a.get('batch')} {a.get('kind')} drift test: p = {a.get('p_value'):.3g}, "
                 f"{a.get('decision')} (alert #{a.get('id')}, {a.get('status')})")
        data = _attrs(data_alert_id=a.get("id"), data_decision=a.get("decision"), data_batch=a.get("batch"))
        if a.get("kind") == "concept":
            body.append(f'<rect class="{css}" {_attrs(x=_fmt(cx - 4), y=_fmt(cy - 4), width=8, height=8)} {data}>'
                        f"<title>{escape(title)}</title></rect>")
        else:
            body.append(f'<circle class="{css}" r="4.5" {_attrs(cx=_fmt(cx), cy=_fmt(cy))} {data}>'
                        f"<title>{escape(title)}</title></circle>")
    drifts = sum(1 for m in marks if m[2].get("decision") == "drift")
    label = f"Drift evaluations at {site}: {len(marks)} per batch, {drifts} confirmed drift"
    return _svg(frame, label, "timeline-chart", body, chart_id)
