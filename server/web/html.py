"""The page layout and the small HTML pieces every screen uses. Everything shown is escaped here."""

from __future__ import annotations

import datetime as dt
import html
import urllib.parse
from collections.abc import Iterable, Mapping

from aiohttp import web

from spanlake.server.web.time_range import TimeRange

PRESETS = (("15m", "now-15m"), ("1h", "now-1h"), ("6h", "now-6h"), ("24h", "now-24h"), ("7d", "now-7d"))


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def url(path: str, params: Mapping[str, object] | None = None) -> str:
    """`path?params`, leaving out empty parameters."""
    kept = {k: str(v) for k, v in (params or {}).items() if v not in (None, "")}
    return f"{path}?{urllib.parse.urlencode(kept)}" if kept else path


def link(href: str, text: str, css: str = "") -> str:
    return f'<a href="{esc(href)}"{f" class={esc(css)!r}" if css else ""}>{esc(text)}</a>'


def page(
    title: str,
    body: str,
    *,
    scripts: Iterable[str] = (),
    status: int = 200,
    crumbs: Iterable[tuple[str, str]] = (),
    signed_in: bool = False,
) -> web.Response:
    """The whole document: header with navigation, the body, the page's own scripts."""
    trail = "".join(f"<span class=crumb>{link(href, text)}</span>" for href, text in crumbs)
    logout = '<form method=post action="/logout" class=logout><button>Sign out</button></form>' if signed_in else ""
    script_tags = "".join(f'<script src="/static/{esc(name)}" defer></script>' for name in ("app.js", *scripts))
    document = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<title>{esc(title)} · spanlake</title><link rel=icon href="data:,"><link rel=stylesheet href="/static/app.css">
{script_tags}</head>
<body><header><a class=brand href="/">spanlake</a><nav>{link("/", "Processes")}{link("/sql", "SQL")}</nav>
<div class=trail>{trail}</div>{logout}</header>
<main><h1>{esc(title)}</h1>{body}</main></body></html>"""
    return web.Response(text=document, status=status, content_type="text/html")


def error_box(message: str) -> str:
    return f"<div class=error role=alert id=error>{esc(message)}</div>"


def error_page(status: int, title: str, message: str, signed_in: bool = False) -> web.Response:
    return page(
        title, error_box(message) + f"<p>{link('/', 'Back to the processes')}</p>", status=status, signed_in=signed_in
    )


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], css: str = "grid", table_id: str = "") -> str:
    """A table of already-rendered cells (escape with `esc` first)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    ident = f" id={esc(table_id)}" if table_id else ""
    return f"<table class={css}{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def time_form(path: str, time_range: TimeRange, hidden: Mapping[str, object] | None = None) -> str:
    """The time-range picker: presets, free `from` / `to` fields, and the other parameters kept."""
    keep = "".join(
        f'<input type=hidden name="{esc(k)}" value="{esc(v)}">'
        for k, v in (hidden or {}).items()
        if v not in ("", None)
    )
    presets = "".join(
        link(url(path, {**(hidden or {}), "from": value, "to": "now"}), label, "preset") for label, value in PRESETS
    )
    return f"""<form class=timerange method=get action="{esc(path)}">{keep}
<label>from <input name=from value="{esc(time_range.from_text)}" size=38></label>
<label>to <input name=to value="{esc(time_range.to_text)}" size=38></label>
<button>Apply</button><span class=presets>{presets}</span>
<span class=resolved>{esc(format_time(time_range.begin_ns))} → {esc(format_time(time_range.end_ns))}</span></form>"""


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


class PageError(Exception):
    """What a screen shows instead of itself: a title, a message and the HTTP status that fits."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
