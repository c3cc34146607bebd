"""What recording and encoding agree on: how a stream keeps its events and what encoding them gives.

A cpu stream keeps two flat lists, a fixed number of slots per event: thread events (code, time,
name; a begin's third slot holds the async context it ran in instead, or (name, context) for a named
span) and async events (code, time, span_id, parent_span_id, depth, name, trace, link): a begin
carries its parent's trace (0 if it starts a trace) and its hand-off/remote parent's span id (else 0);
an end has 0 in both. The rare spans with facts (kind,
attributes, links) add (span_id, facts JSON) to a third list. An event's code is descriptor id <<
TYPE_BITS | wire type index. Encoding a block's events gives `EncodedBuffers`.
"""

from __future__ import annotations

from dataclasses import dataclass

THREAD_SLOTS = 3
ASYNC_SLOTS = 8
TYPE_BITS = 8


@dataclass
class EncodedBuffers:
    """The objects and dependencies buffers of one block, uncompressed."""

    objects: bytes
    dependencies: bytes
    nb_objects: int
    earliest_ticks: int  # the earliest event time (read from the time column the encoder converts anyway)
