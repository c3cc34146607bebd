"""The pages' Jinja2 templates (autoescaped: whatever a page shows from data is escaped by the
template), the layout's navigation, and the formatting of times and durations."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

import jinja2
from aiohttp import web

PRESETS = (("15m", "now-15m"), ("1h", "now-1h"), ("6h", "now-6h"), ("24h", "now-24h"), ("7d", "now-7d"))
# The header's links, in order: a new screen adds its (path, label) here.
NAV_LINKS = (
    ("/", "Processes"),
    ("/traces", "Traces"),
    ("/sql", "SQL"),
    ("/screens", "Screens"),
    ("/slow-queries", "Slow queries"),
)
TEMPLATE_DIR = Path(__file__).parent / "templates"


def url(path: str, params: Mapping[str, object] | None = None) -> str:
    """`path?params`, leaving out empty parameters."""
    kept = {k: str(v) for k, v in (params or {}).items() if v not in (None, "")}
    return f"{path}?{urllib.parse.urlencode(kept)}" if kept else path


def format_time(value: int | dt.datetime | None) -> str:
    """ns since the epoch or a datetime → `2026-12-01 17:31:02.123 UTC`."""
    if value is None:
        return ""
    if isinstance(value, int):
        value = dt.datetime.fromtimestamp(value / 1e9, dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_duration(ns: float | None) -> str:
    """A duration for people: 830 ns, 12.3 µs, 4.56 ms, 1.23 s, 2 min 3 s, 1 h 2 min."""
    if ns is None:
        return ""
    for limit, unit, scale in ((1e3, "ns", 1), (1e6, "µs", 1e3), (1e9, "ms", 1e6), (60e9, "s", 1e9)):
        if abs(ns) < limit:
            return f"{ns / scale:.3g} {unit}"
    seconds = int(ns // 1e9)
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def format_number(value: float) -> str:
    """A measured value to four significant digits."""
    return f"{value:.4g}"


def format_count(n: int) -> str:
    """An integer with thousands separators: 12,345."""
    return f"{n:,}"


def _shown(value: object) -> object:
    """What `{{ value }}` prints: nothing for a missing (NULL) value."""
    return "" if value is None else value


def _environment() -> jinja2.Environment:
    """The templates' environment, built once: autoescaping on for every template, undefined names fail."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    environment.globals.update(url=url, nav_links=NAV_LINKS, presets=PRESETS)
    environment.filters.update(time=format_time, duration=format_duration, count=format_count, number=format_number)
    return environment


TEMPLATES = _environment()


def render(template: str, **context: object) -> str:
    """The text of `template` with `context`."""
    return TEMPLATES.get_template(template).render(context)


def page(
    template: str,
    *,
    title: str,
    status: int = 200,
    csrf_token: str,
    signed_in: bool = False,
    crumbs: Iterable[tuple[str, str]] = (),
    scripts: Iterable[str] = (),
    **context: object,
) -> web.Response:
    """A whole document: `template` extends the layout (header, navigation, crumbs, the page's scripts);
    its forms and scripts send `csrf_token` (`server.site_guard`)."""
    document = render(
        template,
        title=title,
        signed_in=signed_in,
        csrf_token=csrf_token,
        crumbs=tuple(crumbs),
        scripts=("app.js", *scripts),
        **context,
    )
    return web.Response(text=document, status=status, content_type="text/html")


def error_page(status: int, title: str, message: str, csrf_token: str, signed_in: bool = False) -> web.Response:
    """The page a screen shows instead of itself."""
    return page("error.html", title=title, message=message, status=status, csrf_token=csrf_token, signed_in=signed_in)


class PageError(Exception):
    """What a screen shows instead of itself: a title, a message and the HTTP status that fits."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
