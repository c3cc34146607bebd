"""aiohttp: a server middleware whose span (kind 'server') continues the request's `traceparent`, and a
client `TraceConfig` whose span (kind 'client') is injected into the outgoing request.

    app = web.Application(middlewares=[tracing.integrations.aiohttp.middleware])
    session = aiohttp.ClientSession(trace_configs=[tracing.integrations.aiohttp.client_trace_config()])

Span names are "<METHOD> <route>" (the route's canonical path, e.g. `/items/{id}`; the path when no
route matched); attributes `http.method`, `http.route` or `http.url`, `http.status_code`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from spanlake.tracing.propagation import extract, inject
from spanlake.tracing.spans import async_span, begin_async_span

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route(request: web.Request) -> str:
    """The matched route's canonical path, else the request path."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else request.path


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A server span around the handler, continuing the caller's trace (a new one without a valid
    `traceparent`); its status code is the response's or the raised HTTP exception's (an error from 500)."""
    route = _route(request)
    attributes: dict[str, object] = {"http.method": request.method, "http.route": route}
    raised: web.HTTPException | None = None
    parent = extract(request.headers)
    with async_span(f"{request.method} {route}", parent, dynamic=True, kind="server", attributes=attributes):
        try:
            response = await handler(request)
            attributes["http.status_code"] = response.status
        except web.HTTPException as error:  # an answer, not a failure of the span (unless a 5xx)
            attributes["http.status_code"] = error.status
            if error.status >= 500:
                attributes["error"] = type(error).__name__
            raised = error
    if raised is not None:
        raise raised
    return response


async def _on_request_start(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
) -> None:
    attributes = {"http.method": params.method, "http.url": str(params.url)}
    context.spanlake_span = span = begin_async_span(
        f"{params.method} {params.url.host}{params.url.path}", dynamic=True, kind="client", attributes=attributes
    )
    inject(params.headers, span.context)


async def _on_request_end(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
) -> None:
    context.spanlake_span.set_attribute("http.status_code", params.response.status)
    context.spanlake_span.end()


async def _on_request_exception(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
) -> None:
    context.spanlake_span.set_attribute("error", type(params.exception).__name__)
    context.spanlake_span.end()


def client_trace_config() -> aiohttp.TraceConfig:
    """A `TraceConfig` giving each request of a `ClientSession` a client span, child of the current
    span, whose `traceparent` goes out with the request."""
    config = aiohttp.TraceConfig()
    config.on_request_start.append(_on_request_start)
    config.on_request_end.append(_on_request_end)
    config.on_request_exception.append(_on_request_exception)
    return config
