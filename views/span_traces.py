"""The `span_traces` view: one row per SDK async span with its trace facts (per process).

The SDK writes a block's trace facts in one `StaticString` dependency no object references
(`tracing.trace_facts`): per span begun, its trace id, its hand-off or remote parent and its begin
ticks; per span ended with some, its kind, attributes and links. A span's row takes its end time from
the `EndAsync*` event with its id among the same blocks (null when the span ends in a later partition
or never). `span_id` is the id `async_events` shows (the 64 bits as int64); `span_hex`, `trace_id`
and `parent_span_hex` are the W3C spellings. `parent_span_hex` is set when the parent is in another
process (continued from a `traceparent`) or was handed over (`attach`, an explicit `parent=`): the
parent within the process is `async_events.parent_span_id`.

`block_traces` gives the trace ids of one block with their first and last begin times, from its
dependencies alone (the trace index calls it at ingestion).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views.columns import timestamp_array
from spanlake.views.decoded import Value
from spanlake.views.schema_types import TIMESTAMP, optional, required
from spanlake.views.time import TickConverter
from spanlake.views.view import TransitBlock, View

log = logging.getLogger(__name__)

VIEW_SET_NAME = "span_traces"
FILE_SCHEMA_HASH = bytes([1])
DEFAULT_KIND = "internal"

LINK = pa.struct([pa.field("trace_id", pa.utf8(), nullable=False), pa.field("span_hex", pa.utf8(), nullable=False)])
SCHEMA = pa.schema(
    [
        required("stream_id", pa.utf8()),
        required("span_id", pa.int64()),
        required("trace_id", pa.utf8()),
        required("span_hex", pa.utf8()),
        optional("parent_span_hex", pa.utf8()),
        required("kind", pa.utf8()),
        required("attributes", pa.utf8()),
        required("links", pa.list_(LINK)),
        required("begin", TIMESTAMP),
        optional("end", TIMESTAMP),
    ]
)
_END_TYPES = ("EndAsyncSpanEvent", "EndAsyncNamedSpanEvent")

# ---------------------------------------------------------------------------------------------------
# Reading the trace facts dependency (written by the SDK's `tracing/trace_facts.py`: same constants)

FACTS_ID = (1 << 64) - 2
MAGIC = "spanlake.trace_facts/1"
RECORD = np.dtype([("span_id", "<i8"), ("trace_high", "<i8"), ("trace_low", "<i8"), ("link", "<i8"), ("time", "<i8")])


@dataclass(frozen=True)
class BlockFacts:
    """The trace facts of one block: a `RECORD` per span begun, and the facts of spans ended with some."""

    records: np.ndarray
    facts_span_ids: np.ndarray  # int64
    facts: list[dict]


NO_FACTS = BlockFacts(np.zeros(0, RECORD), np.zeros(0, np.int64), [])


class TraceFactsError(ValueError):
    """A trace facts dependency that cannot be read."""


def decode_facts(text: object) -> BlockFacts:
    """The facts of a block whose `FACTS_ID` dependency is `text` (NO_FACTS for a block without one)."""
    if text is None:
        return NO_FACTS
    if not isinstance(text, str) or not text.startswith(MAGIC + ";"):
        raise TraceFactsError(f"trace facts: not a {MAGIC} text")
    _, encoded, facts_json = text.split(";", 2)
    try:
        raw = base64.b64decode(encoded, validate=True)
        pairs = json.loads(facts_json)
    except (binascii.Error, json.JSONDecodeError) as error:
        raise TraceFactsError(f"trace facts: {error}") from error
    if len(raw) % RECORD.itemsize:
        raise TraceFactsError(f"trace facts: {len(raw)} bytes is not a whole number of records")
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise TraceFactsError("trace facts: the facts are not a list of [span_id, facts] pairs")
    span_ids = np.array([p[0] for p in pairs], np.int64)
    return BlockFacts(np.frombuffer(raw, RECORD), span_ids, [p[1] for p in pairs])


def block_facts(dependencies: Mapping[int, Value], where: str) -> BlockFacts:
    """The trace facts of a block (none if it has none, or unreadable ones: logged)."""
    try:
        return decode_facts(dependencies.get(FACTS_ID))
    except TraceFactsError as error:
        log.warning("%s: trace facts skipped: %s", where, error)
        return NO_FACTS


# ---------------------------------------------------------------------------------------------------
# Hex spellings

# Two ASCII hex digits per byte value, as the uint16 whose little-endian bytes they are.
_HEX_PAIRS = np.frombuffer("".join(f"{i:02x}" for i in range(256)).encode(), np.uint16)


def hex_strings(*halves: np.ndarray) -> pa.Array:
    """The 64-bit values of `halves` (int64 arrays of one length) as lowercase hex, concatenated per row:
    one half gives 16 characters, two give 32."""
    n = len(halves[0])
    digits = np.concatenate(
        [_HEX_PAIRS[np.ascontiguousarray(h, ">i8").view(np.uint8).reshape(n, 8)] for h in halves], axis=1
    )
    width = 16 * len(halves)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.utf8(), n, [None, pa.py_buffer(offsets), pa.py_buffer(digits.tobytes())])


# ---------------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True)
class _Spans:
    """What the blocks of a partition say about their spans, concatenated."""

    stream_ids: list[pa.Array]
    records: list[np.ndarray]  # RECORD, times converted to ns
    end_ids: list[np.ndarray]
    end_ns: list[np.ndarray]
    facts: dict[int, dict]


def _collect(blocks: Iterable[TransitBlock]) -> _Spans:
    spans = _Spans([], [], [], [], {})
    for transit in blocks:
        facts = block_facts(transit.decoded.dependencies, f"block {transit.block.block_id}")
        records = facts.records.copy()
        records["time"] = transit.latest.ticks_to_ns(records["time"])
        spans.records.append(records)
        spans.stream_ids.append(pa.repeat(pa.scalar(transit.block.stream_id, pa.utf8()), len(records)))
        spans.facts.update(zip(facts.facts_span_ids.tolist(), facts.facts, strict=True))
        for type_name in _END_TYPES:
            if group := transit.decoded.group(type_name):
                spans.end_ids.append(group.numeric("span_id").astype(np.uint64).view(np.int64))
                spans.end_ns.append(transit.latest.ticks_to_ns(group.numeric("time").astype(np.int64)))
    return spans


def _end_times(span_ids: np.ndarray, end_ids: np.ndarray, end_ns: np.ndarray) -> pa.Array:
    """Each span's end time (null without an end event among the blocks)."""
    order = np.argsort(end_ids, kind="stable")
    slots = np.minimum(np.searchsorted(end_ids[order], span_ids), max(len(end_ids) - 1, 0))
    found = end_ids[order][slots] == span_ids if len(end_ids) else np.zeros(len(span_ids), bool)
    times = end_ns[order][slots] if len(end_ids) else np.zeros(len(span_ids), np.int64)
    return pa.array(times, pa.int64(), mask=~found).view(TIMESTAMP)


def _fact_columns(span_ids: np.ndarray, facts: dict[int, dict]) -> tuple[pa.Array, pa.Array, pa.Array]:
    """kind, attributes (JSON text) and links per span; only the spans with facts cost a lookup."""
    n = len(span_ids)
    kinds = np.full(n, DEFAULT_KIND, dtype=object)
    attributes = np.full(n, "{}", dtype=object)
    links: list = [[]] * n
    if facts:
        rows = np.flatnonzero(np.isin(span_ids, np.fromiter(facts, np.int64, len(facts))))
        for row in rows.tolist():
            fact = facts[int(span_ids[row])]
            kinds[row] = str(fact.get("kind", DEFAULT_KIND))
            attributes[row] = json.dumps(fact.get("attributes", {}), separators=(",", ":"))
            links[row] = fact.get("links", [])
    return pa.array(kinds, pa.utf8()), pa.array(attributes, pa.utf8()), pa.array(links, pa.list_(LINK))


def rows(blocks: Iterable[TransitBlock]) -> Iterator[pa.RecordBatch]:
    """The span_traces rows of a partition's cpu blocks, one batch."""
    spans = _collect(blocks)
    if not spans.records or not sum(len(r) for r in spans.records):
        return
    records = np.concatenate(spans.records)
    span_ids = np.ascontiguousarray(records["span_id"])
    links = np.ascontiguousarray(records["link"])
    end_ids = np.concatenate(spans.end_ids) if spans.end_ids else np.zeros(0, np.int64)
    end_ns = np.concatenate(spans.end_ns) if spans.end_ns else np.zeros(0, np.int64)
    kinds, attributes, link_lists = _fact_columns(span_ids, spans.facts)
    columns = [
        pa.concat_arrays(spans.stream_ids),
        pa.array(span_ids, pa.int64()),
        hex_strings(records["trace_high"], records["trace_low"]),
        hex_strings(span_ids),
        pc.if_else(pa.array(links != 0), hex_strings(links), pa.scalar(None, pa.utf8())),
        kinds,
        attributes,
        link_lists,
        timestamp_array(records["time"]),
        _end_times(span_ids, end_ids, end_ns),
    ]
    yield pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


# ---------------------------------------------------------------------------------------------------
# The trace index's input

TRACES_OF_BLOCK = pa.schema(
    [
        required("trace_id", pa.utf8()),
        required("begin_min", TIMESTAMP),
        required("begin_max", TIMESTAMP),
        required("spans", pa.int64()),
    ]
)


def block_traces(dependencies: Mapping[int, Value], convert: TickConverter) -> pa.Table:
    """The traces of one cpu block: trace id, first and last span begin in it, span count (one row per
    trace). Needs only the block's dependencies (`lakehouse.transit.decode.read_block_dependencies`)."""
    records = block_facts(dependencies, "block").records
    if not len(records):
        return TRACES_OF_BLOCK.empty_table()
    keys = np.stack([records["trace_high"], records["trace_low"]], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    times = convert.ticks_to_ns(records["time"])
    begin_min = np.full(len(unique), np.iinfo(np.int64).max)
    begin_max = np.full(len(unique), np.iinfo(np.int64).min)
    np.minimum.at(begin_min, inverse, times)
    np.maximum.at(begin_max, inverse, times)
    columns = [
        hex_strings(np.ascontiguousarray(unique[:, 0]), np.ascontiguousarray(unique[:, 1])),
        timestamp_array(begin_min),
        timestamp_array(begin_max),
        pa.array(np.bincount(inverse, minlength=len(unique)), pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=TRACES_OF_BLOCK)


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="process",
    has_global_instance=False,
    stream_tags=("cpu",),
    time_columns=("begin", "begin"),
    rows_from_transit=rows,
)
