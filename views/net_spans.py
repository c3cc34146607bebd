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

The replay is a loop over integer arrays, one step per event: each step's effect depends on the stack
the previous steps left (the skip rules), so it does not reduce to prefix sums as thread_spans does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

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


@dataclass
class _Rows:
    """Emitted spans, column by column (name and connection name as codes into the chain's names)."""

    span_id: list[int]
    parent: list[int]
    depth: list[int]
    kind: list[int]
    name: list[int]
    connection: list[int]
    outgoing: list[bool]
    begin_bits: list[int]
    bit_size: list[int]
    begin_time: list[int]
    end_time: list[int]

    def add(self, span: list[int], begin_bits: int, bit_size: int, end_time: int, bottom: list[int] | None) -> None:
        """Emits `span` (an open-span record); its connection is `bottom`'s (the stack's bottom once it left),
        or its own when None."""
        self.span_id.append(span[0])
        self.parent.append(span[1])
        self.depth.append(span[2])
        self.kind.append(span[3])
        self.name.append(span[4])
        self.connection.append(span[5] if bottom is None else bottom[5])
        self.outgoing.append(bool(span[6] if bottom is None else bottom[6]))
        self.begin_bits.append(begin_bits)
        self.bit_size.append(bit_size)
        self.begin_time.append(span[7])
        self.end_time.append(end_time)


def replay(events: _NetEvents) -> _Rows:
    """The spans of one chain (see the module docstring); an open-span record is
    [span id, parent, depth, kind, name, connection name, is outgoing, begin time, bits of closed children]."""
    rows = _Rows([], [], [], [], [], [], [], [], [], [], [])
    stack: list[list[int]] = []
    columns = (events.step, events.kind, events.event_id, events.time_ns, events.name, events.bit_size)
    outgoing = events.is_outgoing.tolist()
    for index, (step, kind, event_id, time_ns, name, bits) in enumerate(
        zip(*(c.tolist() for c in columns), strict=True)
    ):
        top = stack[-1] if stack else None
        if step == END:
            if top is None or top[3] != kind:
                continue  # nothing open of this kind: the bits cannot be attributed
            stack.pop()
            parent = stack[-1] if stack else None
            rows.add(top, parent[8] if parent else 0, bits, time_ns, stack[0] if stack else None)
            if parent is not None:
                parent[8] += bits
            continue
        bottom = stack[0] if stack else None
        connection = (bottom[5], bottom[6]) if bottom else (_NO_NAME, 0)
        if kind == CONNECTION:
            stack.append([event_id, ROOT_PARENT_SPAN_ID, 0, kind, name, name, outgoing[index], time_ns, 0])
            continue
        span = [event_id, top[0] if top else ROOT_PARENT_SPAN_ID, top[2] + 1 if top else 0, kind, name, *connection]
        span += [time_ns, 0]
        if step == BEGIN:
            stack.append(span)
            continue
        rows.add(span, top[8] if top else 0, bits, time_ns, None)  # the span carries its connection
        if top is not None:
            top[8] += bits
    if stack:
        log.debug("net span tree finishing with %d unclosed span(s); dropped", len(stack))
    return rows


def stream_batch(blocks: Sequence[TransitBlock]) -> pa.RecordBatch:
    """The net_spans rows of one stream's blocks (in event-time order)."""
    metas = [transit.block for transit in blocks]
    parts = []
    for chain in group_contiguous_block_chains(metas):
        events = _concat([block_events(blocks[i].decoded, metas[i].object_offset, blocks[i].latest) for i in chain])
        parts.append((replay(events), events.names))
    return _batch(parts, blocks[0].process.process_id, metas[0].stream_id)


def _batch(parts: list[tuple[_Rows, list[str]]], process_id: str, stream_id: str) -> pa.RecordBatch:
    def integers(name: str) -> np.ndarray:
        return np.array([value for rows, _ in parts for value in getattr(rows, name)], np.int64)

    offsets = np.cumsum([0] + [len(names) for _, names in parts])
    names = [name for _, chain_names in parts for name in chain_names]

    def coded(column: str) -> Coded[str]:
        codes = [
            np.array(getattr(rows, column), np.int64) + offset
            for (rows, _), offset in zip(parts, offsets, strict=False)
        ]
        return Coded(np.concatenate(codes) if codes else np.zeros(0, np.int64), names)

    begin_bits, bit_size = integers("begin_bits"), integers("bit_size")
    n = len(begin_bits)
    columns = [
        constant_dictionary(process_id, n),
        constant_dictionary(stream_id, n),
        pa.array(integers("span_id"), pa.int64()),
        pa.array(integers("parent"), pa.int64()),
        pa.array(integers("depth").astype(np.uint32), pa.uint32()),
        dictionary_array(Coded(integers("kind"), KINDS)),
        dictionary_array(coded("name")),
        dictionary_array(coded("connection")),
        pa.array(integers("outgoing").astype(bool), pa.bool_()),
        pa.array(begin_bits, pa.int64()),
        pa.array(begin_bits + bit_size, pa.int64()),
        pa.array(bit_size, pa.int64()),
        timestamp_array(integers("begin_time")),
        timestamp_array(integers("end_time")),
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
