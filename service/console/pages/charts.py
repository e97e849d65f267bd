"""Geometry of the console's server-rendered SVG charts (templates draw it; no JavaScript chart library)."""

from __future__ import annotations

from dataclasses import dataclass

# One colour per call outcome and delivery status, the same on every page; unknown keys are grey.
COLOURS = {
    "answered": "#2da44e", "voicemail": "#0b61d8", "busy": "#bf8700", "missed": "#cf222e", "no_answer": "#8250df",
    "succeeded": "#2da44e", "retrying": "#bf8700", "pending": "#d4a72c", "running": "#54aeff", "failed": "#cf222e",
    "dead": "#82071e", "paused": "#8250df", "discarded": "#8c959f",
}
GREY = "#8c959f"


@dataclass(frozen=True)
class Segment:
    """One coloured piece of a bar: its series, count, and place (SVG units, or percent for table bars)."""

    key: str
    count: int
    colour: str
    start: float
    size: float


@dataclass(frozen=True)
class Column:
    """One bar of a stacked bar chart: its label, total and segments bottom-up."""

    label: str
    total: int
    x: float
    segments: list[Segment]


@dataclass(frozen=True)
class StackedChart:
    """A stacked bar chart laid out in a ``width`` x ``height`` SVG viewBox, with its legend and scale."""

    width: int
    height: int
    bar_width: float
    columns: list[Column]
    legend: list[tuple[str, str]]
    maximum: int
    ticks: list[tuple[int, float]]


def series_order(counts: list[dict[str, int]], preferred: tuple[str, ...]) -> list[str]:
    """The series present in ``counts``: the preferred ones in order, then any others by name."""
    present = {key for row in counts for key, n in row.items() if n}
    return [k for k in preferred if k in present] + sorted(present - set(preferred))


def stacked_chart(labels: list[str], counts: list[dict[str, int]], preferred: tuple[str, ...], *,
                  width: int = 720, height: int = 220, top: int = 10, bottom: int = 22,
                  left: int = 30) -> StackedChart:
    """Lay out one stacked bar per label; each bar's segments are its counts per series, bottom-up."""
    order = series_order(counts, preferred)
    maximum = max((sum(row.values()) for row in counts), default=0)
    plot = height - top - bottom
    step = (width - left) / max(len(labels), 1)
    bar = step * 0.7
    scale = plot / maximum if maximum else 0
    columns = []
    for i, (label, row) in enumerate(zip(labels, counts)):
        y = float(height - bottom)
        segments = []
        for key in order:
            n = row.get(key, 0)
            if n:
                h = n * scale
                y -= h
                segments.append(Segment(key, n, COLOURS.get(key, GREY), round(y, 2), round(h, 2)))
        columns.append(Column(label, sum(row.values()), round(left + i * step + (step - bar) / 2, 2), segments))
    ticks = sorted({0, maximum // 2, maximum}) if maximum else [0]
    return StackedChart(width, height, round(bar, 2), columns, [(k, COLOURS.get(k, GREY)) for k in order], maximum,
                        [(t, round(height - bottom - t * scale, 2)) for t in ticks])


def share_bar(counts: dict[str, int], preferred: tuple[str, ...]) -> list[Segment]:
    """One horizontal bar split by ``counts`` (start and size in percent), for tables."""
    total = sum(counts.values())
    segments, start = [], 0.0
    for key in series_order([counts], preferred):
        size = 100 * counts[key] / total
        segments.append(Segment(key, counts[key], COLOURS.get(key, GREY), round(start, 2), round(size, 2)))
        start += size
    return segments
