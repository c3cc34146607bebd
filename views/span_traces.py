"""The `span_traces` view: one row per SDK span of a trace with its trace facts (per process).

The SDK writes a block's trace facts in one `StaticString` dependency no object references
(`tracing.trace_facts`): its traces, per span begun its trace and hand-off or remote parent, per span
ended with some its kind, attributes and links. A span's row takes its begin time from its
`BeginAsync*` event (same block) and its end time from the `EndAsync*` event with its id among the
same blocks (null when the span ends in a later partition or never). `span_id` is the id
`async_events` shows (the 64 bits as int64); `span_hex`, `trace_id` and `parent_span_hex` are the W3C
spellings. `parent_span_hex` is set when the parent is in another
process (continued from a `traceparent`) or was handed over (`attach`, an explicit `parent=`): the
parent within the process is `async_events.parent_span_id`.

Thread spans that ran under an async span of a trace (a sync function called from a coroutine, or run
by an executor worker) have rows too: the SDK lists each run of thread span begins under one async span
(`THREAD_RECORD`), and every thread span begun in the run is a row with `span_id` the derived id of
`views.thread_spans.thread_span_ids` (negative as int64: async span ids never are), `parent_span_hex`
the async span it ran under (its parent if it is outermost; a nested one's parent is its thread
parent, which `trace_spans` reads from `thread_spans`), kind `internal`, no attributes or links, and a
null `end` (its end is `thread_spans`' business).

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
from spanlake.views.thread_spans import thread_span_ids
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

# ---------------------------------------------------------------------------------------------------
# Reading the trace facts dependency (written by the SDK's `tracing/trace_facts.py`: same constants)

FACTS_ID = (1 << 64) - 2
MAGIC = "spanlake.trace_facts/3"
MAGIC_V2 = "spanlake.trace_facts/2"  # whole records in base64: the lake may hold blocks written so
MAGIC_PREFIX = "spanlake.trace_facts/"  # what every version's text begins with
ROOT_RECORD = np.dtype([("span_id", "<i8"), ("time", "<i8")])
SPAN_RECORD = np.dtype([("span_id", "<i8"), ("trace_high", "<i8"), ("trace_low", "<i8"), ("time", "<i8")])
LINK_RECORD = np.dtype([("span_id", "<i8"), ("link", "<i8")])
THREAD_RECORD = np.dtype(
    [
        ("first", "<i8"),
        ("count", "<i8"),
        ("parent", "<i8"),
        ("trace_high", "<i8"),
        ("trace_low", "<i8"),
        ("first_time", "<i8"),
        ("last_time", "<i8"),
    ]
)


@dataclass(frozen=True)
class BlockFacts:
    """The trace facts of one block (see the SDK's `tracing/trace_facts.py`): every span begun in it as a
    `SPAN_RECORD` (the roots' traces filled in from the process's prefix), the hand-off parents, the
    facts of the spans that have some, and the runs of thread spans begun under an async span."""

    spans: np.ndarray  # SPAN_RECORD
    links: np.ndarray  # LINK_RECORD
    facts_span_ids: np.ndarray  # int64
    facts: list[dict]
    threads: np.ndarray  # THREAD_RECORD


NO_FACTS = BlockFacts(
    np.zeros(0, SPAN_RECORD), np.zeros(0, LINK_RECORD), np.zeros(0, np.int64), [], np.zeros(0, THREAD_RECORD)
)


class TraceFactsError(ValueError):
    """A trace facts dependency that cannot be read."""


def _records(encoded: str, dtype: np.dtype, what: str) -> np.ndarray:
    """The records of a `MAGIC_V2` part: base64 of the records as they are."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise TraceFactsError(f"trace facts: {what}: {error}") from error
    if len(raw) % dtype.itemsize:
        raise TraceFactsError(f"trace facts: {what}: {len(raw)} bytes is not a whole number of records")
    return np.frombuffer(raw, dtype)


_WIDTHS = (0, 1, 2, 4, 8)
_INT64 = range(-(1 << 63), 1 << 63)


def _delta_records(encoded: str, dtype: np.dtype, what: str) -> np.ndarray:
    """The records of a `MAGIC` part: column by column, each its first value, base and deltas less the
    base (the SDK's `trace_facts.encode_records`); an empty part has none."""
    if not encoded:
        return np.zeros(0, dtype)
    header, _, body = encoded.partition(":")
    try:
        count, *columns = (int(number) for number in header.split(","))
        raw = base64.b64decode(body, validate=True)
    except ValueError as error:  # binascii.Error is one
        raise TraceFactsError(f"trace facts: {what}: {error}") from error
    firsts, bases, widths = columns[0::3], columns[1::3], columns[2::3]
    fields = len(dtype.names)
    if count < 1 or len(columns) != 3 * fields or not all(w in _WIDTHS for w in widths):
        raise TraceFactsError(f"trace facts: {what}: not {fields} delta-coded columns")
    if not all(n in _INT64 for n in firsts + bases) or len(raw) != (count - 1) * sum(widths):
        raise TraceFactsError(f"trace facts: {what}: {len(raw)} bytes do not match the columns")
    columns_array = np.empty((count, fields), np.uint64)
    columns_array[0] = np.array(firsts, np.int64).view(np.uint64)
    at = 0
    for column, (base, width) in enumerate(zip(bases, widths, strict=True)):  # per column, not per record
        offsets = np.frombuffer(raw, f"<u{width}", count - 1, at) if width else 0
        columns_array[1:, column] = np.uint64(base & ((1 << 64) - 1)) + np.asarray(offsets, np.uint64)
        at += (count - 1) * width
    return np.cumsum(columns_array, axis=0, dtype=np.uint64).view(dtype).reshape(count)


_PART_READERS = {MAGIC: _delta_records, MAGIC_V2: _records}


def decode_facts(text: object) -> BlockFacts:
    """The facts of a block whose `FACTS_ID` dependency is `text` (NO_FACTS for a block without one)."""
    if text is None:
        return NO_FACTS
    if not isinstance(text, str) or text.count(";") < 5:
        raise TraceFactsError(f"trace facts: not a {MAGIC_V2} text nor a {MAGIC} text")
    magic, high, roots, others, links, rest = text.split(";", 5)
    read_part = _PART_READERS.get(magic)
    if read_part is None:
        raise TraceFactsError(f"trace facts: not a {MAGIC_V2} text nor a {MAGIC} text")
    # The threads part is left out when empty; a part never begins with the facts JSON's '['.
    threads, facts_json = ("", rest) if rest.startswith("[") or ";" not in rest else rest.split(";", 1)
    try:
        trace_high = int(high)
        pairs = json.loads(facts_json)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise TraceFactsError(f"trace facts: {error}") from error
    if not -(1 << 63) <= trace_high < (1 << 63):
        raise TraceFactsError("trace facts: the trace id prefix is not an int64")
    if not isinstance(pairs, list) or not all(_is_facts_pair(p) for p in pairs):
        raise TraceFactsError("trace facts: the facts are not a list of [span_id, {facts}] pairs")
    root_records = read_part(roots, ROOT_RECORD, "roots")
    spans = np.zeros(len(root_records), SPAN_RECORD)
    spans["span_id"] = spans["trace_low"] = root_records["span_id"]
    spans["trace_high"], spans["time"] = trace_high, root_records["time"]
    return BlockFacts(
        np.concatenate([spans, read_part(others, SPAN_RECORD, "spans")]),
        read_part(links, LINK_RECORD, "links"),
        np.array([p[0] for p in pairs], np.int64),
        [p[1] for p in pairs],
        read_part(threads, THREAD_RECORD, "threads"),
    )


def _is_facts_pair(pair: object) -> bool:
    """[int64 span id, facts object]: the shape of one facts entry."""
    return (
        isinstance(pair, list)
        and len(pair) == 2
        and type(pair[0]) is int
        and -(1 << 63) <= pair[0] < (1 << 63)
        and isinstance(pair[1], dict)
    )


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


_SPAN_ROW = np.dtype(
    [("span_id", "<i8"), ("trace_high", "<i8"), ("trace_low", "<i8"), ("link", "<i8"), ("begin", "<i8")]
)
_BEGIN_TYPES = ("BeginAsyncSpanEvent", "BeginAsyncNamedSpanEvent")
_END_TYPES = ("EndAsyncSpanEvent", "EndAsyncNamedSpanEvent")


def _match(ids: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `wanted`, the value of the same id among `ids` and whether there is one."""
    if not len(ids):
        return np.zeros(len(wanted), values.dtype), np.zeros(len(wanted), bool)
    order = np.argsort(ids, kind="stable")
    slots = np.minimum(np.searchsorted(ids[order], wanted), len(ids) - 1)
    return values[order][slots], ids[order][slots] == wanted


def _span_events(transit: TransitBlock, type_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(span ids as int64, times in ns) of the block's async events of these types."""
    groups = [group for name in type_names if (group := transit.decoded.group(name))]
    if not groups:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids = np.concatenate([g.numeric("span_id").astype(np.uint64).view(np.int64) for g in groups])
    ticks = np.concatenate([g.numeric("time").astype(np.int64) for g in groups])
    return ids, transit.latest.ticks_to_ns(ticks)


def _block_spans(transit: TransitBlock, facts: BlockFacts) -> np.ndarray:
    """One `_SPAN_ROW` per span the block's facts list, with its trace, hand-off parent and begin time."""
    spans = np.zeros(len(facts.spans), _SPAN_ROW)
    for name in ("span_id", "trace_high", "trace_low"):
        spans[name] = facts.spans[name]
    links, handed = _match(facts.links["span_id"], facts.links["link"], spans["span_id"])
    spans["link"] = np.where(handed, links, 0)
    begin_ids, begin_ns = _span_events(transit, _BEGIN_TYPES)
    spans["begin"], begun = _match(begin_ids, begin_ns, spans["span_id"])
    # A span listed without its begin event (hostile input) is dropped.
    return np.concatenate([spans[begun], _block_thread_spans(transit, facts.threads)])


_THREAD_BEGIN_TYPES = ("BeginThreadSpanEvent", "BeginThreadNamedSpanEvent")


def _block_thread_spans(transit: TransitBlock, runs: np.ndarray) -> np.ndarray:
    """One `_SPAN_ROW` per thread span begun in one of the block's runs (`THREAD_RECORD`): its derived id,
    the run's trace, the async span the run ran under as its hand-off parent, its begin time."""
    groups = [group for name in _THREAD_BEGIN_TYPES if (group := transit.decoded.group(name))]
    if not len(runs) or not groups:
        return np.zeros(0, _SPAN_ROW)
    positions = np.concatenate([g.positions for g in groups])
    ticks = np.concatenate([g.numeric("time").astype(np.int64) for g in groups])
    order = np.argsort(positions, kind="stable")
    positions, ticks = positions[order], ticks[order]
    first = np.searchsorted(positions, runs["first"])
    # A run must start at a begin and hold no more begins than follow it (else hostile input: dropped).
    found = np.minimum(first, len(positions) - 1)
    valid = (first < len(positions)) & (positions[found] == runs["first"]) & (runs["count"] > 0)
    valid &= runs["count"] <= len(positions) - first
    runs, first = runs[valid], first[valid]
    sizes = runs["count"]
    run_of = np.repeat(np.arange(len(runs)), sizes)
    begins = first[run_of] + np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    spans = np.zeros(len(begins), _SPAN_ROW)
    event_ids = positions[begins] + transit.block.object_offset
    spans["span_id"] = thread_span_ids(transit.block.stream_id, event_ids).view(np.int64)
    for name in ("trace_high", "trace_low"):
        spans[name] = runs[name][run_of]
    spans["link"] = runs["parent"][run_of]
    spans["begin"] = transit.latest.ticks_to_ns(ticks[begins])
    return spans


@dataclass(frozen=True)
class _Spans:
    """What the blocks of a partition say about their spans, concatenated."""

    stream_ids: list[pa.Array]
    rows: list[np.ndarray]  # _SPAN_ROW
    end_ids: list[np.ndarray]
    end_ns: list[np.ndarray]
    facts: dict[int, dict]


def _collect(blocks: Iterable[TransitBlock]) -> _Spans:
    spans = _Spans([], [], [], [], {})
    for transit in blocks:
        facts = block_facts(transit.decoded.dependencies, f"block {transit.block.block_id}")
        rows = _block_spans(transit, facts)
        spans.rows.append(rows)
        spans.stream_ids.append(pa.repeat(pa.scalar(transit.block.stream_id, pa.utf8()), len(rows)))
        spans.facts.update(zip(facts.facts_span_ids.tolist(), facts.facts, strict=True))
        end_ids, end_ns = _span_events(transit, _END_TYPES)
        spans.end_ids.append(end_ids)
        spans.end_ns.append(end_ns)
    return spans


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
            given = fact.get("attributes")
            attributes[row] = json.dumps(given if isinstance(given, dict) else {}, separators=(",", ":"))
            links[row] = _links(fact.get("links"))
    return pa.array(kinds, pa.utf8()), pa.array(attributes, pa.utf8()), pa.array(links, pa.list_(LINK))


def _links(given: object) -> list[dict[str, str]]:
    """The well-formed entries of a facts' links ({trace_id, span_hex} strings); others are dropped."""
    if not isinstance(given, list):
        return []
    return [
        {"trace_id": link["trace_id"], "span_hex": link["span_hex"]}
        for link in given
        if isinstance(link, dict) and isinstance(link.get("trace_id"), str) and isinstance(link.get("span_hex"), str)
    ]


def rows(blocks: Iterable[TransitBlock]) -> Iterator[pa.RecordBatch]:
    """The span_traces rows of a partition's cpu blocks, one batch."""
    spans = _collect(blocks)
    if not sum(len(r) for r in spans.rows):
        return
    rows = np.concatenate(spans.rows)
    span_ids, links = np.ascontiguousarray(rows["span_id"]), np.ascontiguousarray(rows["link"])
    end_ns, ended = _match(np.concatenate(spans.end_ids), np.concatenate(spans.end_ns), span_ids)
    kinds, attributes, link_lists = _fact_columns(span_ids, spans.facts)
    columns = [
        pa.concat_arrays(spans.stream_ids),
        pa.array(span_ids, pa.int64()),
        hex_strings(rows["trace_high"], rows["trace_low"]),
        hex_strings(span_ids),
        pc.if_else(pa.array(links != 0), hex_strings(links), pa.scalar(None, pa.utf8())),
        kinds,
        attributes,
        link_lists,
        timestamp_array(rows["begin"]),
        pa.array(end_ns, pa.int64(), mask=~ended).view(TIMESTAMP),
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
    trace). Reads only the block's dependencies (`lakehouse.transit.decode.read_block_dependencies`)."""
    facts = block_facts(dependencies, "block")
    spans, runs = facts.spans, facts.threads  # a thread run counts its spans, from its first to last begin
    high = np.concatenate([spans["trace_high"], runs["trace_high"]])
    low = np.concatenate([spans["trace_low"], runs["trace_low"]])
    order = np.lexsort((low, high))
    high, low = high[order], low[order]
    first = np.concatenate([spans["time"], runs["first_time"]])[order]
    last = np.concatenate([spans["time"], runs["last_time"]])[order]
    counts = np.concatenate([np.ones(len(spans), np.int64), runs["count"]])[order]
    starts = np.flatnonzero(np.r_[True, (high[1:] != high[:-1]) | (low[1:] != low[:-1])]) if len(order) else order
    columns = [
        hex_strings(high[starts], low[starts]),
        timestamp_array(convert.ticks_to_ns(np.minimum.reduceat(first, starts) if len(starts) else first)),
        timestamp_array(convert.ticks_to_ns(np.maximum.reduceat(last, starts) if len(starts) else last)),
        pa.array(np.add.reduceat(counts, starts) if len(starts) else counts, pa.int64()),
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
