"""The `thread_spans` view: the call tree of one thread stream, one row per span in pre-order.

In a trace (`trace_spans`), a thread span is named by a 64-bit id derived from its stream and its id
here (`thread_span_ids`): the top bit set (the SDK's async span ids never have it), then the stream
id's first 63 bits plus the event id, modulo 2**63. Ids of one stream never collide; two streams'
collide only if their bases fall within as many events of each other (~`2 * events / 2**63`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spanlake.views import call_tree_merge
from spanlake.views.call_tree_merge import ChainNote, PartitionNotes
from spanlake.views.columns import Coded, dictionary_array, pair_codes, timestamp_array
from spanlake.views.decoded import BlockRowsError, DecodedBlock, ObjectGroup
from spanlake.views.meta import BlockMeta, StreamMeta
from spanlake.views.schema_types import DICT_UTF8, TIMESTAMP, required
from spanlake.views.scope import Scope, span_desc_scope, span_location_scope
from spanlake.views.time import TickConverter
from spanlake.views.view import PartitionRows, TransitBlock, View

log = logging.getLogger(__name__)

_TOP_BIT = np.uint64(1 << 63)
_LOW_BITS = np.uint64((1 << 63) - 1)


def _stream_base(stream_id: str) -> np.uint64:
    return np.uint64(int.from_bytes(uuid.UUID(stream_id).bytes[:8], "big")) & _LOW_BITS


def thread_span_ids(stream_id: str, event_ids: np.ndarray) -> np.ndarray:
    """The trace span ids (uint64, top bit set) of a stream's thread spans from their ids here (event ids)."""
    return ((_stream_base(stream_id) + event_ids.astype(np.uint64)) & _LOW_BITS) | _TOP_BIT


def thread_event_ids(stream_id: str, span_ids: np.ndarray) -> np.ndarray:
    """The event ids (int64) of a stream's thread spans from their trace span ids (`thread_span_ids`' inverse)."""
    return ((span_ids.astype(np.uint64) - _stream_base(stream_id)) & _LOW_BITS).astype(np.int64)


VIEW_SET_NAME = "thread_spans"
FILE_SCHEMA_HASH = bytes([3])

SCHEMA = pa.schema(
    [
        required("id", pa.int64()),
        required("parent", pa.int64()),
        required("depth", pa.uint32()),
        required("hash", pa.uint32()),
        required("begin", TIMESTAMP),
        required("end", TIMESTAMP),
        required("duration", pa.int64()),
        required("name", DICT_UTF8),
        required("target", DICT_UTF8),
        required("filename", DICT_UTF8),
        required("line", pa.uint32()),
    ]
)

# ---------------------------------------------------------------------------------------------------
# Rows
#
# micromegas builds the tree with a stack machine over the thread's begin/end events
# (`analytics/src/call_tree.rs`), once per chain of contiguous blocks, over the chain's time range
# [range_begin, range_end]. Its rules, restated as properties of the finished tree:
#
# * events before range_begin are ignored; within a block, the first event after range_end stops the
#   block (the rest of that block is ignored);
# * a begin opens a span (id = its event id = block object_offset + object index); the end at the
#   same nesting level closes it (its scope must be the same, else the chain is in error);
# * a span never closed ends at range_end;
# * an end met with no open span (the span began before the range) becomes a span
#   [range_begin, end time] with the end's event id, enclosing everything before it at top level;
# * top-level spans hang under a synthetic thread root (id -1, parent 0, depth 0, the whole range),
#   created by the first end that leaves no span open. Without such an end there is no root: the
#   first span, never closed, is the tree's root (parent 0, depth 0);
# * rows are the pre-order walk of the tree, children in begin order.
#
# (One corner is not reproduced: micromegas would also turn into a wrapper an open span whose scope
# hashes like the synthetic root's — name "{thread-name}-{thread-id}", no file, no target, line 0 —
# when an end of another scope meets it; here that is a scope mismatch.)
#
# The tree is computed without replaying the stack: the nesting level is a running sum of +1/-1
# clamped at 0, a begin is matched to the next end at its level (a stable sort by level puts them next
# to each other), a span's parent is the latest earlier begin one level up, and every unmatched end
# adds one enclosing level to the spans before it.
#
# A batch notes in its schema metadata what its first and last chains leave open at their edges, so
# that consecutive partitions merge from their rows (`call_tree_merge`).


@dataclass(frozen=True)
class _ThreadEvents:
    """A chain's begin/end events in order: +1/-1, time, event id, scope code, block number."""

    step: np.ndarray
    time_ns: np.ndarray
    event_id: np.ndarray
    scopes: Coded[Scope]
    block: np.ndarray

    @staticmethod
    def concat(parts: Sequence[_ThreadEvents]) -> _ThreadEvents:
        def arrays(name: str) -> np.ndarray:
            return np.concatenate([getattr(part, name) for part in parts]) if parts else np.zeros(0, np.int64)

        scopes = Coded.concat([part.scopes for part in parts])
        return _ThreadEvents(arrays("step"), arrays("time_ns"), arrays("event_id"), scopes, arrays("block"))

    def take(self, rows: np.ndarray) -> _ThreadEvents:
        return _ThreadEvents(
            self.step[rows], self.time_ns[rows], self.event_id[rows], self.scopes.take(rows), self.block[rows]
        )


@dataclass(frozen=True)
class _Spans:
    id: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    scopes: Coded[Scope]

    @staticmethod
    def empty() -> _Spans:
        nothing = np.zeros(0, np.int64)
        return _Spans(nothing, nothing, nothing, nothing, nothing, Coded(nothing, []))


@dataclass(frozen=True)
class _Tree:
    """A chain's spans, and what it leaves at its edges (`ChainNote`)."""

    spans: _Spans
    wrappers: int = 0
    root: bool = False
    open_ids: tuple[int, ...] = ()


# type name → (begin?, named?)
THREAD_EVENT_TYPES = {
    "BeginThreadSpanEvent": (True, False),
    "EndThreadSpanEvent": (False, False),
    "BeginThreadNamedSpanEvent": (True, True),
    "EndThreadNamedSpanEvent": (False, True),
}


class CallTreeError(BlockRowsError):
    """The events of a thread do not nest (an end closes a span other than the innermost open one)."""


def thread_name(stream: StreamMeta) -> str:
    """`{thread-name}-{thread-id}` from the stream properties; the id defaults to the stream id."""
    thread_id = stream.properties.get("thread-id", stream.stream_id)
    name = stream.properties.get("thread-name")
    return f"{name}-{thread_id}" if name else thread_id


def group_contiguous_block_chains(blocks: Sequence[BlockMeta]) -> list[list[int]]:
    """Indices of `blocks` (in event-time order) cut where a block begins after every earlier end."""
    chains: list[list[int]] = []
    chain_end: int | None = None
    for index, block in enumerate(blocks):
        if chain_end is None or block.begin_ticks > chain_end:
            chains.append([])
            chain_end = block.end_ticks
        else:
            chain_end = max(chain_end, block.end_ticks)
        chains[-1].append(index)
    return chains


def build_batch(
    blocks: Sequence[tuple[BlockMeta, DecodedBlock]], stream: StreamMeta, convert: TickConverter
) -> pa.RecordBatch:
    """The thread_spans rows of a stream's blocks, given in event-time order (`convert`: latest timing)."""
    root_scope = Scope(thread_name(stream), "", "", 0)
    chains = group_contiguous_block_chains([meta for meta, _ in blocks])
    # Every chain's time range at once: a conversion costs tens of microseconds, whatever its length.
    edge_ticks = [(blocks[chain[0]][0].begin_ticks, blocks[chain[-1]][0].end_ticks) for chain in chains]
    edge_ns = convert.delta_ticks_to_ns(np.array(edge_ticks, dtype=np.int64).reshape(-1)).reshape(-1, 2).tolist()
    trees, notes = [], []
    for chain, (begin_ticks, end_ticks), (range_begin, range_end) in zip(chains, edge_ticks, edge_ns, strict=True):
        events, exact = _chain_events([blocks[index] for index in chain], convert, range_begin, range_end)
        tree = _call_tree(events, range_begin, range_end, root_scope, stream.stream_id)
        trees.append(tree)
        rows = len(tree.spans.id)
        edges = (rows, tree.wrappers, tree.root, tree.open_ids, exact)
        notes.append(ChainNote(begin_ticks, end_ticks, range_begin, range_end, *edges))
    batch = _batch([tree.spans for tree in trees], stream.stream_id)
    if not notes:
        return batch
    return batch.replace_schema_metadata(PartitionNotes(notes[0], notes[-1], len(notes)).encode())


def _chain_events(
    blocks: Sequence[tuple[BlockMeta, DecodedBlock]], convert: TickConverter, range_begin: int, range_end: int
) -> tuple[_ThreadEvents, bool]:
    """The chain's events in range, and whether they are exact (`ChainNote.exact`)."""
    # Each event type's objects of all the chain's blocks at once: their times and scopes converted once.
    parts: list[_ThreadEvents] = []
    for type_name, (is_begin, named) in THREAD_EVENT_TYPES.items():
        found = [
            (number, meta, group) for number, (meta, block) in enumerate(blocks) if (group := block.group(type_name))
        ]
        if not found:
            continue
        groups = [group for _, _, group in found]
        event_ids = np.concatenate([group.positions + meta.object_offset for _, meta, group in found])
        parts.append(
            _ThreadEvents(
                np.full(len(event_ids), 1 if is_begin else -1, dtype=np.int64),
                convert.ticks_to_ns(np.concatenate([group.numeric("time") for group in groups])),
                event_ids,
                _scopes(groups, named),
                np.repeat(
                    np.array([number for number, _, _ in found], dtype=np.int64), [len(group) for group in groups]
                ),
            )
        )
    events = _ThreadEvents.concat(parts)
    # Blocks in chain order, objects in block order (event ids increase within a block).
    events = events.take(np.lexsort((events.event_id, events.block)))
    in_range = _in_range(events, range_begin, range_end)
    ids = in_range.event_id
    exact = len(ids) == len(events.event_id) and (len(ids) == 0 or (ids[0] >= 0 and bool(np.all(np.diff(ids) > 0))))
    return in_range, exact


def _in_range(events: _ThreadEvents, range_begin: int, range_end: int) -> _ThreadEvents:
    """Drop events before the range, and from the first event after the range to the end of its block."""
    after = (events.time_ns > range_end).astype(np.int64)
    seen_after = np.cumsum(after)
    block_starts = np.flatnonzero(np.diff(events.block, prepend=-1))
    before_block = (seen_after - after)[block_starts]
    stopped = seen_after - np.repeat(before_block, np.diff(np.append(block_starts, len(after)))) > 0
    return events.take(np.flatnonzero((events.time_ns >= range_begin) & ~stopped))


def _call_tree(events: _ThreadEvents, range_begin: int, range_end: int, root_scope: Scope, stream_id: str) -> _Tree:
    if len(events.step) == 0:
        return _Tree(_Spans.empty())
    is_begin = events.step > 0
    running = np.cumsum(events.step)
    level_after = running - np.minimum.accumulate(np.minimum(running, 0))  # the nesting level, clamped at 0
    level_before = np.concatenate(([0], level_after[:-1]))
    level = np.where(is_begin, level_after, level_before)  # a begin opens its level, an end closes it

    opening, closing = _matching_ends(is_begin, level, level_before)
    _check_scopes(opening, closing, events, stream_id)
    span_end = np.full(len(events.step), range_end, dtype=np.int64)
    span_end[opening] = events.time_ns[closing]
    begins = np.flatnonzero(is_begin)
    parent_index = _parent_begin(begins, level)
    spans = _Spans(
        events.event_id[begins],
        np.where(parent_index >= 0, events.event_id[np.maximum(parent_index, 0)], 0),
        level[begins] - 1,
        events.time_ns[begins],
        span_end[begins],
        events.scopes.take(begins),
    )
    unclosed = np.ones(len(events.step), bool)
    unclosed[opening] = False
    open_ids = tuple(events.event_id[is_begin & unclosed].tolist())  # outermost first
    if not np.any(~is_begin & (level_before <= 1)):
        # no end ever left the stack empty: the first span, never closed, is the root
        return _Tree(spans, open_ids=open_ids)
    unmatched_ends = np.flatnonzero(~is_begin & (level_before == 0))
    time_range = (range_begin, range_end)
    rooted = _under_thread_root(spans, parent_index, begins, unmatched_ends, events, time_range, root_scope)
    return _Tree(rooted, len(unmatched_ends), True, open_ids)


def _matching_ends(is_begin: np.ndarray, level: np.ndarray, level_before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(begin, end) index pairs: at each level, events alternate begin, end, begin, end..."""
    candidates = np.flatnonzero(is_begin | (level_before > 0))  # unmatched ends (at level 0) left out
    by_level = candidates[np.argsort(level[candidates], kind="stable")]
    first, second = by_level[:-1], by_level[1:]
    pairs = np.flatnonzero(is_begin[first] & ~is_begin[second] & (level[first] == level[second]))
    return first[pairs], second[pairs]


def _under_thread_root(
    spans: _Spans,
    parent_index: np.ndarray,
    begins: np.ndarray,
    unmatched_ends: np.ndarray,
    events: _ThreadEvents,
    time_range: tuple[int, int],
    root_scope: Scope,
) -> _Spans:
    """Add the synthetic root and the spans of unmatched ends (each enclosing everything before it)."""
    next_wrapper = np.searchsorted(unmatched_ends, begins)
    wrappers_after = len(unmatched_ends) - next_wrapper
    top_level_parent = np.append(events.event_id[unmatched_ends], -1)[next_wrapper]
    wrappers = unmatched_ends[::-1]  # outermost first
    nb_wrappers = len(wrappers)
    range_begin, range_end = time_range
    return _Spans(
        np.concatenate(([-1], events.event_id[wrappers], spans.id)),
        np.concatenate(
            (
                [0],
                np.append(-1, events.event_id[wrappers])[:nb_wrappers],
                np.where(parent_index >= 0, spans.parent, top_level_parent),
            )
        ),
        np.concatenate(([0], np.arange(1, nb_wrappers + 1), spans.depth + 1 + wrappers_after)),
        np.concatenate(([range_begin], np.full(nb_wrappers, range_begin), spans.begin)),
        np.concatenate(([range_end], events.time_ns[wrappers], spans.end)),
        Coded.concat([Coded(np.zeros(1, np.int64), [root_scope]), events.scopes.take(wrappers), spans.scopes]),
    )


def _parent_begin(begins: np.ndarray, level: np.ndarray) -> np.ndarray:
    """For each begin, the index of the latest earlier begin one level up (-1 at level 1)."""
    stride = len(level) + 1
    keys = np.sort(level[begins] * stride + begins)  # begins ordered by (level, position)
    found = np.searchsorted(keys, (level[begins] - 1) * stride + begins) - 1
    return np.where((level[begins] > 1) & (found >= 0), keys[np.maximum(found, 0)] % stride, -1)


def _check_scopes(opening: np.ndarray, closing: np.ndarray, events: _ThreadEvents, stream_id: str) -> None:
    hashes = events.scopes.map(lambda scope: scope.hash).numbers(np.int64)
    wrong = np.flatnonzero(hashes[opening] != hashes[closing])
    if len(wrong):
        first = wrong[np.argmin(closing[wrong])]
        open_scope = events.scopes.values[events.scopes.codes[opening[first]]]
        closing_scope = events.scopes.values[events.scopes.codes[closing[first]]]
        raise CallTreeError(
            f"top scope mismatch in thread stream {stream_id}: event {events.event_id[closing[first]]} "
            f"closes {closing_scope.name!r} but {open_scope.name!r} is open"
        )


def _scopes(groups: Sequence[ObjectGroup], named: bool) -> Coded[Scope]:
    """The scopes of one event type's objects in several blocks, each distinct value resolved once a block."""
    type_name = groups[0].type_name
    if not named:
        what = f"{type_name}.thread_span_desc"
        descs = Coded.concat([Coded.of(group.values("thread_span_desc")) for group in groups])
        return descs.map(lambda desc: span_desc_scope(desc, what))
    location = Coded.concat([Coded.of(group.values("thread_span_location")) for group in groups])
    names = Coded.concat([Coded.of(group.values("name")) for group in groups])
    pair, location_of_pair, name_of_pair = pair_codes(location.codes, names.codes)
    scopes = [
        span_location_scope(location.values[location_code], names.values[name_code], type_name)
        for location_code, name_code in zip(location_of_pair.tolist(), name_of_pair.tolist(), strict=True)
    ]
    return Coded(pair, scopes)


def _batch(spans: Sequence[_Spans], stream_id: str) -> pa.RecordBatch:
    begin = np.concatenate([part.begin for part in spans]) if spans else np.zeros(0, np.int64)
    end = np.concatenate([part.end for part in spans]) if spans else np.zeros(0, np.int64)
    regressed = np.flatnonzero(np.diff(begin) < 0)
    if len(regressed):
        row = int(regressed[0]) + 1
        raise CallTreeError(f"thread_spans stream {stream_id}: begin regressed at row {row}")
    scopes = Coded.concat([part.scopes for part in spans])

    def integers(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in spans]) if spans else np.zeros(0, np.int64)

    columns = [
        pa.array(integers("id"), pa.int64()),
        pa.array(integers("parent"), pa.int64()),
        pa.array(integers("depth").astype(np.uint32), pa.uint32()),
        pa.array(scopes.map(lambda scope: scope.hash).numbers(np.uint32), pa.uint32()),
        timestamp_array(begin),
        timestamp_array(end),
        pa.array(end - begin, pa.int64()),
        dictionary_array(scopes.map(lambda scope: scope.name)),
        dictionary_array(scopes.map(lambda scope: scope.target)),
        dictionary_array(scopes.map(lambda scope: scope.filename)),
        pa.array(scopes.map(lambda scope: scope.line).numbers(np.uint32), pa.uint32()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def stream_batches(blocks: Iterable[TransitBlock]) -> Iterator[pa.RecordBatch]:
    """The thread_spans rows of one stream's decoded blocks, given in any order: call trees follow event
    time, so the blocks are ordered by their ticks, not by arrival. A stream whose blocks cannot become
    a call tree is logged and gives no rows."""
    blocks = _without_overlaps(sorted(blocks, key=lambda transit: (transit.block.begin_ticks, transit.block.end_ticks)))
    if not blocks:
        return
    first = blocks[0]
    try:
        yield build_batch([(transit.block, transit.decoded) for transit in blocks], first.stream, first.latest)
    except BlockRowsError as err:
        log.warning("thread spans of stream %s not built: %s", first.block.stream_id, err)


def merged_partitions(parts: Sequence[PartitionRows]) -> pa.Table | None:
    """Consecutive partitions' rows as one (`call_tree_merge`); joined chains that do not nest give no rows,
    as the stream's blocks built at once would."""
    try:
        return call_tree_merge.merge_partitions(parts)
    except BlockRowsError as err:
        log.warning("thread spans of merged partitions not built: %s", err)
        return SCHEMA.empty_table()


def _without_overlaps(blocks: Sequence[TransitBlock]) -> list[TransitBlock]:
    """The blocks (in tick order) but those overlapping an earlier one: a thread's blocks follow one
    another (each begins where the previous ended), so an overlapping block (a copy under another id, a
    forged range) is logged and left out rather than breaking the stream's call tree."""
    kept: list[TransitBlock] = []
    for transit in blocks:
        if kept and transit.block.begin_ticks < kept[-1].block.end_ticks:
            log.warning(
                "block %s of thread stream %s overlaps block %s: skipped",
                transit.block.block_id,
                transit.block.stream_id,
                kept[-1].block.block_id,
            )
            continue
        kept.append(transit)
    return kept


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="stream",
    has_global_instance=False,
    stream_tags=("cpu",),
    time_columns=("begin", "end"),
    rows_from_transit=stream_batches,
    merge_rows=merged_partitions,
)
