"""W3C trace context: `inject` the current span into outgoing headers, `extract` the span to continue
from incoming ones.

`traceparent` is `00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>`. Anything malformed
(wrong shape, uppercase hex, version ff, all-zero ids, a version-00 header with extra fields) is
ignored: `extract` then gives the root context, and a span begun from it starts a new trace.
`tracestate` travels with the trace (kept in its trace tuple) and is written back by `inject` unless
the headers already have one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping

from spanlake.tracing.spans import ROOT_CONTEXT, Context, SpanContext, current_span_context

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_SAMPLED = "01"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name: case-insensitive mappings (aiohttp, httpx) directly, plain dicts by scanning."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value if isinstance(value, str) else None


def extract(headers: Mapping[str, str]) -> SpanContext:
    """The remote span named by `headers`' `traceparent` (and its `tracestate`), to continue with
    `async_span(name, parent=context)` or `attach(context)`; the root context when there is none or it
    is malformed (never an error)."""
    value = _header(headers, TRACEPARENT)
    match = _TRACEPARENT.fullmatch(value.strip(" \t")) if value else None
    if match is None:
        return ROOT_CONTEXT
    version, trace_hex, parent_hex, _, extra = match.groups()
    if version == "ff" or (version == "00" and extra) or not int(trace_hex, 16) or not int(parent_hex, 16):
        return ROOT_CONTEXT
    trace_state = _header(headers, TRACESTATE)
    trace = (int(trace_hex[:16], 16), int(trace_hex[16:], 16))
    if trace_state:
        trace += (trace_state,)
    return SpanContext((0, -1, trace, int(parent_hex, 16)))


def traceparent(context: Context) -> str:
    """The `traceparent` value naming `context`'s span."""
    context = SpanContext(context)
    return f"00-{context.trace_id}-{context.span_hex}-{_SAMPLED}"


def inject(headers: MutableMapping[str, str], context: Context | None = None) -> MutableMapping[str, str]:
    """Writes `traceparent` for `context` (by default the current span) into `headers`, and the trace's
    `tracestate` unless `headers` has one; outside any span, leaves them as they are. Returns them."""
    context = current_span_context() if context is None else SpanContext(context)  # type: ignore[arg-type]
    if not context.valid:
        return headers
    headers[TRACEPARENT] = traceparent(context)
    if context.trace_state and _header(headers, TRACESTATE) is None:
        headers[TRACESTATE] = context.trace_state
    return headers
