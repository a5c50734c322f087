"""The history charts' geometry: line charts of a ``HistorySeries``, laid out on the server as SVG.

Three charts per range: tasks per bar (started, succeeded, failed, retried), run time (p50, p95)
and wait from due to start (p50, p95). A step with nothing timed leaves a gap in a time line,
not a drop to zero. Every chart carries a text summary for its ``aria-label``; the page adds a
table of the same figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from flask_babel import gettext, lazy_gettext

from ..tasks.history_query import HistorySeries
from ..tasks.history_sql import StatFigures
from .clock import display_zone
from .presenters import nice_ceiling

WIDTH, HEIGHT = 1000, 180
LEFT, TOP, BOTTOM_MARGIN, RIGHT_MARGIN = 64, 10, 24, 8
X_LABELS = 6

SERIES_LABELS = {
    "started": lazy_gettext("started"),
    "succeeded": lazy_gettext("succeeded"),
    "failed": lazy_gettext("failed"),
    "retried": lazy_gettext("retried"),
    "run_p50_ms": lazy_gettext("run time p50"),
    "run_p95_ms": lazy_gettext("run time p95"),
    "wait_p50_ms": lazy_gettext("wait p50"),
    "wait_p95_ms": lazy_gettext("wait p95"),
}


@dataclass
class Line:
    """One series: its key (CSS class), its label, its polylines (a gap splits a line) and lone points."""

    key: str
    label: str
    segments: list[str] = field(default_factory=list)
    dots: list[tuple[float, float]] = field(default_factory=list)  # a point with gaps on both sides


@dataclass
class LineChart:
    """An SVG line chart: plot box, y ticks with their labels, x labels, lines."""

    id: str
    title: str
    summary: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: float = WIDTH - LEFT - RIGHT_MARGIN
    plot_height: float = HEIGHT - TOP - BOTTOM_MARGIN
    lines: list[Line] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_labels: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def bottom(self) -> float:
        return self.top + self.plot_height

    @property
    def right(self) -> float:
        return self.left + self.plot_width


def format_ms(value: float | None) -> str:
    """A time in milliseconds as people read it: ``850 ms``, ``2.5 s``, ``3.2 min``; a dash for none."""
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.3g} s"
    return f"{value / 60_000:.3g} min"


def _time_label(moment: datetime, series: HistorySeries) -> str:
    local = moment.astimezone(display_zone())  # the console's one clock (console/clock.py)
    return local.strftime("%H:%M") if series.range.span.days < 2 else local.strftime("%m-%d %H:%M")


def _layout(chart: LineChart, series: HistorySeries, keys: tuple[str, ...],
            value_of: Callable[[StatFigures, str], float | None], tick_text: Callable[[float], str],
            whole_numbers: bool = False) -> LineChart:
    points = series.points
    values = [value_of(point, key) for point in points for key in keys]
    y_max = float(nice_ceiling(int(max((v for v in values if v is not None), default=0) + 0.999)))
    slot = chart.plot_width / max(1, len(points))
    scale = chart.plot_height / y_max
    for key in keys:
        line = Line(key, str(SERIES_LABELS[key]))
        current: list[str] = []
        for index, point in enumerate(points):
            value = value_of(point, key)
            if value is None:
                if current:
                    line.segments.append(" ".join(current))
                current = []
                continue
            x = chart.left + (index + 0.5) * slot
            y = chart.bottom - value * scale
            if not current and (index + 1 == len(points) or value_of(points[index + 1], key) is None):
                line.dots.append((round(x, 1), round(y, 1)))  # no line to draw through a lone point
                continue
            current.append(f"{x:.1f},{y:.1f}")
        if current:
            line.segments.append(" ".join(current))
        chart.lines.append(line)
    # Counts get no "2.5" line between 0 and 5.
    ticks = (0, y_max) if whole_numbers and y_max % 2 else (0, y_max / 2, y_max)
    chart.y_ticks = [(round(chart.bottom - tick * scale, 1), tick_text(tick)) for tick in ticks]
    every = max(1, len(points) // X_LABELS)
    for index in range(0, len(points), every):
        x = chart.left + (index + 0.5) * slot
        chart.x_labels.append((round(x, 1), _time_label(points[index].start, series), "middle"))
    return chart


def _count(point: StatFigures, key: str) -> float | None:
    return float(getattr(point, key))


def _time(point: StatFigures, key: str) -> float | None:
    value = getattr(point, key)
    return None if value is None else float(value)


def history_charts(series: HistorySeries) -> list[LineChart]:
    """The three charts of a range: counts, run time, wait."""
    total = series.total
    counts = LineChart("history-counts", gettext("Tasks per %(step)s", step=step_label(series)), gettext(
        "%(started)s started, %(succeeded)s succeeded, %(failed)s failed, %(retried)s retried",
        started=total.started, succeeded=total.succeeded, failed=total.failed, retried=total.retried))
    runs = LineChart("history-run", gettext("Run time"), gettext(
        "Run time: p50 %(p50)s, p95 %(p95)s, longest %(max)s", p50=format_ms(total.run_p50_ms),
        p95=format_ms(total.run_p95_ms), max=format_ms(total.run_max_ms)))
    waits = LineChart("history-wait", gettext("Wait from due to start"), gettext(
        "Wait from due to start: p50 %(p50)s, p95 %(p95)s", p50=format_ms(total.wait_p50_ms),
        p95=format_ms(total.wait_p95_ms)))
    return [
        _layout(counts, series, ("started", "succeeded", "failed", "retried"), _count, lambda v: f"{v:g}", whole_numbers=True),
        _layout(runs, series, ("run_p50_ms", "run_p95_ms"), _time, format_ms),
        _layout(waits, series, ("wait_p50_ms", "wait_p95_ms"), _time, format_ms),
    ]


def step_label(series: HistorySeries) -> str:
    """What one bar covers: ``minute``, ``15 minutes``, ``hour``, ``6 hours``."""
    minutes = int(series.range.step.total_seconds() // 60)
    if minutes == 1:
        return gettext("minute")
    if minutes < 60:
        return gettext("%(count)s minutes", count=minutes)
    if minutes == 60:
        return gettext("hour")
    return gettext("%(count)s hours", count=minutes // 60)
