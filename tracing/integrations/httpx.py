"""httpx: event hooks giving each request a client span (kind 'client'), child of the current span,
whose `traceparent` goes out with the request.

    client = httpx.Client(event_hooks=tracing.integrations.httpx.event_hooks())
    client = httpx.AsyncClient(event_hooks=tracing.integrations.httpx.async_event_hooks())

The span ends when the response headers arrive (attribute `http.status_code`); a request that fails
before any response (connection refused, timeout) leaves its span without an end. Attributes
`http.method`, `http.url`.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from spanlake.tracing.propagation import inject
from spanlake.tracing.spans import begin_async_span

SPAN_EXTENSION = "spanlake_span"
Hooks = dict[str, list[Callable]]


def on_request(request: httpx.Request) -> None:
    """Begins the request's client span and writes its `traceparent` into the request headers."""
    attributes = {"http.method": request.method, "http.url": str(request.url)}
    span = begin_async_span(
        f"{request.method} {request.url.host}{request.url.path}", dynamic=True, kind="client", attributes=attributes
    )
    request.extensions[SPAN_EXTENSION] = span
    inject(request.headers, span.context)


def on_response(response: httpx.Response) -> None:
    """Ends the request's client span with the response's status code."""
    span = response.request.extensions.pop(SPAN_EXTENSION, None)
    if span is not None:
        span.set_attribute("http.status_code", response.status_code)
        span.end()


async def _on_request_async(request: httpx.Request) -> None:
    on_request(request)


async def _on_response_async(response: httpx.Response) -> None:
    on_response(response)


def event_hooks() -> Hooks:
    """The `event_hooks` of an `httpx.Client`."""
    return {"request": [on_request], "response": [on_response]}


def async_event_hooks() -> Hooks:
    """The `event_hooks` of an `httpx.AsyncClient`."""
    return {"request": [_on_request_async], "response": [_on_response_async]}
