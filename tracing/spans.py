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
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
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
_span_ids = itertools.count(1)
_ROOT = (0, -1)
_current_span: contextvars.ContextVar[tuple[int, int]] = contextvars.ContextVar("spanlake_async_span", default=_ROOT)
_site_descriptors: dict[tuple, tuple[int, Any]] = {}
# The spans of open recordings (tracing.recording), by span id: a span whose parent is here joins its
# parent's recording instead of being written to its thread's stream.
_recording_of: dict[int, Any] = {}


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
        events += (begin, _now(), None)
        try:
            return func(*args, **kwargs)
        finally:
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
        record_begin(begin, _now(), span_id, parent[0], depth, None)
        _current_span.set((span_id, depth))
        try:
            return await func(*args, **kwargs)
        finally:
            _end_async_span(end, span_id, parent, depth, None)

    return async_span  # type: ignore[return-value]


def _end_async_span(end: int, span_id: int, parent: tuple[int, int], depth: int, name: str | None) -> None:
    # Restore the parent only in our own context: a coroutine closed by the garbage collector runs
    # this in whatever context is current then, which is not ours to change.
    if _current_span.get()[0] == span_id:
        _current_span.set(parent)
    record_end(end, _now(), span_id, parent[0], depth, name)


def record_begin(code: int, time_ns: int, span_id: int, parent_id: int, depth: int, name: str | None) -> None:
    """Appends an async span's begin event to its parent's recording if it has one (the span joins it),
    else to the thread's cpu stream."""
    recording = _recording_of.get(parent_id)
    if recording is None:
        try:
            stream = _dispatch.local.stream
        except AttributeError:
            stream = _dispatch.thread_stream()
        stream.async_events += (code, time_ns, span_id, parent_id, depth, name)
    else:
        _recording_of[span_id] = recording
        recording.events += (code, time_ns, span_id, parent_id, depth, name)


def record_end(code: int, time_ns: int, span_id: int, parent_id: int, depth: int, name: str | None) -> None:
    """Appends an async span's end event to its recording if it is in one, else to the thread's cpu stream."""
    recording = _recording_of.get(span_id)
    if recording is not None:
        recording.events += (code, time_ns, span_id, parent_id, depth, name)
        return
    try:
        stream = _dispatch.local.stream
    except AttributeError:
        stream = _dispatch.thread_stream()
    events = stream.async_events
    events += (code, time_ns, span_id, parent_id, depth, name)
    if len(events) > stream.async_capacity:
        stream.full()


async def _instrumented(awaitable: Awaitable[T], begin: int, end: int, name: str | None) -> T:
    parent = _current_span.get()
    span_id, depth = next(_span_ids), parent[1] + 1
    record_begin(begin, _now(), span_id, parent[0], depth, name)
    _current_span.set((span_id, depth))
    try:
        return await awaitable
    finally:
        _end_async_span(end, span_id, parent, depth, name)


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
    __slots__ = ("_begin", "_end", "_events", "_name", "_stream")

    def __init__(self, begin: int, end: int, name: str | None) -> None:
        self._begin, self._end, self._name = begin, end, name

    def __enter__(self) -> None:
        try:
            stream = _dispatch.local.stream
        except AttributeError:
            stream = _dispatch.thread_stream()
        self._stream, self._events = stream, stream.thread_events
        self._events += (self._begin, _now(), self._name)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        events = self._events
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


SpanContext = tuple[int, int]  # (span id, depth) of an async span; (0, -1) is the root


def current_span_context() -> SpanContext:
    """The async span the caller is in, to hand to code running elsewhere (another thread, a callback
    that does not inherit this context): there, `with attach(context):` or `async_span(..., parent=context)`."""
    return _current_span.get()


class attach:
    """Makes `context` the current async span for the body (on this thread, in this context)."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: SpanContext) -> None:
        self._context = context

    def __enter__(self) -> SpanContext:
        self._token = _current_span.set(self._context)
        return self._context

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _current_span.reset(self._token)


class OpenAsyncSpan:
    """An async span begun by `begin_async_span` or `async_span`: ended once by `end()`, from any thread.

    It does not change the current span: `context` is what its children take as parent."""

    __slots__ = ("_end", "_name", "_parent", "context")

    def __init__(self, begin: int, end: int, name: str | None, parent: SpanContext) -> None:
        span_id, depth = next(_span_ids), parent[1] + 1
        self.context: SpanContext = (span_id, depth)
        self._end, self._name, self._parent = end, name, parent[0]
        record_begin(begin, _now(), span_id, parent[0], depth, name)

    def end(self) -> None:
        """Records the span's end; later calls do nothing."""
        if self._end < 0:
            return
        end, self._end = self._end, -1
        record_end(end, _now(), self.context[0], self._parent, self.context[1], self._name)


def begin_async_span(name: str, parent: SpanContext | None = None, *, dynamic: bool = False) -> OpenAsyncSpan:
    """Begins an async span (child of `parent`, by default of the current span) to be ended with `.end()`,
    possibly on another thread: for work whose extent is not one block of code, such as a streamed
    response. `dynamic=True` for a name that changes per call (a `Named` span)."""
    return _open_span(sys._getframe(1), name, parent, dynamic)


def _open_span(frame: FrameType, name: str, parent: SpanContext | None, dynamic: bool) -> OpenAsyncSpan:
    if parent is None:
        parent = _current_span.get()
    if dynamic:
        location = _descriptor_here(frame, None)
        return OpenAsyncSpan(
            location << TYPE_BITS | BEGIN_ASYNC_NAMED, location << TYPE_BITS | END_ASYNC_NAMED, str(name), parent
        )
    desc = _descriptor_here(frame, name)
    return OpenAsyncSpan(desc << TYPE_BITS | BEGIN_ASYNC, desc << TYPE_BITS | END_ASYNC, None, parent)


class async_span:
    """`with async_span("name"):` an async span around a block of synchronous code: a child of the
    current async span (or of `parent`), and the current span of its body, so spans begun in the body
    (and tasks created there) are its children. `dynamic=True` for per-call names."""

    __slots__ = ("_dynamic", "_frame", "_name", "_parent", "_span", "_token")

    def __init__(self, name: str, parent: SpanContext | None = None, *, dynamic: bool = False) -> None:
        self._frame, self._name, self._parent, self._dynamic = sys._getframe(1), name, parent, dynamic

    def __enter__(self) -> SpanContext:
        self._span = span = _open_span(self._frame, self._name, self._parent, self._dynamic)
        self._frame = None  # type: ignore[assignment]  # do not keep the caller's frame alive
        self._token = _current_span.set(span.context)
        return span.context

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _current_span.reset(self._token)
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


def record_async_span(name: str, parent: SpanContext, begin_ns: int, end_ns: int) -> SpanContext:
    """Records an async span that has already run, named per call, with its times given on the spans'
    clock (`time.perf_counter_ns`): for work timed by someone else, such as a query engine's operators.
    Returns its context, the parent of its own children."""
    location = _descriptor_here(sys._getframe(1), None)
    span_id, depth = next(_span_ids), parent[1] + 1
    if type(name) is not str:
        name = str(name)
    record_begin(location << TYPE_BITS | BEGIN_ASYNC_NAMED, begin_ns, span_id, parent[0], depth, name)
    record_end(location << TYPE_BITS | END_ASYNC_NAMED, end_ns, span_id, parent[0], depth, name)
    return (span_id, depth)
