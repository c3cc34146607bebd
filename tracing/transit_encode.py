"""Vectorized transit encoding: recorded events → objects and dependencies buffers → a block body.

Buffer framing (both buffers): per entry a `u8` type index into the stream's metadata list, then
the fixed-size struct image (`udt.size` bytes) or, for dynamically sized types, a `u32` byte count
followed by the body. All integers little-endian; padding bytes are zero.

Nothing here loops over events in Python: each type's rows are packed at once into a numpy
structured array laid out by the UDT offsets, variable-size parts (strings) are appended from Arrow
string arrays, and `_frame` puts every entry in its final position with one Arrow `take`.
"""

from __future__ import annotations

import array
import itertools
import operator
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cbor2
import lz4.frame
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.tracing import spans as _spans
from spanlake.tracing import trace_facts, udts
from spanlake.tracing.event_records import ASYNC_SLOTS, THREAD_SLOTS, TYPE_BITS, EncodedBuffers
from spanlake.tracing.recording import kept_parent
from spanlake.tracing.registry import DYNAMIC_ID_BASE, Registry
from spanlake.tracing.spans import BEGIN_THREAD, BEGIN_THREAD_NAMED, END_THREAD_NAMED
from spanlake.tracing.udts import (
    FLOAT_METRIC_INDEX,
    LOG_STRING_INDEX,
    TAGGED_FLOAT_METRIC_INDEX,
    TAGGED_INTEGER_METRIC_INDEX,
    TAGGED_LOG_INDEX,
    Udt,
)

UTF8_CODEC = 2  # micromegas StringCodec::Utf8
_SCALARS = {"i64": "<i8", "u64": "<u8", "u32": "<u4", "f64": "<f8", "usize": "<u8"}
_STRING_HANDLES = {"StringId", "StaticStringRef"}
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())


def record_dtype(udt: Udt, prefix: Sequence[tuple[str, str]] = (("tag", "u1"),)) -> np.dtype:
    """A packed numpy dtype for `udt`'s struct image, after `prefix` fields (the framing bytes).

    A string-handle member `m` (StringId / StaticStringRef) becomes `m` (u64 id) and `m_len` (u32).
    """
    names: list[str] = []
    formats: list[str] = []
    offsets: list[int] = []
    base = 0
    for name, fmt in prefix:
        names.append(name)
        formats.append(fmt)
        offsets.append(base)
        base += np.dtype(fmt).itemsize
    for member in udt.members:
        if member.type_name in _STRING_HANDLES:
            names += [member.name, f"{member.name}_len"]
            formats += ["<u8", "<u4"]
            offsets += [base + member.offset, base + member.offset + 8]
        else:
            names.append(member.name)
            formats.append("<u8" if member.is_reference else _SCALARS[member.type_name])
            offsets.append(base + member.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": base + udt.size})


def fill_records(dtype: np.dtype, count: int, **columns: np.ndarray | int) -> np.ndarray:
    """A zeroed structured array of `count` rows with the given fields set (scalars broadcast)."""
    records = np.zeros(count, dtype)
    for name, values in columns.items():
        records[name] = values
    return records


@dataclass
class Part:
    """Entries of one kind: where they go in the buffer (`rows`) and their bytes, one binary value each."""

    rows: np.ndarray
    entries: pa.LargeBinaryArray

    @staticmethod
    def fixed(rows: np.ndarray, records: np.ndarray) -> Part:
        """Entries that are the rows of a structured array (zero copy)."""
        offsets = np.arange(0, (len(records) + 1) * records.dtype.itemsize, records.dtype.itemsize, dtype=np.int64)
        entries = pa.Array.from_buffers(
            pa.large_binary(), len(records), [None, pa.py_buffer(offsets), pa.py_buffer(records)]
        )
        return Part(rows, entries)

    @staticmethod
    def with_tails(rows: np.ndarray, heads: np.ndarray, tails: pa.Array) -> Part:
        """Entries made of a fixed head (a structured array row) followed by the UTF-8 bytes of a string."""
        joined = pc.binary_join_element_wise(
            Part.fixed(rows, heads).entries, tails.cast(pa.large_binary()), _NO_SEPARATOR
        )
        return Part(rows, joined)


def _frame(parts: Iterable[Part], count: int) -> bytes:
    """The entries of all parts back to back in row order (rows 0..count-1, each given by one part)."""
    parts = [p for p in parts if len(p.rows)]
    if not parts:
        return b""
    entries = pa.concat_arrays([p.entries for p in parts])
    source_of_row = np.empty(count, np.int64)
    source_of_row[np.concatenate([p.rows for p in parts])] = np.arange(count)
    ordered = entries.take(pa.array(source_of_row))
    offsets = np.frombuffer(ordered.buffers()[1], np.int64)[ordered.offset : ordered.offset + count + 1]
    return ordered.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


def _earliest(times: np.ndarray) -> int:
    """The earliest of a block's event times (the largest int64 for no event: it moves no block's begin)."""
    return int(times.min(initial=np.iinfo(np.int64).max))


def utf8_lengths(strings: pa.Array) -> np.ndarray:
    """The byte length of each string, as int64."""
    return pc.binary_length(strings).to_numpy(zero_copy_only=False).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Dependencies


class Dependencies:
    """Collects what a block's events reference and writes the dependencies buffer.

    Strings are written first, then descriptors (which point to strings), then property sets, so a
    one-pass reader always finds a referenced id already defined.
    """

    def __init__(self, layout: udts.StreamLayout, registry: Registry) -> None:
        self.layout = layout
        self.registry = registry
        self.static_strings: set[int] = set()  # written as StaticString
        self.dynamic_names: pa.Array | None = None  # per-block names, ids DYNAMIC_ID_BASE + index
        self.records: list[tuple[Udt, list[tuple]]] = []
        self.property_sets: list[int] = []
        # Block-local property sets (the span context of log lines): ids from DYNAMIC_ID_BASE, strings first.
        self.local_strings: list[str] = []
        self.local_property_sets: list[tuple[int, list[tuple[int, int]]]] = []
        self.trace_facts: str | None = None  # the block's trace facts (tracing.trace_facts), id FACTS_ID

    def add_records(self, udt: Udt, table: dict, ids: np.ndarray, string_fields: Sequence[str]) -> None:
        """Adds the `udt` records of `ids` (rows of `table`) and the strings their `string_fields` name."""
        rows = [table[int(i)] for i in ids]
        for row in rows:
            self.static_strings.update(getattr(row, f) for f in string_fields)
        if rows:
            self.records.append((udt, rows))

    def add_property_sets(self, ids: np.ndarray) -> None:
        """Sets the property sets the block's events reference."""
        self.property_sets = [int(i) for i in ids]

    def add_local_property_sets(self, sets: Sequence[Sequence[tuple[str, str]]]) -> list[int]:
        """Adds property sets written in this block only (name, value pairs, in micromegas's order); their ids."""
        string_ids = {
            text: DYNAMIC_ID_BASE + i
            for i, text in enumerate(dict.fromkeys(t for p in sets for pair in p for t in pair))
        }
        self.local_strings = list(string_ids)
        first = DYNAMIC_ID_BASE + len(string_ids)
        self.local_property_sets = [
            (first + i, [(string_ids[name], string_ids[value]) for name, value in pairs])
            for i, pairs in enumerate(sets)
        ]
        return [set_id for set_id, _ in self.local_property_sets]

    def encode(self) -> bytes:
        """The dependencies buffer: strings, then descriptors, then property sets."""
        parts: list[bytes] = [self._static_strings()]
        property_strings = {s for pid in self.property_sets for pair in self.registry.property_sets[pid] for s in pair}
        ids = sorted(property_strings - self.static_strings)
        parts.append(self._string_dependencies(ids, [self.registry.strings[i] for i in ids]))
        local_ids = list(range(DYNAMIC_ID_BASE, DYNAMIC_ID_BASE + len(self.local_strings)))
        parts.append(self._string_dependencies(local_ids, self.local_strings))
        parts += [self._records(udt, rows) for udt, rows in self.records]
        parts += [
            self._property_set(pid, self.registry.property_sets[pid], self.registry.strings)
            for pid in self.property_sets
        ]
        local_strings = dict(zip(local_ids, self.local_strings, strict=True))
        parts += [self._property_set(pid, pairs, local_strings) for pid, pairs in self.local_property_sets]
        return b"".join(parts)

    def _static_strings(self) -> bytes:
        ids = sorted(self.static_strings)
        values = pa.array([self.registry.strings[i] for i in ids], pa.large_string())
        id_array = np.array(ids, np.uint64)
        if self.dynamic_names is not None and len(self.dynamic_names):
            values = pa.concat_arrays([values, self.dynamic_names.cast(pa.large_string())])
            id_array = np.concatenate([id_array, DYNAMIC_ID_BASE + np.arange(len(self.dynamic_names), dtype=np.uint64)])
        if self.trace_facts is not None:
            values = pa.concat_arrays([values, pa.array([self.trace_facts], pa.large_string())])
            id_array = np.append(id_array, np.uint64(trace_facts.FACTS_ID))
        if not len(values):
            return b""
        lengths = utf8_lengths(values)
        dtype = np.dtype(
            {"names": ["tag", "size", "id"], "formats": ["u1", "<u4", "<u8"], "offsets": [0, 1, 5], "itemsize": 13}
        )
        heads = fill_records(
            dtype, len(values), tag=self.layout.dependency_index(udts.STATIC_STRING), size=8 + lengths, id=id_array
        )
        return _frame([Part.with_tails(np.arange(len(values)), heads, values)], len(values))

    def _string_dependencies(self, ids: list[int], texts: list[str]) -> bytes:
        """Strings of property sets, as `StaticStringDependency` (id, codec, length, bytes) like micromegas."""
        if not ids:
            return b""
        values = pa.array(texts, pa.large_string())
        lengths = utf8_lengths(values)
        dtype = np.dtype(
            {
                "names": ["tag", "size", "id", "codec", "len"],
                "formats": ["u1", "<u4", "<u8", "u1", "<u4"],
                "offsets": [0, 1, 5, 13, 14],
                "itemsize": 18,
            }
        )
        heads = fill_records(
            dtype,
            len(ids),
            tag=self.layout.dependency_index(udts.STATIC_STRING_DEPENDENCY),
            size=13 + lengths,
            id=np.array(ids, np.uint64),
            codec=UTF8_CODEC,
            len=lengths,
        )
        return _frame([Part.with_tails(np.arange(len(ids)), heads, values)], len(ids))

    def _records(self, udt: Udt, rows: list[tuple]) -> bytes:
        records = np.zeros(len(rows), record_dtype(udt))
        records["tag"] = self.layout.dependency_index(udt)
        columns = list(zip(*rows, strict=True))
        for field_index, name in enumerate(rows[0]._fields):
            records[name] = columns[field_index]
        return records.tobytes()

    def _property_set(self, set_id: int, pairs: Sequence[tuple[int, int]], strings: Mapping[int, str]) -> bytes:
        """`PropertySetDependency`: id, count, then one `Property` (name and value StaticStringRef) each."""
        body = struct.pack("<QI", set_id, len(pairs)) + b"".join(
            _string_ref(name, strings) + _string_ref(value, strings) for name, value in pairs
        )
        tag = self.layout.dependency_index(udts.PROPERTY_SET_DEPENDENCY)
        return struct.pack("<BI", tag, len(body)) + body


def _string_ref(string_id: int, strings: Mapping[int, str]) -> bytes:
    """A StaticStringRef image: id u64, byte length u32, codec u8, 3 bytes of padding."""
    return struct.pack("<QIB3x", string_id, len(strings[string_id].encode()), UTF8_CODEC)


# ----------------------------------------------------------------------------------------------------
# Objects: thread (cpu) streams

_THREAD_DTYPES = [record_dtype(udt) for udt in udts.THREAD_LAYOUT.objects]
_NAMED_TYPES = (2, 3, 6, 7)
_NAMED_BIT = 2  # set in the named types' indices only


def _unsigned(values: list) -> np.ndarray:
    """A column of non-negative ints (below 2**64) as uint64: `array('Q')` converts Python ints 1.5 to 4
    times faster than `np.array` does (small ints the most), and event columns are ~10 ints a span."""
    return np.frombuffer(array.array("Q", values), np.uint64)


def _thread_columns(values: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    """A flat thread event list's codes and times, the names of its named events (in order), the rows of
    its begins and each begin's context (a static begin's slot holds its context, a named begin's
    (name, context); see tracing.event_records)."""
    if len(values) % THREAD_SLOTS:
        raise ValueError(f"event list of {len(values)} values is not a multiple of {THREAD_SLOTS} slots")
    codes, times = (_unsigned(values[i::THREAD_SLOTS]).view(np.int64) for i in range(2))
    slots = values[2::THREAD_SLOTS]
    types = codes & 0xFF
    is_begin = (types == BEGIN_THREAD) | (types == BEGIN_THREAD_NAMED)
    is_named = (types == BEGIN_THREAD_NAMED) | (types == END_THREAD_NAMED)
    contexts = list(itertools.compress(slots, is_begin.tolist()))
    named_count = int(is_named.sum())
    if not named_count:
        return codes, times, np.zeros(0, object), np.flatnonzero(is_begin), contexts
    names = np.fromiter(itertools.compress(slots, is_named.tolist()), object, named_count)
    named_begins = np.flatnonzero(types[is_named] == BEGIN_THREAD_NAMED)
    if len(named_begins):  # their (name, context) pairs, split
        pairs = names[named_begins]
        names[named_begins] = np.fromiter(map(_FIRST, pairs), object, len(pairs))
        begun = np.fromiter(contexts, object, len(contexts))
        named_contexts = np.fromiter(map(_SECOND, pairs), object, len(pairs))
        begun[np.flatnonzero(types[is_begin] == BEGIN_THREAD_NAMED)] = named_contexts
        contexts = begun.tolist()
    return codes, times, names, np.flatnonzero(is_begin), contexts


_FIRST, _SECOND, _THIRD, _FOURTH = (operator.itemgetter(i) for i in range(4))


def _named_slots(slots: list, named: np.ndarray) -> np.ndarray:
    """The names in the slots of the named events (an object array; most blocks have none). Only those
    slots: an object array of the whole column costs numpy a look into every value."""
    count = int(named.sum())
    return np.fromiter(itertools.compress(slots, named.tolist()), object, count) if count else np.zeros(0, object)


def _distinct(ids: np.ndarray) -> np.ndarray:
    """The distinct descriptor ids of a block's events, sorted. Runs of one id (a span's edges, a loop's
    spans) are cut to one first, in one pass: the sort or hash then sees a few values, not every event."""
    return np.unique(ids[np.r_[True, ids[1:] != ids[:-1]]]) if len(ids) else ids


def _trace_halves(traces: list) -> tuple[np.ndarray, np.ndarray]:
    """The (high, low) halves (int64) of traces held as this process's root span ids or as tuples."""
    count = len(traces)
    high = np.full(count, _spans._TRACE_HIGH, np.uint64)
    local = np.fromiter(map(isinstance, traces, itertools.repeat(int)), bool, count)
    if local.all():
        return high.view(np.int64), np.array(traces, np.uint64).view(np.int64)
    low = np.zeros(count, np.uint64)
    low[local] = np.array(list(itertools.compress(traces, local.tolist())), np.uint64)
    remote = list(itertools.compress(traces, (~local).tolist()))
    high[~local] = np.fromiter(map(_FIRST, remote), np.uint64, len(remote))
    low[~local] = np.fromiter(map(_SECOND, remote), np.uint64, len(remote))
    return high.view(np.int64), low.view(np.int64)


def _thread_runs(contexts: list, begin_positions: np.ndarray, begin_times: np.ndarray) -> np.ndarray:
    """The `THREAD_RECORD`s of a block's thread span begins (their contexts, object indices and times, in
    recording order): one per run of consecutive begins under one context of a trace. A block whose
    begins all hold one context (outside any async span, or one worker's task) is told by `list.count`
    (identity checks in C); otherwise the work is per run, never per span."""
    count = len(contexts)
    one_context = bool(count) and contexts.count(contexts[0]) == count
    if not count or (one_context and not _traced(contexts[0])):
        return np.zeros(0, trace_facts.THREAD_RECORD)
    if one_context:
        starts = np.zeros(1, np.int64)
    else:
        ids = np.fromiter(map(id, contexts), np.int64, count)  # one context object per run, mostly
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    sizes = np.diff(np.r_[starts, count])
    runs = np.fromiter(map(contexts.__getitem__, starts.tolist()), object, len(starts))
    keep = np.fromiter(map(_traced, runs), bool, len(runs))  # in a trace (a hand-built list may hold None)
    starts, sizes, runs = starts[keep], sizes[keep], runs[keep]
    # A span a recording dropped gives way to its nearest kept ancestor (tracing.recording).
    span_ids = np.fromiter(map(kept_parent, map(_FIRST, runs)), np.uint64, len(runs))
    links = np.fromiter(map(_FOURTH, runs), np.uint64, len(runs))
    records = np.zeros(len(runs), trace_facts.THREAD_RECORD)
    records["first"], records["count"] = begin_positions[starts], sizes
    # The async span the run ran under; a context attached from a remote `traceparent` has only its link.
    records["parent"] = np.where(span_ids != 0, span_ids, links).view(np.int64)
    records["trace_high"], records["trace_low"] = _trace_halves(list(map(_THIRD, runs)))
    records["first_time"], records["last_time"] = begin_times[starts], begin_times[starts + sizes - 1]
    return records


def _handed(links: list, span_id: np.ndarray) -> np.ndarray:
    """(span id, hand-off or remote parent) pairs, int64, of the async events whose link slot is set:
    most blocks have none, which `count` (in C) tells without converting the column."""
    if links.count(0) == len(links):
        return np.zeros((0, 2), np.int64)
    link = _unsigned(links)
    rows = np.flatnonzero(link)
    return np.stack([span_id[rows], link[rows]], axis=1).view(np.int64)


def _traced(context: object) -> bool:
    """Whether a thread span begin's context names a span of a trace."""
    return context is not None and bool(context[2])  # type: ignore[index]


def _nonzero(column: list) -> list:
    """The non-zero values of an event column: most blocks have none, which `count` (in C, a few ns a value)
    tells faster than `filter` (tens of ns)."""
    return [] if column.count(0) == len(column) else list(filter(None, column))


def _block_trace_facts(
    async_values: list,
    async_types: np.ndarray,
    span_id: np.ndarray,
    parent_id: np.ndarray,
    times: np.ndarray,
    span_facts: Sequence,
    threads: np.ndarray | None = None,
) -> str:
    """The trace facts text of a block's async events (see tracing.trace_facts), without a loop in Python
    over spans. A begin carries its parent's trace (0 when it starts a trace of its own: a local root,
    whose trace id is derived) and its hand-off parent's id (0 if none); `span_facts` is (span id, facts
    JSON) flat for the spans that have facts; `threads` the block's thread runs (`_thread_runs`)."""
    begins = (async_types & 1) == 0  # BeginAsync* (4, 6) among the async types (4..7)
    handed = _handed(async_values[7::ASYNC_SLOTS], span_id)
    traces = _nonzero(async_values[6::ASYNC_SLOTS])
    # Masks over all the block's async events: each id and time column is taken once per part.
    starts_trace = begins & (parent_id == 0)
    if len(handed):
        starts_trace &= ~np.isin(span_id.view(np.int64), handed[:, 0])
    root_count = int(starts_trace.sum())
    if len(traces) != int(begins.sum()) - root_count:  # a parent without a trace: read each
        starts_trace = begins & np.fromiter(map(operator.not_, async_values[6::ASYNC_SLOTS]), bool, len(begins))
        root_count = int(starts_trace.sum())
    roots = np.zeros(root_count, trace_facts.ROOT_RECORD)
    roots["span_id"], roots["time"] = span_id[starts_trace].view(np.int64), times[starts_trace]
    spans = np.zeros(len(traces), trace_facts.SPAN_RECORD)
    if len(traces):  # empty in a block of root spans only
        others = begins & ~starts_trace
        spans["span_id"], spans["time"] = span_id[others].view(np.int64), times[others]
        spans["trace_high"], spans["trace_low"] = _trace_halves(traces)
    links = np.zeros(len(handed), trace_facts.LINK_RECORD)
    links["span_id"], links["link"] = handed[:, 0], handed[:, 1]
    facts_ids = np.array(span_facts[0::2], np.uint64).view(np.int64)
    trace_high = int(np.uint64(_spans._TRACE_HIGH).view(np.int64))
    return trace_facts.encode(trace_high, roots, spans, links, facts_ids, list(span_facts[1::2]), threads)


def encode_thread_events(
    thread_values: list, async_values: list, registry: Registry, span_facts: Sequence = ()
) -> EncodedBuffers:
    """Encodes a cpu-stream block from the flat event lists of its thread and async events (and the
    facts of its spans that have some, flat (span id, JSON) pairs)."""
    thread_code, thread_time, thread_names, thread_begins, contexts = _thread_columns(thread_values)
    if len(async_values) % ASYNC_SLOTS:
        raise ValueError(f"event list of {len(async_values)} values is not a multiple of {ASYNC_SLOTS} slots")
    # Span ids are u64; the other integers fit int64.
    async_code, async_time, span_id, parent_span_id, depth = (
        _unsigned(async_values[i::ASYNC_SLOTS]).view(np.uint64 if i in (2, 3) else np.int64) for i in range(5)
    )
    codes = np.concatenate([thread_code, async_code])
    times = np.concatenate([thread_time, async_time])
    types, ids = codes & 0xFF, codes >> TYPE_BITS
    if (types >= len(_THREAD_DTYPES)).any():
        raise ValueError(f"cpu events: unknown type index {int(types.max())}")
    count, split = len(codes), len(thread_code)
    # Thread and async events each keep their recording order; merged by time for a chronological block.
    order = np.argsort(times, kind="stable")
    position = np.empty(count, np.int64)
    position[order] = np.arange(count)
    span_ids, parents, depths = (
        np.concatenate([np.zeros(split, c.dtype), c]) for c in (span_id, parent_span_id, depth)
    )

    named = (types & _NAMED_BIT) != 0
    all_names = np.concatenate([thread_names, _named_slots(async_values[5::ASYNC_SLOTS], named[split:])])
    names = pa.array(all_names, pa.large_string()).dictionary_encode()
    name_index = np.zeros(count, np.int64)
    name_index[named] = names.indices.to_numpy(zero_copy_only=False)
    name_lengths = utf8_lengths(names.dictionary)

    parts = []
    for type_index in np.flatnonzero(np.bincount(types, minlength=len(_THREAD_DTYPES))).tolist():  # types present
        dtype, select = _THREAD_DTYPES[type_index], np.flatnonzero(types == type_index)
        columns = {dtype.names[1]: ids[select], "time": times[select]}
        if type_index >= 4:
            columns |= {"span_id": span_ids[select], "parent_span_id": parents[select], "depth": depths[select]}
        if type_index in _NAMED_TYPES:
            at = name_index[select]
            columns |= {"name": DYNAMIC_ID_BASE + at.astype(np.uint64), "name_len": name_lengths[at]}
        parts.append(Part.fixed(position[select], fill_records(dtype, len(select), tag=type_index, **columns)))

    deps = Dependencies(udts.THREAD_LAYOUT, registry)
    deps.add_records(
        udts.SPAN_RECORD, registry.spans, _distinct(ids[~named]), ("name", "target", "module_path", "file")
    )
    deps.add_records(
        udts.SPAN_LOCATION_RECORD, registry.locations, _distinct(ids[named]), ("target", "module_path", "file")
    )
    deps.dynamic_names = names.dictionary
    threads = _thread_runs(contexts, position[thread_begins], thread_time[thread_begins])
    if len(async_code) or len(span_facts) or len(threads):
        deps.trace_facts = _block_trace_facts(
            async_values, types[split:], span_id, parent_span_id, async_time, span_facts, threads
        )
    return EncodedBuffers(_frame(parts, count), deps.encode(), count, _earliest(times))


# ----------------------------------------------------------------------------------------------------
# Objects: log stream

_LOG_STRING_HEAD = np.dtype(
    {
        "names": ["tag", "size", "desc", "time", "codec", "len"],
        "formats": ["u1", "<u4", "<u8", "<i8", "u1", "<u4"],
        "offsets": [0, 1, 5, 13, 21, 22],
        "itemsize": 26,
    }
)
_TAGGED_LOG_HEAD = np.dtype(
    {
        "names": ["tag", "size", "desc", "properties", "time", "codec", "len"],
        "formats": ["u1", "<u4", "<u8", "<u8", "<i8", "u1", "<u4"],
        "offsets": [0, 1, 5, 13, 21, 29, 30],
        "itemsize": 34,
    }
)


def _tuple_columns(events: list[tuple], width: int) -> list[tuple]:
    """Transposes (code, time, value, property_set) event tuples into columns."""
    if not events:
        return [()] * width
    columns = list(zip(*events, strict=True))
    if len(columns) != width:
        raise ValueError(f"events have {len(columns)} fields, expected {width}")
    return columns


def _span_property_sets(entries: list[tuple[int, tuple]], deps: Dependencies) -> np.ndarray:
    """The block-local property set ids of log lines emitted inside a span, from their (property set, span
    context) entries: the set's properties plus `otel.trace_id` and `otel.span_id`, one set per distinct entry."""
    distinct = list(dict.fromkeys(entries))
    strings = deps.registry.strings
    sets = []
    for set_id, span in distinct:  # per distinct span and set, not per line
        context = _spans.SpanContext(span)
        given = {strings[k]: strings[v] for k, v in deps.registry.property_sets[set_id]} if set_id else {}
        named = given | {"otel.trace_id": context.trace_id, "otel.span_id": context.span_hex}
        sets.append(sorted(named.items(), reverse=True))  # micromegas's order: by name, descending
    id_of = dict(zip(distinct, deps.add_local_property_sets(sets), strict=True))
    return np.fromiter(map(id_of.__getitem__, entries), np.int64, len(entries))


def encode_log_events(events: list[tuple], registry: Registry) -> EncodedBuffers:
    """Log events (code, time, message, property_set_id) as `LogStringEventV2` (desc, time, DynString)
    or, when they carry properties, `TaggedLogString`."""
    code_column, time_column, message_column, property_column = _tuple_columns(events, 4)
    codes, times = np.array(code_column, np.int64), np.array(time_column, np.int64)
    deps = Dependencies(udts.LOG_LAYOUT, registry)
    try:  # no line in a span: the ids as they are
        property_sets, in_span = np.array(property_column, np.int64), np.zeros(len(codes), bool)
    except (TypeError, ValueError):  # some (property set, span context) entries
        in_span = np.fromiter(map(isinstance, property_column, itertools.repeat(tuple)), bool, len(property_column))
        property_sets = np.zeros(len(property_column), np.int64)
        property_sets[~in_span] = list(itertools.compress(property_column, (~in_span).tolist()))
        property_sets[in_span] = _span_property_sets(list(itertools.compress(property_column, in_span.tolist())), deps)
    types, desc_ids = codes & 0xFF, codes >> TYPE_BITS
    messages = pa.array(message_column, pa.large_string())
    lengths = utf8_lengths(messages)
    parts = []
    for type_index, head in ((LOG_STRING_INDEX, _LOG_STRING_HEAD), (TAGGED_LOG_INDEX, _TAGGED_LOG_HEAD)):
        select = np.nonzero(types == type_index)[0]
        columns = {"desc": desc_ids[select], "time": times[select]}
        if type_index == TAGGED_LOG_INDEX:
            columns["properties"] = property_sets[select]
        body_size = head.itemsize - 5 + lengths[select]  # after tag + u32 size
        heads = fill_records(
            head, len(select), tag=type_index, size=body_size, codec=UTF8_CODEC, len=lengths[select], **columns
        )
        parts.append(Part.with_tails(select, heads, messages.take(pa.array(select))))
    unknown = ~np.isin(types, (LOG_STRING_INDEX, TAGGED_LOG_INDEX))
    if unknown.any():
        raise ValueError(f"log events: unknown type index {int(types[unknown][0])}")
    deps.add_records(
        udts.LOG_METADATA_RECORD, registry.logs, np.unique(desc_ids), ("fmt_str", "target", "module_path", "file")
    )
    registry_sets = property_sets[(types == TAGGED_LOG_INDEX) & ~in_span]
    deps.add_property_sets(np.unique(registry_sets[registry_sets != 0]))
    return EncodedBuffers(_frame(parts, len(codes)), deps.encode(), len(codes), _earliest(times))


# ----------------------------------------------------------------------------------------------------
# Objects: metrics stream

_METRIC_DTYPES = [record_dtype(udt) for udt in udts.METRICS_LAYOUT.objects]
_FLOAT_METRICS = (FLOAT_METRIC_INDEX, TAGGED_FLOAT_METRIC_INDEX)
_TAGGED_METRICS = (TAGGED_FLOAT_METRIC_INDEX, TAGGED_INTEGER_METRIC_INDEX)


def encode_metric_events(events: list[tuple], registry: Registry) -> EncodedBuffers:
    """Metric events (code, time, value, property_set_id): ints for integer metrics, floats for float ones."""
    code_column, time_column, value_column, property_column = _tuple_columns(events, 4)
    codes, times = np.array(code_column, np.int64), np.array(time_column, np.int64)
    values, property_sets = np.array(value_column, dtype=object), np.array(property_column, np.int64)
    types, desc_ids = codes & 0xFF, codes >> TYPE_BITS
    parts = []
    for type_index, dtype in enumerate(_METRIC_DTYPES):
        select = np.nonzero(types == type_index)[0]
        value_type = np.float64 if type_index in _FLOAT_METRICS else np.uint64
        columns = {"desc": desc_ids[select], "time": times[select], "value": values[select].astype(value_type)}
        if type_index in _TAGGED_METRICS:
            columns["properties"] = property_sets[select]
        parts.append(Part.fixed(select, fill_records(dtype, len(select), tag=type_index, **columns)))
    if (types >= len(_METRIC_DTYPES)).any():
        raise ValueError(f"metric events: unknown type index {int(types.max())}")
    deps = Dependencies(udts.METRICS_LAYOUT, registry)
    deps.add_records(
        udts.METRIC_METADATA_DEPENDENCY, registry.metrics, np.unique(desc_ids), ("name", "unit", "target", "file")
    )
    deps.add_property_sets(np.unique(property_sets[np.isin(types, _TAGGED_METRICS)]))
    return EncodedBuffers(_frame(parts, len(codes)), deps.encode(), len(codes), _earliest(times))


# ----------------------------------------------------------------------------------------------------
# Block body (POST /ingestion/insert_block)


def compress(buffer: bytes) -> bytes:
    """An LZ4 frame, what micromegas's `compression::compress` produces and `lz4.frame.decompress` reads."""
    return lz4.frame.compress(buffer, block_linked=True, content_checksum=True)


@dataclass(frozen=True)
class BlockHeader:
    """The fields of a block's CBOR map besides its payload and object count."""

    stream_id: uuid.UUID
    process_id: uuid.UUID
    begin_time: str  # RFC3339, 9 fraction digits, +00:00
    begin_ticks: int  # relative to the process start_ticks
    end_time: str
    end_ticks: int
    object_offset: int


def block_body(header: BlockHeader, buffers: EncodedBuffers, block_id: uuid.UUID | None = None) -> bytes:
    """The CBOR `Block` map, keys in the order the Rust sink writes them."""
    return cbor2.dumps(
        {
            "block_id": str(block_id or uuid.uuid4()),
            "stream_id": str(header.stream_id),
            "process_id": str(header.process_id),
            "begin_time": header.begin_time,
            "begin_ticks": header.begin_ticks,
            "end_time": header.end_time,
            "end_ticks": header.end_ticks,
            "payload": {"dependencies": compress(buffers.dependencies), "objects": compress(buffers.objects)},
            "object_offset": header.object_offset,
            "nb_objects": buffers.nb_objects,
        }
    )
