"""Transit decoding throughput: async events decoded and turned into `async_events` rows per second.

Side by side on the same synthetic blocks (built like the Rust producer's `cpu` stream blocks):
* vectorized: `lakehouse.transit.decode_block` + `views.async_events.build_batch` (what spanlake runs);
* baseline: a naive decoder, one `struct.unpack_from` per object, references resolved per object,
  rows appended to Python lists, then converted to Arrow.
Also reported: the framing loop alone (the one per-object Python loop of the decoder), the
all-same-size fast path, log_entries and measures rows from the genuine Rust fixture blocks repeated
(log messages are dynamically sized: read object by object), and thread_spans (vectorized call tree
vs micromegas's per-event stack machine).

    python benchmarks/decode.py [--events N] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cbor2
import lz4.frame
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import rust_fixtures
from transit_builder import ThreadBlockWriter, thread_stream_metadata

from spanlake.lakehouse.transit.decode import (
    StreamLayout,
    decode_block,
    decode_buffers,
    frame_objects,
    split_payload,
    stream_layout,
)
from spanlake.views import async_events, log_entries, measures, thread_spans
from spanlake.views.meta import BlockMeta, StreamMeta
from spanlake.views.scope import scope_hash
from spanlake.views.time import TickConverter, converter_for_block

CONVERT = TickConverter(tick_offset=1_000, process_start_ns=1_700_000_000_000_000_000, frequency=2_445_400_108)


def async_block(nb_events: int, named_share: float) -> bytes:
    """Interleaved static and named async spans (begin then end), 20 descriptors, 50 names."""
    writer = ThreadBlockWriter()
    descs = [writer.span_desc(f"app::task_{i}", line=i) for i in range(20)]
    locations = [writer.span_location(line=100 + i) for i in range(5)]
    ticks = 10_000
    named_every = round(1 / named_share) if named_share else 0
    for span in range(nb_events // 2):
        if named_every and span % named_every == 0:
            location, name = locations[span % 5], f"request_{span % 50}"
            writer.async_named(True, location, name, span + 1, span // 2, ticks, span % 4)
            writer.async_named(False, location, name, span + 1, span // 2, ticks + 7, span % 4)
        else:
            desc = descs[span % 20]
            writer.async_event(True, desc, span + 1, span // 2, ticks, span % 4)
            writer.async_event(False, desc, span + 1, span // 2, ticks + 7, span % 4)
        ticks += 13
    return writer.payload()


def thread_block(nb_events: int) -> bytes:
    """Nested thread spans, three levels deep, a named span every 8."""
    writer = ThreadBlockWriter()
    descs = [writer.span_desc(f"app::level_{i}", line=i) for i in range(3)]
    location = writer.span_location(line=50)
    ticks = 10_000
    for group in range(nb_events // 6):
        named = group % 8 == 0
        for level in range(3):
            if named and level == 2:
                writer.thread_named(True, location, f"frame_{group % 16}", ticks)
            else:
                writer.thread(True, descs[level], ticks)
            ticks += 3
        for level in reversed(range(3)):
            if named and level == 2:
                writer.thread_named(False, location, f"frame_{group % 16}", ticks)
            else:
                writer.thread(False, descs[level], ticks)
            ticks += 3
    return writer.payload()


# ---------------------------------------------------------------------------------------------------
# Baseline: the straightforward decoder, object by object.

_DESC = struct.Struct("<QQQQQII")
_LOCATION = struct.Struct("<QQQQII")
_ASYNC = struct.Struct("<QQQqI")
_NAMED = struct.Struct("<QQIIQQqI")


def naive_async_rows(payload: bytes, layout: StreamLayout, block_id: str, stream_id: str) -> pa.RecordBatch:
    dependencies, objects = (lz4.frame.decompress(part) for part in split_payload(payload))
    deps = _naive_dependencies(dependencies, layout)
    columns: dict[str, list] = {name: [] for name in async_events.SCHEMA.names}
    hashes: dict[tuple, int] = {}
    sizes = [udt.size for udt in layout.object_types]
    names = [udt.name for udt in layout.object_types]
    ns_per_tick = 1e9 / CONVERT.frequency
    position = 0
    while position < len(objects):
        type_name = names[objects[position]]
        body = position + 1
        position = body + sizes[objects[position]]
        if type_name in ("BeginAsyncSpanEvent", "EndAsyncSpanEvent"):
            desc_id, span_id, parent, ticks, depth = _ASYNC.unpack_from(objects, body)
            desc = deps[desc_id]
            name, filename, target, line = desc["name"], desc["file"], desc["target"], desc["line"]
        elif type_name in ("BeginAsyncNamedSpanEvent", "EndAsyncNamedSpanEvent"):
            location_id, name_id, _, _, span_id, parent, ticks, depth = _NAMED.unpack_from(objects, body)
            location, name = deps[location_id], deps[name_id]
            filename, target, line = location["file"], location["target"], location["line"]
        else:
            continue
        scope = (name, filename, target, line)
        if scope not in hashes:
            hashes[scope] = scope_hash(*scope)
        delta = (ticks - CONVERT.tick_offset) * ns_per_tick
        columns["stream_id"].append(stream_id)
        columns["block_id"].append(block_id)
        columns["time"].append(CONVERT.process_start_ns + int(delta + 0.5))
        columns["event_type"].append("begin" if type_name.startswith("Begin") else "end")
        columns["span_id"].append(span_id - (1 << 64) if span_id >= 1 << 63 else span_id)
        columns["parent_span_id"].append(parent - (1 << 64) if parent >= 1 << 63 else parent)
        columns["depth"].append(depth)
        columns["hash"].append(hashes[scope])
        columns["name"].append(name)
        columns["filename"].append(filename)
        columns["target"].append(target)
        columns["line"].append(line)
    arrays = [
        pa.array(columns[field.name], pa.int64()).cast(field.type)
        if pa.types.is_timestamp(field.type)
        else pa.array(columns[field.name], field.type.value_type).dictionary_encode()
        if pa.types.is_dictionary(field.type)
        else pa.array(columns[field.name], field.type)
        for field in async_events.SCHEMA
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=async_events.SCHEMA)


def _naive_dependencies(buffer: bytes, layout: StreamLayout) -> dict[int, object]:
    deps: dict[int, object] = {}
    position = 0
    while position < len(buffer):
        udt = layout.dependency_types[buffer[position]]
        if udt.size == 0:
            (size,) = struct.unpack_from("<I", buffer, position + 1)
            body, position = position + 5, position + 5 + size
        else:
            body, position = position + 1, position + 1 + udt.size
        if udt.name == "StaticString":
            deps[struct.unpack_from("<Q", buffer, body)[0]] = buffer[body + 8 : position].decode()
        elif udt.name == "SpanRecord":
            dep_id, name, target, _, file, line, _ = _DESC.unpack_from(buffer, body)
            deps[dep_id] = {"name": deps[name], "target": deps[target], "file": deps[file], "line": line}
        elif udt.name == "SpanLocationRecord":
            dep_id, target, _, file, line, _ = _LOCATION.unpack_from(buffer, body)
            deps[dep_id] = {"target": deps[target], "file": deps[file], "line": line}
    return deps


def reference_call_tree(blocks: list, stream: StreamMeta) -> int:
    """micromegas's stack machine, one event at a time, on already decoded columns (rows counted)."""
    rows = 0
    for meta, decoded in blocks:
        events = []
        for type_name, (is_begin, named) in thread_spans.THREAD_EVENT_TYPES.items():
            group = decoded.group(type_name)
            if group is None:
                continue
            scopes = group.values("thread_span_location" if named else "thread_span_desc").to_list()
            names = group.values("name").to_list() if named else [scope.members["name"] for scope in scopes]
            times = CONVERT.ticks_to_ns(group.numeric("time")).tolist()
            for position, time_ns, scope, name in zip(group.positions.tolist(), times, scopes, names, strict=True):
                key = (name, scope.members["file"], scope.members["target"], scope.members["line"])
                events.append((position, is_begin, time_ns, meta.object_offset + position, scope_hash(*key)))
        events.sort()
        stack: list[list] = []
        for _, is_begin, time_ns, event_id, event_hash in events:
            if is_begin:
                stack.append([event_id, event_hash, time_ns, None, []])
            else:
                node = stack.pop()
                node[3] = time_ns
                if stack:
                    stack[-1][4].append(node)
                rows += 1
    return rows


# ---------------------------------------------------------------------------------------------------


def _plain(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionary columns decoded, so batches with different dictionaries compare by value."""
    columns = [
        column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def median_seconds(function: Callable[[], object], runs: int) -> float:
    function()  # warm up (first pyarrow compute call initializes its kernels)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def report(label: str, count: int, vectorized: float, baseline: float | None = None) -> None:
    line = f"{label:<58} {count / vectorized / 1e6:7.2f} M/s ({vectorized * 1e3:7.1f} ms)"
    if baseline is not None:
        line += (
            f"   baseline {count / baseline / 1e6:6.2f} M/s ({baseline * 1e3:7.1f} ms)   ×{baseline / vectorized:5.1f}"
        )
    print(line)


def fixture_rows_seconds(tag: str, view: ModuleType, nb_events: int, runs: int) -> tuple[int, float]:
    """Decode + rows of the last genuine Rust block of a stream, its objects repeated to ~nb_events."""
    stream = rust_fixtures.streams_tagged(tag)[0]
    block = stream.blocks[-1]
    raw = rust_fixtures.FIXTURES / "raw"
    dependencies = (raw / f"{block.block_id}.dependencies.bin").read_bytes()
    repeat = max(1, nb_events // block.meta.nb_objects)
    objects = (raw / f"{block.block_id}.objects.bin").read_bytes() * repeat
    process = rust_fixtures.process()
    convert = converter_for_block(process, block.meta)

    def rows() -> pa.RecordBatch:
        return view.build_batch(decode_buffers(dependencies, objects, stream.layout), block.meta, process, convert)

    return repeat * block.meta.nb_objects, median_seconds(rows, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    layout = stream_layout(*thread_stream_metadata())
    meta = BlockMeta("block", "stream", "process", 0, 0, 0, 0, args.events, 0, 0)
    print(f"{args.events} events per block, median of {args.runs} runs")

    for label, named_share in (("async events, 25% named (mixed sizes)", 0.25), ("async events, static only", 0.0)):
        payload = async_block(args.events, named_share)
        decoded = decode_block(payload, layout)
        vector = async_events.build_batch(decoded, meta, CONVERT)
        naive = naive_async_rows(payload, layout, "block", "stream")
        assert _plain(vector).equals(_plain(naive)), "the two decoders disagree"
        vectorized = median_seconds(
            lambda p=payload: async_events.build_batch(decode_block(p, layout), meta, CONVERT), args.runs
        )
        baseline = median_seconds(lambda p=payload: naive_async_rows(p, layout, "block", "stream"), args.runs)
        report(f"decode + async_events rows: {label}", args.events, vectorized, baseline)
        objects = lz4.frame.decompress(cbor2.loads(payload)["objects"])
        framing = median_seconds(lambda o=objects: frame_objects(o, layout.object_types, "objects"), args.runs)
        report(f"  of which framing ({'same-size fast path' if not named_share else 'loop'})", args.events, framing)

    for tag, view in (("log", log_entries), ("metrics", measures)):
        count, seconds = fixture_rows_seconds(tag, view, args.events, args.runs)
        report(f"decode + {view.VIEW_SET_NAME} rows: fixture {tag} block repeated", count, seconds)

    payload = thread_block(args.events)
    stream = StreamMeta("stream", "process", ("cpu",), {"thread-name": "main", "thread-id": "1"})
    blocks = [
        (
            BlockMeta("block", "stream", "process", 0, -1_000, 0, 10**12, args.events, 0, 0),
            decode_block(payload, layout),
        )
    ]
    rows = thread_spans.build_batch(blocks, stream, CONVERT).num_rows
    assert rows - 1 == reference_call_tree(blocks, stream)  # same spans (+ the thread root)
    vectorized = median_seconds(lambda: thread_spans.build_batch(blocks, stream, CONVERT), args.runs)
    baseline = median_seconds(lambda: reference_call_tree(blocks, stream), args.runs)
    report("thread_spans call tree + rows (decoded block given)", args.events, vectorized, baseline)
    decode = median_seconds(lambda: decode_block(payload, layout), args.runs)
    report("  thread block decode alone", args.events, decode)


if __name__ == "__main__":
    main()
