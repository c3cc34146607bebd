"""Spans: thread spans for synchronous code, async spans for coroutines.

Recording a span edge appends a few ints to the calling thread's cpu stream (see tracing.streams);
everything else happens at flush time.

Async spans follow the asyncio task tree through a context variable holding the current async
span (id, depth): a span started in a coroutine is the child of the span current in its task, and
a task created inside a span inherits it (asyncio copies the context into new tasks), so spawned
tasks are children of the span that spawned them and concurrent siblings never see each other.
The root is span 0 at depth -1, so top-level async spans have parent 0 and depth 0, as in
micromegas. Begin and end events are written to the cpu stream of the thread running the
coroutine at that moment.

Static names (a function's name, a fixed string) use `SpanMetadata` descriptors; dynamic names
(`span_async_named`, `span_scope_named`) use the `Named` events, which carry the string itself.

Traces: the context variable holds (span id, depth, trace, hand-off parent). Span ids are 63-bit
ints counting up from a random start per process (see `_draw_id_start`), so processes do not collide.
A span begun at the root starts a trace: its id is a 64-bit prefix random per process followed by the
span's own id, and the context holds just that id (no allocation); a trace continued from elsewhere
is a tuple. Descendants share the parent's trace (one reference, no work per span), and a begin event
carries its parent's trace (0 for a trace's local root, whose trace the encoder derives). The fourth
slot is non-zero in a context that was handed over (`attach`, an explicit `parent=`, a remote context
from `tracing.propagation`): children begun in it record that span as their hand-off / remote parent.
Spans from a remote parent are local roots (parent 0, depth 0) of their process's tree. The trace
facts reach the blocks through `tracing.trace_facts`.

Thread spans belong to traces too: a thread span's begin event carries the context variable's value
(one `ContextVar.get`, no allocation; a named span's begin carries `(name, context)`), so a sync span
called from a coroutine, or run by an executor worker in a copy of the caller's context, knows the
async span it ran under. Thread span ids are not drawn here: a thread span's id is its begin event's
(`views.thread_spans.thread_span_ids`), so the hot path does not change.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType, TracebackType
from typing import Any, TypeVar

from spanlake.tracing import dispatch as _dispatch
from spanlake.tracing import streams
from spanlake.tracing.event_records import TYPE_BITS
from spanlake.tracing.registry import REGISTRY

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Type indices in the cpu stream (tracing.udts.THREAD_LAYOUT); event code = descriptor id << TYPE_BITS | index.
BEGIN_THREAD, END_THREAD, BEGIN_THREAD_NAMED, END_THREAD_NAMED = 0, 1, 2, 3
BEGIN_ASYNC, END_ASYNC, BEGIN_ASYNC_NAMED, END_ASYNC_NAMED = 4, 5, 6, 7

_now = time.perf_counter_ns
_SIGN = 1 << 63
# Span ids count up from a random start below 2**63 - 2**40 (os.urandom, whatever the program seeds
# `random` with): consecutive in a process, so blocks compress as before and the hot path pays one
# `next`; far apart across processes (two processes' ids meet only if their starts fall within the
# number of spans they make, ~2 * spans / 2**63). A forked child draws a new start.
_ID_STARTS = (1 << 63) - (1 << 40)
_span_ids = itertools.count(1)
_TRACE_HIGH = 1  # the high half of the trace ids this process starts (the low half: the root span's id)


def _draw_id_start() -> None:
    """A new random start for span ids and a new trace id prefix (at import, and in a forked child)."""
    global _span_ids, _TRACE_HIGH
    system = random.SystemRandom()
    _span_ids = itertools.count(system.randrange(1, _ID_STARTS))
    _TRACE_HIGH = system.getrandbits(64) or 1


_draw_id_start()
os.register_at_fork(after_in_child=_draw_id_start)

# A trace this process started is its root span's id (its trace id: the process prefix, then that id);
# one continued from elsewhere is (high, low[, tracestate]): the trace id's halves, the W3C tracestate.
Trace = int | tuple
# (span id, depth, trace or 0, hand-off parent span id or 0)
Context = tuple[int, int, Trace, int]
_ROOT: Context = (0, -1, 0, 0)
_current_span: contextvars.ContextVar[Context] = contextvars.ContextVar("spanlake_async_span", default=_ROOT)
_context_now = _current_span.get  # bound once: a thread span's begin reads it
_site_descriptors: dict[tuple, tuple[int, Any]] = {}
# The spans of open recordings (tracing.recording), by span id: a span whose parent is here joins its
# parent's recording instead of being written to its thread's stream.
_recording_of: dict[int, Any] = {}


def new_span_id() -> int:
    """A new span id (non-zero; see `_draw_id_start`)."""
    return next(_span_ids)


def current_span_id() -> int:
    """The id of the async span the current task is in (0 outside any)."""
    return _current_span.get()[0]


def span_fn(func: Any = None, /, *, name: str | None = None) -> Any:
    """Decorator: a thread span around each call of a function, an async span around each run of a
    coroutine function. The name is the function's `__qualname__` unless given:
    `@span_fn`, `@span_fn("name")` or `@span_fn(name="name")`."""
    if func is None or isinstance(func, str):
        given = func if isinstance(func, str) else name
        return lambda f: span_fn(f, name=given)
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(f"span_fn cannot instrument generator {func.__qualname__}: its body runs after the call")
    code = getattr(func, "__code__", None)
    desc = REGISTRY.span(
        name or func.__qualname__,
        getattr(func, "__module__", None) or "",
        code.co_filename if code else "",
        code.co_firstlineno if code else 0,
    )
    if inspect.iscoroutinefunction(func):
        return _async_span_fn(func, desc)
    return _sync_span_fn(func, desc)


def _sync_span_fn(func: F, desc: int) -> F:
    begin, end = desc << TYPE_BITS | BEGIN_THREAD, desc << TYPE_BITS | END_THREAD

    @functools.wraps(func)
    def thread_span(*args: Any, **kwargs: Any) -> Any:
        try:
            stream = _dispatch.local.stream
        except AttributeError:
            stream = _dispatch.thread_stream()
        events = stream.thread_events
        events += (begin, _now(), _context_now())
        try:
            return func(*args, **kwargs)
        finally:
            events = stream.thread_events  # afresh: a span ended in `func` may have filled the stream
            events += (end, _now(), None)
            if len(events) > stream.thread_capacity:
                stream.full()

    return thread_span  # type: ignore[return-value]


def _async_span_fn(func: F, desc: int) -> F:
    begin, end = desc << TYPE_BITS | BEGIN_ASYNC, desc << TYPE_BITS | END_ASYNC

    @functools.wraps(func)
    async def async_span(*args: Any, **kwargs: Any) -> Any:
        parent = _current_span.get()
        span_id, depth = next(_span_ids), parent[1] + 1
        parent_id, _, trace, link = parent
        if parent_id in _recording_of:  # `record_begin`, written out as in `_instrumented`
            record_begin(begin, _now(), span_id, depth, None, parent)
        else:
            try:
                stream = _dispatch.local.stream
            except AttributeError:
                stream = _dispatch.thread_stream()
            stream.async_events += (begin, _now(), span_id, parent_id, depth, None, trace, link)
        _current_span.set((span_id, depth, trace or span_id, 0))
        try:
            return await func(*args, **kwargs)
        finally:
            if _current_span.get()[0] == span_id:  # only in our own context (see `_instrumented`)
                _current_span.set(parent)
            record_end(end, _now(), span_id, parent_id, depth, None)

    return async_span  # type: ignore[return-value]


def record_begin(code: int, time_ns: int, span_id: int, depth: int, name: str | None, parent: Context) -> None:
    """Appends an async span's begin event to its parent's recording if it has one (the span joins it),
    else to the thread's cpu stream. From `parent` (a context) the event takes its id, its trace (0: the
    span starts its own, whose id the encoder derives) and its hand-off or remote parent's span id."""
    parent_id, _, trace, link = parent  # one unpacking: cheaper than passing the three
    recording = _recording_of.get(parent_id)
    if recording is None:
        try:
            stream = _dispatch.local.stream
        except AttributeError:
            stream = _dispatch.thread_stream()
        stream.async_events += (code, time_ns, span_id, parent_id, depth, name, trace, link)
    else:
        _recording_of[span_id] = recording
        recording.events += (code, time_ns, span_id, parent_id, depth, name, trace, link)


def record_end(code: int, time_ns: int, span_id: int, parent_id: int, depth: int, name: str | None) -> None:
    """Appends an async span's end event to its recording if it is in one, else to the thread's cpu stream."""
    recording = _recording_of.get(span_id)
    if recording is not None:
        recording.events += (code, time_ns, span_id, parent_id, depth, name, 0, 0)
        return
    try:
        stream = _dispatch.local.stream
    except AttributeError:
        stream = _dispatch.thread_stream()
    events = stream.async_events
    events += (code, time_ns, span_id, parent_id, depth, name, 0, 0)
    if len(events) > stream.async_capacity:
        stream.full()


def record_facts(span_id: int, facts: str) -> None:
    """Keeps a span's facts JSON (`span_facts`) with the thread's cpu stream: only spans that have some
    pay for it, and the events keep integer slots."""
    try:
        stream = _dispatch.local.stream
    except AttributeError:
        stream = _dispatch.thread_stream()
    stream.span_facts += (span_id, facts)


async def _instrumented(awaitable: Awaitable[T], begin: int, end: int, name: str | None) -> T:
    parent = _current_span.get()
    span_id, depth = next(_span_ids), parent[1] + 1
    parent_id, _, trace, link = parent
    # `record_begin` and the parent's restore below are written out here and in `_async_span_fn` rather
    # than called: a call is a twentieth of a span's cost. The begin goes to the thread's stream unless
    # the parent is in a recording.
    if parent_id in _recording_of:
        record_begin(begin, _now(), span_id, depth, name, parent)
    else:
        try:
            stream = _dispatch.local.stream
        except AttributeError:
            stream = _dispatch.thread_stream()
        stream.async_events += (begin, _now(), span_id, parent_id, depth, name, trace, link)
    _current_span.set((span_id, depth, trace or span_id, 0))
    try:
        return await awaitable
    finally:
        # Restore the parent only in our own context: a coroutine closed by the garbage collector runs
        # this in whatever context is current then, which is not ours to change.
        if _current_span.get()[0] == span_id:
            _current_span.set(parent)
        record_end(end, _now(), span_id, parent_id, depth, name)


def instrument(awaitable: Awaitable[T], name: str) -> Awaitable[T]:
    """An async span with a static name around `awaitable` (micromegas `.instrument(&DESC)`).
    For names that change per call, use `span_async_named`."""
    desc = _descriptor_here(sys._getframe(1), name)
    return _instrumented(awaitable, desc << TYPE_BITS | BEGIN_ASYNC, desc << TYPE_BITS | END_ASYNC, None)


def span_async_named(name: str, awaitable: Awaitable[T]) -> Awaitable[T]:
    """An async span whose name is given per call, e.g. `span_async_named(f"process_user_{uid}", work())`."""
    location = _descriptor_here(sys._getframe(1), None)
    if type(name) is not str:
        name = str(name)
    begin, end = location << TYPE_BITS | BEGIN_ASYNC_NAMED, location << TYPE_BITS | END_ASYNC_NAMED
    return _instrumented(awaitable, begin, end, name)


class _ThreadScope:
    __slots__ = ("_begin", "_end", "_name", "_stream")

    def __init__(self, begin: int, end: int, name: str | None) -> None:
        self._begin, self._end, self._name = begin, end, name

    def __enter__(self) -> None:
        try:
            stream = _dispatch.local.stream
        except AttributeError:
            stream = _dispatch.thread_stream()
        self._stream, events, name = stream, stream.thread_events, self._name
        events += (self._begin, _now(), _context_now() if name is None else (name, _context_now()))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        events = self._stream.thread_events  # afresh: a span ended in the body may have filled the stream
        events += (self._end, _now(), self._name)
        if len(events) > self._stream.thread_capacity:
            self._stream.full()


def span_scope(name: str) -> _ThreadScope:
    """`with span_scope("name"):` a thread span with a static name around a block of code."""
    desc = _descriptor_here(sys._getframe(1), name)
    return _ThreadScope(desc << TYPE_BITS | BEGIN_THREAD, desc << TYPE_BITS | END_THREAD, None)


def span_scope_named(name: str) -> _ThreadScope:
    """`with span_scope_named(f"load_{key}"):` a thread span whose name is given per call."""
    location = _descriptor_here(sys._getframe(1), None)
    if type(name) is not str:
        name = str(name)
    return _ThreadScope(location << TYPE_BITS | BEGIN_THREAD_NAMED, location << TYPE_BITS | END_THREAD_NAMED, name)


def _descriptor_here(frame: FrameType, name: str | None) -> int:
    """The span descriptor (`name` given) or span location (`name` None) of the calling line."""
    key = (name, id(frame.f_code), frame.f_lasti)
    found = _site_descriptors.get(key)
    if found is None:
        code = frame.f_code
        target = frame.f_globals.get("__name__", "")
        if name is None:
            desc = REGISTRY.location(target, code.co_filename, frame.f_lineno)
        else:
            desc = REGISTRY.span(name, target, code.co_filename, frame.f_lineno)
        # Keeping the code object alive keeps its id from being reused by another one.
        found = _site_descriptors[key] = (desc, code)
    return found[0]


class SpanContext(tuple):
    """Where a span stands, to continue it elsewhere (another thread, a queue consumer, another process).

    The tuple (span id, depth) of an async span ((0, -1): the root), plus its trace and hand-off parent
    (see the module). `trace_id` (32 lowercase hex), `span_id` (the 64-bit id; `span_id_int64` is how
    the views show it) and `span_hex` (16 hex) name it the W3C way. The root context is not `valid`."""

    def __new__(cls, context: Context | tuple[int, int]) -> SpanContext:
        """The public form of a context tuple (a SpanContext is returned as it is)."""
        if type(context) is cls:
            return context  # type: ignore[return-value]
        self = tuple.__new__(cls, context[:2])
        self._trace = context[2] if len(context) > 2 else 0
        self._link = context[3] if len(context) > 3 else 0
        return self

    @property
    def span_id(self) -> int:
        """The span to continue: the local span, or the remote parent of an extracted context."""
        return self[0] or self._link

    @property
    def span_id_int64(self) -> int:
        """`span_id`'s 64 bits read as signed, as `async_events` and `span_traces` show it."""
        span_id = self.span_id
        return span_id - (1 << 64) if span_id >= _SIGN else span_id

    @property
    def depth(self) -> int:
        """The span's depth in its process's tree (-1: the root, or a remote parent)."""
        return self[1]

    @property
    def span_hex(self) -> str:
        """`span_id`'s 64 bits as 16 lowercase hex characters (a W3C parent-id)."""
        return f"{self.span_id:016x}"

    @property
    def trace_id(self) -> str:
        """The trace id as 32 lowercase hex characters ("0" * 32 outside any trace)."""
        trace = self._trace
        if not trace:
            return "0" * 32
        return f"{_TRACE_HIGH:016x}{trace:016x}" if type(trace) is int else f"{trace[0]:016x}{trace[1]:016x}"

    @property
    def trace_state(self) -> str | None:
        """The W3C `tracestate` received with the trace, if any."""
        trace = self._trace
        return trace[2] if type(trace) is tuple and len(trace) > 2 else None

    @property
    def valid(self) -> bool:
        """Whether the context names a span of a trace (the root context does not)."""
        return bool(self._trace)

    def internal(self) -> Context:
        """The tuple the context variable holds."""
        return (self[0], self[1], self._trace, self._link)


def _internal(context: Context | tuple[int, int]) -> Context:
    """A context given by a caller (SpanContext, or a bare (span id, depth)) as the context variable holds it."""
    if type(context) is SpanContext:
        return context.internal()
    if len(context) < 4:  # a bare (span id, depth): a span of its own trace
        return (context[0], context[1], context[0], 0)
    return context


ROOT_CONTEXT = SpanContext(_ROOT)


def current_span_context() -> SpanContext:
    """The async span the caller is in, to hand to code running elsewhere (another thread, a queue
    consumer, a callback that does not inherit this context): there, `with attach(context):` or
    `async_span(..., parent=context)` continue it."""
    return SpanContext(_current_span.get())


def _handed_over(context: Context | tuple[int, int]) -> Context:
    """`context` as continued elsewhere: its children record its span as their hand-off parent."""
    context = _internal(context)
    return (context[0], context[1], context[2], context[3] or context[0])


def _child(parent: Context) -> tuple[int, int, Trace]:
    """A new span's (id, depth, trace) under `parent`; a root starts a trace."""
    span_id = new_span_id()
    return span_id, parent[1] + 1, parent[2] or span_id


class attach:
    """Makes `context` the current async span for the body (on this thread, in this context); spans
    begun in the body are children of its span, recorded as handed over (their `parent_span_hex`)."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context

    def __enter__(self) -> SpanContext:
        self._token = _current_span.set(_handed_over(self._context))
        return SpanContext(self._context)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _current_span.reset(self._token)


Attributes = dict[str, Any]


def span_facts(kind: str | None, attributes: Attributes | None, links: Iterable[Context] | None) -> str | None:
    """A span's kind, attributes and links as the JSON its end event carries (None when it has none)."""
    if kind is None and not attributes and not links:
        return None
    link_list = [
        {"trace_id": SpanContext(link).trace_id, "span_hex": SpanContext(link).span_hex} for link in links or ()
    ]
    return json.dumps(
        {"kind": kind or "internal", "attributes": attributes or {}, "links": link_list},
        default=str,
        separators=(",", ":"),
    )


class OpenAsyncSpan:
    """An async span begun by `begin_async_span` or `async_span`: ended once by `end()`, from any thread.

    It does not change the current span: `context` is what its children take as parent. `kind`,
    `attributes` (a dict, may be completed until `end`) and `links` are written with its end."""

    __slots__ = ("_end", "_name", "_parent", "attributes", "context", "kind", "links")

    def __init__(
        self,
        begin: int,
        end: int,
        name: str | None,
        parent: Context,
        kind: str | None = None,
        attributes: Attributes | None = None,
        links: Iterable[Context] | None = None,
    ) -> None:
        span_id, depth, trace = _child(parent)
        self.context = SpanContext((span_id, depth, trace, 0))
        self._end, self._name, self._parent = end, name, parent[0]
        self.kind, self.attributes, self.links = kind, attributes, list(links) if links else None
        record_begin(begin, _now(), span_id, depth, name, parent)

    def set_attribute(self, key: str, value: Any) -> None:
        """Sets one attribute (written with the span's end)."""
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value

    def end(self) -> None:
        """Records the span's end; later calls do nothing."""
        if self._end < 0:
            return
        end, self._end = self._end, -1
        facts = span_facts(self.kind, self.attributes, self.links)
        if facts is not None:
            record_facts(self.context[0], facts)
        record_end(end, _now(), self.context[0], self._parent, self.context[1], self._name)


def begin_async_span(
    name: str,
    parent: Context | None = None,
    *,
    dynamic: bool = False,
    kind: str | None = None,
    attributes: Attributes | None = None,
    links: Iterable[Context] | None = None,
) -> OpenAsyncSpan:
    """Begins an async span (child of `parent`, by default of the current span) to be ended with `.end()`,
    possibly on another thread: for work whose extent is not one block of code, such as a streamed
    response. `dynamic=True` for a name that changes per call (a `Named` span); `kind` ('server',
    'client', 'producer', 'consumer'; default 'internal'), `attributes` and `links` (contexts this span
    follows from, for fan-in) are trace facts."""
    return _open_span(sys._getframe(1), name, parent, dynamic, kind, attributes, links)


def _open_span(
    frame: FrameType,
    name: str,
    parent: Context | None,
    dynamic: bool,
    kind: str | None = None,
    attributes: Attributes | None = None,
    links: Iterable[Context] | None = None,
) -> OpenAsyncSpan:
    # An explicit parent is a hand-off: the span records it as its hand-off parent.
    parent = _current_span.get() if parent is None else _handed_over(parent)
    if dynamic:
        location = _descriptor_here(frame, None)
        begin, end, given = (
            location << TYPE_BITS | BEGIN_ASYNC_NAMED,
            location << TYPE_BITS | END_ASYNC_NAMED,
            str(name),
        )
    else:
        desc = _descriptor_here(frame, name)
        begin, end, given = desc << TYPE_BITS | BEGIN_ASYNC, desc << TYPE_BITS | END_ASYNC, None
    return OpenAsyncSpan(begin, end, given, parent, kind, attributes, links)


class async_span:
    """`with async_span("name"):` an async span around a block of synchronous code: a child of the
    current async span (or of `parent`, a hand-off), and the current span of its body, so spans begun in
    the body (and tasks created there) are its children. `dynamic=True` for per-call names; `kind`,
    `attributes` and `links` as in `begin_async_span` (the `attributes` dict is read at the end, so the
    body may complete it). The body gets the span's context."""

    __slots__ = ("_dynamic", "_facts", "_frame", "_name", "_parent", "_span", "_token")

    def __init__(
        self,
        name: str,
        parent: Context | None = None,
        *,
        dynamic: bool = False,
        kind: str | None = None,
        attributes: Attributes | None = None,
        links: Iterable[Context] | None = None,
    ) -> None:
        self._frame, self._name, self._parent, self._dynamic = sys._getframe(1), name, parent, dynamic
        self._facts = (kind, attributes, links)

    def __enter__(self) -> SpanContext:
        self._span = span = _open_span(self._frame, self._name, self._parent, self._dynamic, *self._facts)
        self._frame = None  # type: ignore[assignment]  # do not keep the caller's frame alive
        self._token = _current_span.set(span.context.internal())
        return span.context

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _current_span.reset(self._token)
        if exc is not None:
            self._span.set_attribute("error", type(exc).__name__)
        self._span.end()


class suppressed:
    """Discards the spans recorded on this thread during the body: for telemetry's own plumbing (a sink
    storing telemetry must not produce telemetry about that, or it would feed itself forever)."""

    __slots__ = ("_local", "_previous")

    def __enter__(self) -> None:
        # Keep the thread-local object itself: `tracing.shutdown()` (or `init`) may replace the module's
        # `local` during the body, and the body's end must restore the one it changed.
        self._local = _dispatch.local
        self._previous = getattr(self._local, "stream", None)
        self._local.stream = streams.NullThreadStream()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._previous is None:
            vars(self._local).pop("stream", None)
        else:
            self._local.stream = self._previous
        self._local = None


def record_async_span(name: str, parent: Context, begin_ns: int, end_ns: int) -> SpanContext:
    """Records an async span that has already run, named per call, with its times given on the spans'
    clock (`time.perf_counter_ns`): for work timed by someone else, such as a query engine's operators.
    Returns its context, the parent of its own children."""
    location = _descriptor_here(sys._getframe(1), None)
    parent = _internal(parent)
    span_id, depth, trace = _child(parent)
    if type(name) is not str:
        name = str(name)
    record_begin(location << TYPE_BITS | BEGIN_ASYNC_NAMED, begin_ns, span_id, depth, name, parent)
    record_end(location << TYPE_BITS | END_ASYNC_NAMED, end_ns, span_id, parent[0], depth, name)
    return SpanContext((span_id, depth, trace, 0))
