"""The metrics chart's geometry: min / avg / max per time bin, placed for an SVG drawn by the
`chart.html` template on the server (no chart library).

Bins come as rows with `bin` in ns since the epoch and `min`, `avg`, `max`, `n`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spanlake.server.web.html import format_number, format_time

WIDTH, HEIGHT = 820, 280
LEFT, RIGHT, TOP, BOTTOM = 70, 48, 14, 34
TICKS = 5


@dataclass(frozen=True)
class Tick:
    """An axis label: where it goes (x or y, as SVG text) and what it says."""

    position: str
    label: str
    label_position: str = ""  # a y label's baseline, a little below its grid line


@dataclass(frozen=True)
class Point:
    """One bin: its place on the avg line and its values."""

    x: str
    y: str
    bin_ns: int
    min: float
    avg: float
    max: float
    n: int


@dataclass(frozen=True)
class Chart:
    """Everything the template draws, in SVG coordinates."""

    bin_ns: int
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    band: str  # polygon from max (left to right) back along min
    avg_line: str
    points: list[Point]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT


def _scale(low: float, high: float, out_low: float, out_high: float) -> Callable[[float], float]:
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) * (out_high - out_low) / span


def _at(value: float) -> str:
    return f"{value:.1f}"


def chart(bins: list[dict], bin_ns: int) -> Chart:
    """The chart of `bins` (none: a chart without points)."""
    if not bins:
        return Chart(bin_ns, [], [], "", "", [])
    times = [b["bin"] + bin_ns // 2 for b in bins]
    low = min(b["min"] for b in bins)
    high = max(b["max"] for b in bins)
    if low == high:
        low, high = low - 1, high + 1
    x = _scale(times[0] - bin_ns // 2, times[-1] + bin_ns // 2, LEFT, WIDTH - RIGHT)
    y = _scale(low, high, HEIGHT - BOTTOM, TOP)
    pairs = list(zip(times, bins, strict=True))
    band = [(x(t), y(b["max"])) for t, b in pairs] + [(x(t), y(b["min"])) for t, b in reversed(pairs)]
    values = [low + (high - low) * i / TICKS for i in range(TICKS + 1)]
    instants = [times[0] + (times[-1] - times[0]) * i // TICKS for i in range(TICKS + 1)]
    return Chart(
        bin_ns,
        [Tick(_at(y(v)), format_number(v), _at(y(v) + 4)) for v in values],
        [Tick(_at(x(t)), _clock(t, times[-1] - times[0])) for t in instants],
        " ".join(f"{_at(px)},{_at(py)}" for px, py in band),
        " ".join(f"{_at(x(t))},{_at(y(b['avg']))}" for t, b in pairs),
        [Point(_at(x(t)), _at(y(b["avg"])), b["bin"], b["min"], b["avg"], b["max"], b["n"]) for t, b in pairs],
    )


def _clock(ns: int, span_ns: int) -> str:
    """A time axis label: to the ms, or to the µs when the whole chart spans less than a second."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    clock = format_time(seconds * 1_000_000_000)[11:19]
    return f"{clock}.{fraction // 1000:06d}" if span_ns < 1_000_000_000 else f"{clock}.{fraction // 1_000_000:03d}"
