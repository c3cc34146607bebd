"""Mounts the web UI on the HTTP server's aiohttp app: its routes, its auth middleware, its static files.

Each screen's failures become a page (or, for the scripts' routes, a JSON `{"error"}` / plain text)
with the status that fits: 400 for a bad id or range, 404 for an unknown process, 403 for an admin
function or a denied query, 400/500 for a failing query, 504 past the time limit, 503 when the catalog
or the object store does not answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from spanlake.lakehouse.errors import STORAGE_FAILURES, STORAGE_UNAVAILABLE
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.runner import QueryRunner
from spanlake.server.auth import Authenticator, AuthError
from spanlake.server.oidc import IssuerUnavailable
from spanlake.server.site_guard import csrf_token
from spanlake.server.web import html
from spanlake.server.web.access_api import AccessApi
from spanlake.server.web.access_pages import AccessPages
from spanlake.server.web.api import Api
from spanlake.server.web.auth_cookie import authenticate, login_handlers, login_redirect, principal_of
from spanlake.server.web.login_throttle import LoginThrottle
from spanlake.server.web.oidc_signin import OidcSignIn
from spanlake.server.web.perfetto_download import PerfettoDownload
from spanlake.server.web.process_pages import ProcessScreens
from spanlake.server.web.queries import StorageUnavailable, WebQueries, WebQueryError
from spanlake.server.web.query_stream import QueryStream
from spanlake.server.web.screens_api import ScreensApi
from spanlake.server.web.screens_pages import ScreenPages
from spanlake.server.web.slow_queries import SlowQueryScreens
from spanlake.server.web.time_range import TimeRangeError
from spanlake.server.web.trace_pages import TraceScreens

STATIC_DIR = Path(__file__).parent / "static"
PUBLIC_PREFIXES = ("/health", "/ready", "/ingestion/", "/login", "/logout", "/auth/", "/static/", "/api/health")

ISSUER_UNAVAILABLE = "the sign-in provider's keys cannot be read: retry later"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Render = Callable[[web.Request, int, str, str], web.StreamResponse]


def _failure(exc: Exception) -> tuple[int, str, str]:
    """(status, title, message) of a failure a screen reports."""
    if isinstance(exc, html.PageError):
        return exc.status, exc.title, exc.message
    if isinstance(exc, TimeRangeError):
        return 400, "Bad time range", str(exc)
    if isinstance(exc, WebQueryError) and not isinstance(exc, StorageUnavailable):
        return exc.status, "Query failed" if exc.status != 403 else "Forbidden", exc.message
    return 503, "Storage unavailable", STORAGE_UNAVAILABLE


def _reported(handler: Handler, render: Render) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (html.PageError, TimeRangeError, WebQueryError, *STORAGE_FAILURES) as exc:
            return render(request, *_failure(exc))

    return handle


def _as_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return html.error_page(status, title, message, csrf_token(request), signed_in=principal_of(request) is not None)


def _as_json(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return web.Response(text=json.dumps({"error": message}), status=status, content_type="application/json")


def _as_text(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return web.Response(text=message, status=status)


def _auth_middleware(authenticator: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        is_api = request.path.startswith("/api/")
        try:
            request["principal"] = await authenticate(request, authenticator)
        except AuthError as err:
            return _as_json(request, 401, "", f"unauthorized: {err}") if is_api else login_redirect(request)
        except STORAGE_FAILURES as exc:  # the keys are in the catalog database, which does not answer
            return (_as_json if is_api else _as_page)(request, *_failure(exc))
        except IssuerUnavailable:  # a token that cannot be checked now: not the caller's fault
            return (_as_json if is_api else _as_page)(request, 503, "Sign-in unavailable", ISSUER_UNAVAILABLE)
        return await handler(request)

    return middleware


def mount_web_ui(app: web.Application, lake: Lake, authenticator: Authenticator | None, runner: QueryRunner) -> None:
    """Adds the UI to `app` (before it starts): `/`, `/process/…`, `/sql`, `/login`, `/api/…`, `/static/…`;
    its queries run with `runner`."""
    if authenticator is not None:
        app.middlewares.append(_auth_middleware(authenticator))
    web_queries = WebQueries(runner)
    screens, api = ProcessScreens(lake, web_queries), Api(lake, web_queries)
    slow = SlowQueryScreens(lake, web_queries)
    traces = TraceScreens(lake, web_queries)
    notebooks = ScreenPages(lake, web_queries)
    throttle = LoginThrottle(lake.settings.login_failures_per_ip, lake.settings.login_failures)
    app.router.add_routes(login_handlers(authenticator, throttle))
    if authenticator is not None and authenticator.tokens is not None:
        app.router.add_routes(OidcSignIn(authenticator.tokens, lake.settings.public_url).routes())
    pages = {
        "/": screens.processes,
        "/sql": screens.sql,
        "/process/{process_id}": screens.overview,
        "/process/{process_id}/logs": screens.logs,
        "/process/{process_id}/metrics": screens.metrics,
        "/process/{process_id}/spans": screens.spans,
        "/process/{process_id}/threads": screens.threads,
        "/process/{process_id}/perfetto": screens.perfetto,
        "/slow-queries": slow.list,
        "/slow-queries/{span_id}": slow.tree,
        "/traces": traces.traces,
        "/trace/{trace_id}": traces.trace,
        "/screens": notebooks.folders,
        "/screen/{name}": notebooks.screen,
    }
    for path, handler in pages.items():
        app.router.add_get(path, _reported(handler, _as_page))
    app.router.add_get("/api/health", api.health)
    app.router.add_get("/api/process/{process_id}/async-spans", _reported(api.async_spans, _as_json))
    app.router.add_get("/api/stream/{stream_id}/thread-spans", _reported(api.thread_spans, _as_json))
    app.router.add_get("/api/process/{process_id}/async-spans/trace", _reported(api.async_span_trace, _as_json))
    app.router.add_get("/api/process/{process_id}/async-spans/find", _reported(api.find_async_span, _as_json))
    app.router.add_get("/api/stream/{stream_id}/thread-spans/find", _reported(api.find_thread_span, _as_json))
    app.router.add_get("/api/trace/{trace_id}", _reported(traces.waterfall, _as_json))
    app.router.add_post("/api/sql", _reported(api.sql, _as_json))
    app.router.add_get("/api/perfetto/{process_id}", _reported(PerfettoDownload(lake, web_queries).trace, _as_text))
    app.router.add_post("/api/query-stream", QueryStream(lake, web_queries).handle)
    app.router.add_post("/api/screen-cell", notebooks.run_cell)
    app.router.add_post("/screens/starters", _reported(notebooks.add_starters, _as_page))
    app.router.add_routes(AccessApi(lake).routes())
    app.router.add_routes(ScreensApi(lake).routes())
    access = AccessPages(lake)
    app.router.add_get("/access", _reported(access.page, _as_page))
    for path, handler in access.forms().items():
        app.router.add_post(path, _reported(handler, _as_page))
    app.router.add_static("/static", STATIC_DIR)
