"""The `net_spans` view: the network bandwidth spans of a process's `net` stream (Unreal's network
tracing), one row per Connection / Object / Property / RPC span, as micromegas's `net_spans_view.rs`,
`net_span_tree.rs` and `net_block_processing.rs` build them.

Per stream, blocks in event-time order, one span tree per chain of contiguous blocks
(`thread_spans.group_contiguous_block_chains`), times by the process's latest timing. An open-span
stack is replayed over the events (span id = event id = block object offset + object index):

* `NetConnectionBeginEvent` pushes a connection (parent -1, depth 0, whatever is open);
  `NetObjectBeginEvent` / `NetRPCBeginEvent` push a child of the top (depth + 1);
* an end pops the top if it is of its kind and emits its row; an end with nothing open, or whose
  kind differs from the top's, is skipped (bits could not be attributed);
* `NetPropertyEvent` emits a leaf row (begin = end time) under the top;
* a row's bits start where its enclosing open span's already-closed children stopped
  (`begin_bits`, 0 with nothing open), `end_bits = begin_bits + bit_size`, and it adds its bits to
  that span; `connection_name` / `is_outgoing` come from the bottom of the stack (a connection's own
  when it is the bottom); spans still open at the end of a chain are dropped.

When no end is skipped (a well-formed stream), the replay is vectorized (`replay_nested`): the stack
size is a running sum of +1 / -1, the open span at the top of a stack of size L is the latest begin
that left L spans open, depths follow the parent pointers (reset at connections), and begin_bits are
running sums of the bits emitted into each enclosing span. A chain where some end would be skipped
is replayed event by event (`replay_stepwise`), since each skip changes what every later end meets.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spanlake.views.async_events import chain_depths
from spanlake.views.columns import Coded, constant_dictionary, dictionary_array, timestamp_array
from spanlake.views.decoded import BlockRowsError, DecodedBlock
from spanlake.views.schema_types import DICT_UTF8, TIMESTAMP, required
from spanlake.views.thread_spans import group_contiguous_block_chains
from spanlake.views.time import TickConverter
from spanlake.views.view import TransitBlock, View

log = logging.getLogger(__name__)

VIEW_SET_NAME = "net_spans"
FILE_SCHEMA_HASH = bytes([2])  # micromegas's SCHEMA_VERSION
ROOT_PARENT_SPAN_ID = -1

SCHEMA = pa.schema(
    [
        required("process_id", DICT_UTF8),
        required("stream_id", DICT_UTF8),
        required("span_id", pa.int64()),
        required("parent_span_id", pa.int64()),
        required("depth", pa.uint32()),
        required("kind", DICT_UTF8),
        required("name", DICT_UTF8),
        required("connection_name", DICT_UTF8),
        required("is_outgoing", pa.bool_()),
        required("begin_bits", pa.int64()),
        required("end_bits", pa.int64()),
        required("bit_size", pa.int64()),
        required("begin_time", TIMESTAMP),
        required("end_time", TIMESTAMP),
    ]
)

KINDS = ("connection", "object", "property", "rpc")
CONNECTION, OBJECT, PROPERTY, RPC = range(4)
BEGIN, END, LEAF = range(3)
# type name → (step, span kind, name member)
NET_EVENT_TYPES = {
    "NetConnectionBeginEvent": (BEGIN, CONNECTION, "connection_name"),
    "NetConnectionEndEvent": (END, CONNECTION, None),
    "NetObjectBeginEvent": (BEGIN, OBJECT, "object_name"),
    "NetObjectEndEvent": (END, OBJECT, None),
    "NetPropertyEvent": (LEAF, PROPERTY, "property_name"),
    "NetRPCBeginEvent": (BEGIN, RPC, "function_name"),
    "NetRPCEndEvent": (END, RPC, None),
}
_NO_NAME = 0  # code of "" in every events' name list


@dataclass(frozen=True)
class _NetEvents:
    """A chain's net events in order."""

    step: np.ndarray
    kind: np.ndarray
    event_id: np.ndarray
    time_ns: np.ndarray
    name: np.ndarray  # codes into `names`
    bit_size: np.ndarray
    is_outgoing: np.ndarray
    names: list[str]


def block_events(block: DecodedBlock, object_offset: int, convert: TickConverter) -> _NetEvents:
    """The net events of one decoded block, in object order."""
    names = [""]
    parts: list[tuple[np.ndarray, ...]] = []
    for type_name, (step, kind, name_member) in NET_EVENT_TYPES.items():
        group = block.group(type_name)
        if group is None:
            continue
        n = len(group)
        codes = np.full(n, _NO_NAME, np.int64)
        if name_member is not None:
            coded = Coded.of(group.values(name_member))
            if any(not isinstance(value, str) for value in coded.values):
                raise BlockRowsError(f"{type_name}.{name_member}: expected a string")
            codes = coded.codes + len(names)
            names.extend(coded.values)
        bits = group.numeric("bit_size").astype(np.int64) if step != BEGIN else np.zeros(n, np.int64)
        outgoing = group.numeric("is_outgoing") != 0 if kind == CONNECTION and step == BEGIN else np.zeros(n, bool)
        time = group.numeric("time").astype(np.int64)
        parts.append(
            (np.full(n, step), np.full(n, kind), group.positions.astype(np.int64), time, codes, bits, outgoing)
        )
    if not parts:
        empty = np.zeros(0, np.int64)
        return _NetEvents(empty, empty, empty, empty, empty, empty, np.zeros(0, bool), names)
    columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
    order = np.argsort(columns[2], kind="stable")
    step, kind, position, ticks, codes, bits, outgoing = (column[order] for column in columns)
    return _NetEvents(step, kind, position + object_offset, convert.ticks_to_ns(ticks), codes, bits, outgoing, names)


def _concat(parts: Sequence[_NetEvents]) -> _NetEvents:
    offsets = np.cumsum([0] + [len(part.names) for part in parts])
    return _NetEvents(
        *(np.concatenate([getattr(part, name) for part in parts]) for name in ("step", "kind", "event_id", "time_ns")),
        np.concatenate([part.name + offset for part, offset in zip(parts, offsets, strict=False)]),
        np.concatenate([part.bit_size for part in parts]),
        np.concatenate([part.is_outgoing for part in parts]),
        [name for part in parts for name in part.names],
    )


# A replayed row: (event that opened the span, event that closed it, begin_bits, event of its parent,
# depth, event of its connection); a property opens and closes at itself; -1: no parent / no connection.
Row = tuple[int, int, int, int, int, int]
_EVENT_COLUMNS = [0, 1, 3, 5]


def replay(events: _NetEvents) -> np.ndarray:
    """The spans of one chain in emission order, one `Row` per line of an (n, 6) int64 array."""
    nested = replay_nested(events)
    if nested is not None:
        return nested
    return np.array(replay_stepwise(events), np.int64).reshape(-1, 6)


def replay_nested(events: _NetEvents) -> np.ndarray | None:
    """`replay` of a chain where no end is skipped, vectorized; None when some end would be."""
    n = len(events.step)
    is_begin, is_end = events.step == BEGIN, events.step == END
    delta = is_begin.astype(np.int64) - is_end
    after = np.cumsum(delta)  # spans open after each event
    before = after - delta
    if n == 0 or after.min() < 0:
        return None if n else np.zeros((0, 6), np.int64)  # an end with nothing open is skipped
    latest = _LatestBegin(np.flatnonzero(is_begin), after)
    ends = np.flatnonzero(is_end)
    opened_by = latest.at(before[ends], ends)
    if np.any(events.kind[opened_by] != events.kind[ends]):
        return None  # an end meeting another kind is skipped
    top = latest.at(before, np.arange(n))  # the open span under each event (-1: none)
    is_connection = events.kind == CONNECTION
    depth = chain_depths(np.where(is_begin & ~is_connection, top, -1)).astype(np.int64)
    leaves = np.flatnonzero(events.step == LEAF)
    emitted = np.sort(np.concatenate([ends, leaves]))  # rows in emission order
    opened = np.arange(n)
    opened[ends] = opened_by
    opened = opened[emitted]
    container = np.where(is_end, latest.at(before - 1, np.arange(n)), top)[emitted]  # takes the bits
    leaf_depth = np.where(top >= 0, depth[np.maximum(top, 0)] + 1, 0)
    open_levels = before[opened] + is_begin[opened]  # spans open while the row's span is, itself included
    bottom = np.where(open_levels >= 1, latest.at(np.ones(len(emitted), np.int64), opened), -1)  # the stack's
    connection = np.where((bottom >= 0) & is_connection[np.maximum(bottom, 0)], bottom, -1)
    return np.stack(
        [
            opened,
            emitted,
            _bits_before(container, events.bit_size[emitted]),
            np.where(is_connection[opened], -1, top[opened]),
            np.where(is_begin[opened], depth[opened], leaf_depth[opened]),
            connection,
        ],
        axis=1,
    )


class _LatestBegin:
    """The latest begin at or before a position that left `level` spans open (-1: none, or level < 1)."""

    def __init__(self, begins: np.ndarray, after: np.ndarray) -> None:
        self.stride = len(after) + 1
        keys = after[begins] * self.stride + begins
        order = np.argsort(keys)
        self.keys, self.begins, self.after = keys[order], begins[order], after

    def at(self, level: np.ndarray, position: np.ndarray) -> np.ndarray:
        slot = np.searchsorted(self.keys, level * self.stride + position, side="right") - 1
        found = self.begins[np.maximum(slot, 0)] if len(self.begins) else np.zeros(len(level), np.int64)
        valid = (slot >= 0) & (level >= 1) & (self.after[found] == level)
        return np.where(valid, found, -1)


def _bits_before(container: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """Per row, the bits of the rows emitted earlier into the same enclosing span (0 without one)."""
    order = np.argsort(container, kind="stable")
    sorted_bits = bits[order]
    running = np.cumsum(sorted_bits) - sorted_bits
    group_start = np.r_[True, container[order][1:] != container[order][:-1]] if len(order) else np.zeros(0, bool)
    starts = np.maximum.accumulate(np.where(group_start, np.arange(len(order)), 0)) if len(order) else order
    before = np.empty_like(bits)
    before[order] = running - running[starts]
    return np.where(container >= 0, before, 0)


def replay_stepwise(events: _NetEvents) -> list[Row]:
    """`replay`, event by event (see the module docstring)."""
    rows: list[Row] = []
    # open spans: [event, kind, depth, parent event, connection event, bits of closed children]
    stack: list[list[int]] = []
    steps, kinds, bit_sizes = events.step.tolist(), events.kind.tolist(), events.bit_size.tolist()
    for index, (step, kind, bits) in enumerate(zip(steps, kinds, bit_sizes, strict=True)):
        if step == END:
            if not stack or stack[-1][1] != kind:
                continue  # nothing open of this kind: the bits cannot be attributed
            top = stack.pop()
            if stack:
                rows.append((top[0], index, stack[-1][5], top[3], top[2], stack[0][4]))
                stack[-1][5] += bits
            else:
                rows.append((top[0], index, 0, top[3], top[2], top[4]))
            continue
        if kind == CONNECTION:
            stack.append([index, kind, 0, -1, index, 0])
            continue
        parent, depth, connection = (stack[-1][0], stack[-1][2] + 1, stack[0][4]) if stack else (-1, 0, -1)
        if step == BEGIN:
            stack.append([index, kind, depth, parent, connection, 0])
            continue
        rows.append((index, index, stack[-1][5] if stack else 0, parent, depth, connection))
        if stack:
            stack[-1][5] += bits
    if stack:
        log.debug("net span tree finishing with %d unclosed span(s); dropped", len(stack))
    return rows


def stream_batch(blocks: Sequence[TransitBlock]) -> pa.RecordBatch:
    """The net_spans rows of one stream's blocks (in event-time order)."""
    metas = [transit.block for transit in blocks]
    chains = [
        _concat([block_events(blocks[i].decoded, metas[i].object_offset, blocks[i].latest) for i in chain])
        for chain in group_contiguous_block_chains(metas)
    ]
    events = _concat(chains)  # one replay per chain; rows point into the concatenation
    offsets = np.cumsum([0] + [len(chain.step) for chain in chains])
    rows = [replay(chain) for chain in chains]
    for chain_rows, offset in zip(rows, offsets, strict=False):
        events_of = chain_rows[:, _EVENT_COLUMNS]
        chain_rows[:, _EVENT_COLUMNS] = np.where(events_of >= 0, events_of + offset, events_of)  # -1 stays -1
    return _batch(events, np.concatenate(rows), blocks[0].process.process_id, metas[0].stream_id)


def _batch(events: _NetEvents, rows: np.ndarray, process_id: str, stream_id: str) -> pa.RecordBatch:
    opened, closed, begin_bits, parent, depth, connection = rows.T
    has_parent, has_connection = parent >= 0, connection >= 0
    bit_size = events.bit_size[closed]
    names = Coded(events.name[opened], events.names)
    connections = Coded(np.where(has_connection, events.name[np.maximum(connection, 0)], _NO_NAME), events.names)
    n = len(opened)
    columns = [
        constant_dictionary(process_id, n),
        constant_dictionary(stream_id, n),
        pa.array(events.event_id[opened], pa.int64()),
        pa.array(np.where(has_parent, events.event_id[np.maximum(parent, 0)], ROOT_PARENT_SPAN_ID), pa.int64()),
        pa.array(depth.astype(np.uint32), pa.uint32()),
        dictionary_array(Coded(events.kind[opened], KINDS)),
        dictionary_array(names),
        dictionary_array(connections),
        pa.array(has_connection & events.is_outgoing[np.maximum(connection, 0)], pa.bool_()),
        pa.array(begin_bits, pa.int64()),
        pa.array(begin_bits + bit_size, pa.int64()),
        pa.array(bit_size, pa.int64()),
        timestamp_array(events.time_ns[opened]),
        timestamp_array(events.time_ns[closed]),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def process_batches(blocks: Iterable[TransitBlock]) -> Iterator[pa.RecordBatch]:
    """The net_spans rows of a process's `net` blocks, stream by stream; a stream whose blocks cannot be
    read is logged and gives no rows."""
    by_stream: dict[str, list[TransitBlock]] = {}
    for transit in blocks:
        by_stream.setdefault(transit.block.stream_id, []).append(transit)
    for stream_id, stream_blocks in by_stream.items():
        stream_blocks.sort(key=lambda transit: (transit.block.begin_ticks, transit.block.end_ticks))
        try:
            yield stream_batch(stream_blocks)
        except BlockRowsError as err:
            log.warning("net spans of stream %s not built: %s", stream_id, err)


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="process",
    has_global_instance=False,
    stream_tags=("net",),
    time_columns=("begin_time", "end_time"),
    rows_from_transit=process_batches,
)
