"""The metrics chart: min / avg / max per time bin, drawn as SVG on the server (no chart library).

Bins come as rows with `bin` in ns since the epoch and `min`, `avg`, `max`, `n`.
"""

from __future__ import annotations

from collections.abc import Callable

from spanlake.server.web.html import esc, format_duration, format_time, table

WIDTH, HEIGHT = 820, 280
LEFT, RIGHT, TOP, BOTTOM = 70, 48, 14, 34
TICKS = 5


def _scale(low: float, high: float, out_low: float, out_high: float) -> Callable[[float], float]:
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) * (out_high - out_low) / span


def _number(value: float) -> str:
    return f"{value:.4g}"


def chart_svg(bins: list[dict], bin_ns: int) -> str:
    """A band from min to max and the avg line, one point per bin with its values as a tooltip."""
    times = [b["bin"] + bin_ns // 2 for b in bins]
    low = min(b["min"] for b in bins)
    high = max(b["max"] for b in bins)
    if low == high:
        low, high = low - 1, high + 1
    x = _scale(times[0] - bin_ns // 2, times[-1] + bin_ns // 2, LEFT, WIDTH - RIGHT)
    y = _scale(low, high, HEIGHT - BOTTOM, TOP)
    band = [(x(t), y(b["max"])) for t, b in zip(times, bins, strict=True)]
    band += [(x(t), y(b["min"])) for t, b in reversed(list(zip(times, bins, strict=True)))]
    avg = " ".join(f"{x(t):.1f},{y(b['avg']):.1f}" for t, b in zip(times, bins, strict=True))
    grid = []
    for i in range(TICKS + 1):
        value = low + (high - low) * i / TICKS
        grid.append(
            f'<line class=grid x1={LEFT} x2={WIDTH - RIGHT} y1="{y(value):.1f}" y2="{y(value):.1f}"/>'
            f'<text class=ylabel x={LEFT - 6} y="{y(value) + 4:.1f}">{esc(_number(value))}</text>'
        )
    for i in range(TICKS + 1):
        t = times[0] + (times[-1] - times[0]) * i // TICKS
        grid.append(f'<text class=xlabel x="{x(t):.1f}" y={HEIGHT - 12}>{esc(_clock(t, times[-1] - times[0]))}</text>')
    points = "".join(
        f'<circle class=point cx="{x(t):.1f}" cy="{y(b["avg"]):.1f}" r=2.5 data-avg="{b["avg"]!r}"'
        f' data-min="{b["min"]!r}" data-max="{b["max"]!r}" data-n={b["n"]}><title>{esc(format_time(b["bin"]))}'
        f" · avg {_number(b['avg'])} · min {_number(b['min'])} · max {_number(b['max'])} · {b['n']} points"
        "</title></circle>"
        for t, b in zip(times, bins, strict=True)
    )
    polygon = " ".join(f"{px:.1f},{py:.1f}" for px, py in band)
    return (
        f'<svg class=chart id=chart viewBox="0 0 {WIDTH} {HEIGHT}" role=img aria-label="min avg max over time">'
        f'{"".join(grid)}<polygon class=band points="{polygon}"/><polyline class=avg points="{avg}"/>'
        f"{points}</svg>"
    )


def _clock(ns: int, span_ns: int) -> str:
    """A time axis label: to the ms, or to the µs when the whole chart spans less than a second."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    clock = format_time(seconds * 1_000_000_000)[11:19]
    return f"{clock}.{fraction // 1000:06d}" if span_ns < 1_000_000_000 else f"{clock}.{fraction // 1_000_000:03d}"


def chart_section(title: str, bins: list[dict], bin_ns: int) -> str:
    """The chart with its legend and, one click away, the values it draws."""
    if not bins:
        return f"<h2>{esc(title)}</h2><p class=hint>No points in this time range.</p>"
    rows = [
        [
            esc(format_time(b["bin"])),
            esc(_number(b["min"])),
            esc(_number(b["avg"])),
            esc(_number(b["max"])),
            str(b["n"]),
        ]
        for b in bins
    ]
    return (
        f"<h2>{esc(title)}</h2><p class=legend><span class=key-avg>avg</span> <span class=key-band>min–max</span>"
        f" · {len(bins)} bins of {esc(format_duration(bin_ns))}</p>{chart_svg(bins, bin_ns)}"
        f"<details><summary>values</summary>{table(['bin', 'min', 'avg', 'max', 'points'], rows, 'grid', 'chart-data')}"
        "</details>"
    )
