"""Span recordings: an async span whose descendants are held back until it ends, then kept or dropped.

micromegas's rule for slow queries (keep the detail of slow work only) needs to know a span's fate
after it has run. `begin_recording(name)` begins a root async span; every span begun under it (a dict
lookup on the parent's id, so spans begun on other threads with an explicit parent context join too)
goes to the recording's buffer instead of its thread's stream. `finish(slow_ns, min_span_ns)` after
`end()` writes back, with their original times: everything at or above `min_span_ns` and its
ancestors when the root took at least `slow_ns`, else the root alone.
"""

from __future__ import annotations

import collections
import itertools
import sys
import time
from dataclasses import dataclass

from spanlake.tracing import dispatch as _dispatch
from spanlake.tracing import spans
from spanlake.tracing.spans import SpanContext
from spanlake.tracing.streams import ASYNC_SLOTS

# Positions in one buffered event (tracing.event_records: code, time, span_id, parent_span_id, depth, ...).
_TIME, _SPAN, _PARENT = 1, 2, 3


@dataclass(frozen=True)
class RecordingOutcome:
    """What `finish` did: the root's duration, whether it counted as slow, the ids of the spans kept and
    how many were dropped."""

    duration_ns: int
    slow: bool
    kept: frozenset[int]
    dropped_spans: int


class SpanRecording:
    """A root async span recording its descendants (see the module): `end()`, then `finish(...)` once."""

    __slots__ = ("_end_code", "_end_ns", "_name", "_parent", "context", "events")

    def __init__(self, begin: int, end: int, name: str | None, parent: SpanContext) -> None:
        span_id, depth, trace = spans._child(parent)
        self.context = SpanContext((span_id, depth, trace, 0))
        self.events: list = []
        self._end_code, self._end_ns, self._name, self._parent = end, 0, name, parent[0]
        spans._recording_of[span_id] = self
        self.events += (begin, spans._now(), span_id, parent[0], depth, name, parent[2], parent[3])

    def end(self) -> None:
        """Records the root's end (once; later calls do nothing)."""
        if self._end_ns:
            return
        self._end_ns = spans._now()
        self.events += self._end_event()

    @property
    def duration_ns(self) -> int:
        """How long the root ran (0 until it ends)."""
        return self._end_ns - self.events[_TIME] if self._end_ns else 0

    def finish(self, slow_ns: int, min_span_ns: int) -> RecordingOutcome:
        """Closes the recording and writes the spans kept by the rule to this thread's stream; spans that
        have not ended by now are dropped."""
        self.end()
        events, self.events = self.events, []
        span_ids = events[_SPAN::ASYNC_SLOTS]
        # C-level removal of every id: a fast query pays no Python loop per span.
        collections.deque(map(spans._recording_of.pop, span_ids, itertools.repeat(None)), maxlen=0)
        duration_ns = self._end_ns - events[_TIME]
        slow = duration_ns >= slow_ns
        # The root's begin is the first event.
        kept = _kept_events(events, min_span_ns) if slow else events[:ASYNC_SLOTS] + self._end_event()
        kept_ids = frozenset(kept[_SPAN::ASYNC_SLOTS])
        dropped = len(set(span_ids)) - len(kept_ids)
        if dropped:
            _note_drops(span_ids, kept_ids, events)
        _write(kept)
        return RecordingOutcome(duration_ns, slow, kept_ids, dropped)

    def _end_event(self) -> list:
        return [self._end_code, self._end_ns, self.context[0], self._parent, self.context[1], self._name, 0, 0]


def _kept_events(events: list, min_span_ns: int) -> list:
    """The events of the spans that ran at least `min_span_ns`, of their ancestors and of the root."""
    begins: dict[int, tuple[int, int]] = {}  # span id → (begin time, parent id)
    ended: dict[int, int] = {}  # span id → duration
    for offset in range(0, len(events), ASYNC_SLOTS):
        span_id = events[offset + _SPAN]
        if span_id in begins:
            ended[span_id] = events[offset + _TIME] - begins[span_id][0]
        else:
            begins[span_id] = (events[offset + _TIME], events[offset + _PARENT])
    root = events[_SPAN]
    kept = {root}
    for span_id, duration in ended.items():
        if duration < min_span_ns:
            continue
        while span_id not in kept and span_id in ended:
            kept.add(span_id)
            span_id = begins[span_id][1]
    return [
        value
        for offset in range(0, len(events), ASYNC_SLOTS)
        if events[offset + _SPAN] in kept
        for value in events[offset : offset + ASYNC_SLOTS]
    ]


_dropped_into: list[dict[int, int]] = [{}, {}]  # span id → nearest kept ancestor: this generation, the last
_generation_began = [time.monotonic()]


def _note_drops(span_ids: list, kept: frozenset[int], events: list) -> None:
    """Notes the nearest kept ancestor of each dropped span (none outside a session: nothing is encoded)."""
    session = _dispatch._session
    if session is None:
        return
    now = time.monotonic()
    if now - _generation_began[0] > 2 * session.flush_period:
        _dropped_into[1], _dropped_into[0], _generation_began[0] = _dropped_into[0], {}, now
    root = events[_SPAN]
    if len(kept) == 1:  # a fast recording: every span's kept ancestor is the root
        _dropped_into[0].update(dict.fromkeys(span_ids, root))
        return
    parents = dict(zip(events[_SPAN::ASYNC_SLOTS], events[_PARENT::ASYNC_SLOTS], strict=True))
    for span_id in parents.keys() - kept:  # a slow recording: a walk up per dropped span
        ancestor = parents[span_id]
        while ancestor not in kept and ancestor in parents:
            ancestor = parents[ancestor]
        _dropped_into[0][span_id] = ancestor if ancestor in kept else root


def kept_parent(span_id: int) -> int:
    """The async span a thread span that ran under `span_id` belongs under: its nearest kept ancestor if
    a recording dropped it, the recording's root while it is open, else `span_id` itself."""
    for dropped in _dropped_into:
        if span_id in dropped:
            return dropped[span_id]
    recording = spans._recording_of.get(span_id)
    return span_id if recording is None else recording.context[0]


def _write(events: list) -> None:
    """Appends buffered events to the calling thread's cpu stream."""
    try:
        stream = _dispatch.local.stream
    except AttributeError:
        stream = _dispatch.thread_stream()
    stream.async_events += events
    if len(stream.async_events) > stream.async_capacity:
        stream.full()


def begin_recording(name: str, parent: SpanContext | None = None, *, dynamic: bool = False) -> SpanRecording:
    """Begins a root async span named `name` whose descendants are recorded until `finish`; a child of
    `parent` (by default of the current span). `dynamic=True` for a name that changes per call."""
    frame = sys._getframe(1)
    parent = spans._current_span.get() if parent is None else spans._internal(parent)
    if dynamic:
        location = spans._descriptor_here(frame, None) << spans.TYPE_BITS
        return SpanRecording(location | spans.BEGIN_ASYNC_NAMED, location | spans.END_ASYNC_NAMED, str(name), parent)
    desc = spans._descriptor_here(frame, name) << spans.TYPE_BITS
    return SpanRecording(desc | spans.BEGIN_ASYNC, desc | spans.END_ASYNC, None, parent)
