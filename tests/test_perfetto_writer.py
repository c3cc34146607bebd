"""The Perfetto trace writer (views/perfetto.py): byte identity with micromegas, chunking, lane layout."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TracePacket, TrackEvent
from perfetto_check import DecodedTrace, ReferenceWriter, decode_and_check

from spanlake.views.perfetto import writer as perfetto_writer
from spanlake.views.perfetto.chunks import ChunkBuffer
from spanlake.views.perfetto.writer import AsyncLayout, PerfettoThread, PerfettoTraceWriter, TrackIds, trace_chunks

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "perfetto-golden"
TIMESTAMP = pa.timestamp("ns", tz="+00:00")
PROCESS_ID = "34d7c06d-3163-4111-863e-c5fc09d22d51"
SLICE_BEGIN, SLICE_END = TrackEvent.TYPE_SLICE_BEGIN, TrackEvent.TYPE_SLICE_END


@dataclass(frozen=True)
class Span:
    begin: int
    end: int
    name: str
    target: str = "t"
    filename: str = "f.rs"
    line: int = 1
    span_id: int = 0
    parent_span_id: int | None = 0


@dataclass(frozen=True)
class Scenario:
    process_id: str
    exe: str
    threads: list[PerfettoThread]
    thread_spans: dict[str, list[Span]]
    async_spans: list[Span]


def spans_table(spans: list[Span], *, dictionary: bool = True) -> pa.Table:
    def strings(values: list[str]) -> pa.Array:
        array = pa.array(values, pa.string())
        return array.dictionary_encode() if dictionary else array

    return pa.table(
        {
            "span_id": pa.array([s.span_id for s in spans], pa.int64()),
            "parent_span_id": pa.array([s.parent_span_id for s in spans], pa.int64()),
            "begin": pa.array([s.begin for s in spans], TIMESTAMP),
            "end": pa.array([s.end for s in spans], TIMESTAMP),
            "name": strings([s.name for s in spans]),
            "target": strings([s.target for s in spans]),
            "filename": strings([s.filename for s in spans]),
            "line": pa.array([s.line for s in spans], pa.uint32()),
        }
    )


def chunks_of(
    scenario: Scenario,
    span_types: str = "both",
    layout: AsyncLayout = AsyncLayout.LANES,
    batch_rows: int = 1000,
    track_ids: TrackIds = TrackIds.UNIQUE,
) -> list[bytes]:
    def batches(spans: list[Span]) -> Iterator[pa.RecordBatch]:
        return iter(spans_table(spans).to_batches(max_chunksize=batch_rows))

    return list(
        trace_chunks(
            scenario.process_id,
            scenario.exe,
            scenario.threads,
            lambda stream_id: batches(scenario.thread_spans[stream_id]),
            lambda: batches(scenario.async_spans),
            span_types,
            async_layout=layout,
            track_ids=track_ids,
        )
    )


def golden_scenario() -> Scenario:
    raw = json.loads((GOLDEN / "scenario.json").read_text())

    def spans(rows: list[dict]) -> list[Span]:
        return [
            Span(r["begin"], r["end"], r["name"], r["target"], r["filename"], r["line"], span_id=i + 1)
            for i, r in enumerate(rows)
        ]

    return Scenario(
        raw["process"]["process_id"],
        raw["process"]["exe"],
        [PerfettoThread(t["stream_id"], t["tid"], t["thread_name"]) for t in raw["threads"]],
        {sid: spans(rows) for sid, rows in raw["thread_spans"].items()},
        spans(raw["async_spans"]),
    )


def golden_chunks() -> list[bytes]:
    return [path.read_bytes() for path in sorted(GOLDEN.glob("chunk_*.bin"))]


def _rows(spans: Iterable[Span]) -> Iterator[tuple]:
    return ((s.begin, s.end, s.name, s.target, s.filename, s.line) for s in spans)


def reference_chunks(scenario: Scenario, span_types: str = "both") -> list[bytes]:
    writer = ReferenceWriter(scenario.process_id)
    writer.descriptors(scenario.exe, scenario.threads, with_async=span_types != "thread")
    if span_types != "async":
        for thread in scenario.threads:
            writer.spans(
                _rows(scenario.thread_spans[thread.stream_id]), xxhash.xxh64_intdigest(thread.stream_id.encode())
            )
    if span_types != "thread":
        writer.spans(_rows(s for s in scenario.async_spans if s.begin < s.end), writer.async_uuid)
    writer.flush()
    return writer.chunks


def expected_slices(spans: Iterable[Span]) -> Counter:
    return Counter((s.name, s.begin, s.end) for s in spans)


# --- micromegas byte identity ---------------------------------------------------------------------


def test_golden_trace_is_reproduced_byte_for_byte_with_the_single_track_layout() -> None:
    chunks = chunks_of(golden_scenario(), layout=AsyncLayout.SINGLE_TRACK, batch_rows=4, track_ids=TrackIds.MICROMEGAS)
    assert [len(c) for c in chunks] == [66, 142, 48, 928, 740, 1432, 148]
    assert chunks == golden_chunks()
    assert b"".join(chunks) == (GOLDEN / "trace.pftrace").read_bytes()


def test_golden_thread_part_is_byte_identical_with_the_lane_layout() -> None:
    chunks = chunks_of(golden_scenario(), track_ids=TrackIds.MICROMEGAS)
    golden = golden_chunks()
    assert chunks[:5] == golden[:5]  # descriptors and thread spans only
    # Chunk 5 starts with thread spans, then the async spans, which the lanes lay out differently.
    first_async_packet = golden[5].index(b"\x5a\x13\x18\x04") - 2  # event on category 4 ("assets")
    assert golden[5][first_async_packet] == 0x0A
    assert chunks[5][:first_async_packet] == golden[5][:first_async_packet]
    assert chunks[5] != golden[5]


def test_the_checker_catches_the_mispaired_single_track_of_micromegas() -> None:
    with pytest.raises(AssertionError, match="closes the wrong slice"):
        decode_and_check((GOLDEN / "trace.pftrace").read_bytes())


# --- chunking and encoding against a message-per-packet reference ---------------------------------


def random_scenario(
    seed: int, *, threads: int, spans_per_thread: int, async_spans: int, name_length: int = 12, unique_names: int = 20
) -> Scenario:
    rng = random.Random(seed)
    names = [f"{'ñ' if i % 3 == 0 else 'n'}{i}_" + "x" * rng.randrange(name_length) for i in range(unique_names)]

    def spans(count: int, start: int) -> list[Span]:
        out, t = [], start
        for _ in range(count):
            t += rng.choice([0, 1, 100, 5_000, 1 << 20])
            out.append(
                Span(
                    t,
                    t + rng.choice([-5, 0, 1, 127, 128, 90_000, 1 << 40]),
                    rng.choice(names),
                    rng.choice(["", "a::b", "net"]),
                    rng.choice(["", "src/a.rs", "src/ü.rs"]),
                    rng.choice([0, 1, 127, 128, 2**32 - 1]),
                )
            )
        return out

    thread_list = [
        PerfettoThread(
            f"stream-{i:04d}-" + "s" * rng.randrange(40), rng.choice([0, 7, -3, 2**31 + 5, 2**40 + 9]), f"thread {i}"
        )
        for i in range(threads)
    ]
    return Scenario(
        PROCESS_ID,
        "/bin/" + "e" * rng.randrange(300),
        thread_list,
        {
            t.stream_id: spans(rng.randrange(spans_per_thread + 1), rng.choice([0, 1 << 60, -(1 << 20)]))
            for t in thread_list
        },
        sorted(spans(async_spans, 1 << 50), key=lambda s: s.begin),
    )


@pytest.mark.parametrize("span_types", ["both", "thread", "async"])
@pytest.mark.parametrize("seed", [1, 2])
def test_chunks_match_the_reference_writer(seed: int, span_types: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfetto_writer, "SLAB_SPANS", 7)  # many slabs, cut everywhere
    scenario = random_scenario(seed, threads=5, spans_per_thread=60, async_spans=95, unique_names=300)
    chunks = chunks_of(scenario, span_types, AsyncLayout.SINGLE_TRACK, batch_rows=13)
    assert chunks == reference_chunks(scenario, span_types)
    assert all(chunks)


def test_many_thread_descriptors_cross_the_threshold_like_micromegas() -> None:
    scenario = random_scenario(3, threads=180, spans_per_thread=3, async_spans=5)
    chunks = chunks_of(scenario, "both", AsyncLayout.SINGLE_TRACK)
    assert chunks == reference_chunks(scenario)
    assert len(chunks[1]) >= 8192  # the descriptors alone fill a chunk before their flush


def packet_bounds(data: bytes) -> tuple[set[int], set[int]]:
    """Offsets where packets start, and where their framing ends, in a whole trace."""
    starts, framing_ends, offset = set(), set(), 0
    while offset < len(data):
        starts.add(offset)
        length, shift, cursor = 0, 0, offset + 1
        while True:
            byte = data[cursor]
            length |= (byte & 0x7F) << shift
            shift, cursor = shift + 7, cursor + 1
            if byte < 0x80:
                break
        framing_ends.add(cursor)
        offset = cursor + length
    return starts, framing_ends


def test_long_names_make_a_chunk_end_right_after_a_packet_framing() -> None:
    # 841-byte names (found by search): the buffer holds 8190 bytes before an END packet's framing.
    thread = PerfettoThread("s", 1, "main")
    spans = [Span(1000 * i, 1000 * i + 10, f"{i:03d}" + "n" * 838) for i in range(30)]
    scenario = Scenario(PROCESS_ID, "exe", [thread], {"s": spans}, [])
    chunks = chunks_of(scenario, "thread")
    assert chunks == reference_chunks(scenario, "thread")
    assert [len(c) for c in chunks] == [36, 50, 8204, 943, 8192, 944, 8204, 946]
    assert chunks[4].endswith(b"\x0a\x1d") and chunks[5][:2] == b"\x5a\x13"  # a 29-byte END body
    assert TracePacket.FromString(chunks[5][:29]).track_event.type == SLICE_END
    data = b"".join(chunks)
    starts, framing_ends = packet_bounds(data)
    cuts = np.cumsum([len(c) for c in chunks]).tolist()
    assert [i for i, cut in enumerate(cuts) if cut in framing_ends] == [4]
    assert all(cut in starts or cut in framing_ends or cut == len(data) for cut in cuts)
    assert len(Trace.FromString(data).packet) == 2 + 2 * 30


@pytest.mark.parametrize("seed", range(6))
def test_runs_of_writes_are_chunked_as_one_write_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    writes = [bytes([i % 251]) * rng.choice([1, 2, 30, 700, 3000, 9000]) for i in range(400)]
    flushed = {i for i in range(len(writes)) if rng.random() < 0.05}
    one_at_a_time, runs = ChunkBuffer(8192), ChunkBuffer(8192)
    expected, chunks = [], []
    for index, data in enumerate(writes):
        expected += one_at_a_time.write(data)
        if index in flushed:
            expected += one_at_a_time.flush()
    start = 0
    while start < len(writes):
        stop = min(len(writes), start + rng.randrange(1, 60))
        ends = np.cumsum([len(w) for w in writes[start:stop]])
        flush_ends = ends[[i - start for i in range(start, stop) if i in flushed]]
        chunks += runs.write_run(b"".join(writes[start:stop]), ends, flush_ends)
        start = stop
    assert chunks + runs.flush() == expected + one_at_a_time.flush()
    assert len(expected) > 20 and all(expected)


def test_input_shapes_give_the_same_bytes() -> None:
    """Plain or dictionary strings, tables or batches, µs or ns timestamps: same trace."""
    scenario = random_scenario(4, threads=2, spans_per_thread=30, async_spans=30)

    def whole_microseconds(spans: list[Span]) -> list[Span]:  # an order-preserving map to whole µs
        return [Span((s.begin >> 12) * 1000, (s.end >> 12) * 1000, s.name, s.target) for s in spans]

    scenario = Scenario(
        scenario.process_id,
        scenario.exe,
        scenario.threads,
        {sid: whole_microseconds(spans) for sid, spans in scenario.thread_spans.items()},
        whole_microseconds(scenario.async_spans),
    )
    expected = chunks_of(scenario, layout=AsyncLayout.SINGLE_TRACK)

    def run(convert: Callable[[list[Span]], object]) -> list[bytes]:
        return list(
            trace_chunks(
                PROCESS_ID,
                scenario.exe,
                scenario.threads,
                lambda sid: convert(scenario.thread_spans[sid]),
                lambda: convert(scenario.async_spans),
                async_layout=AsyncLayout.SINGLE_TRACK,
            )
        )

    def microseconds(spans: list[Span]) -> pa.Table:
        table = spans_table(spans)
        for index, column in ((2, "begin"), (3, "end")):
            table = table.set_column(index, column, table[column].cast(pa.timestamp("us", "UTC")))
        return table

    assert run(lambda spans: spans_table(spans, dictionary=False).to_batches(max_chunksize=3)) == expected
    assert run(spans_table) == expected
    assert run(microseconds) == expected


def test_null_strings_and_lines_are_written_as_empty_and_zero() -> None:
    table = spans_table([Span(1, 2, "a"), Span(3, 4, "b")])
    table = table.set_column(4, "name", pa.array([None, "b"], pa.string()))
    table = table.set_column(7, "line", pa.array([None, 5], pa.uint32()))
    chunks = list(trace_chunks(PROCESS_ID, "exe", [PerfettoThread("s", 1, "t")], lambda _: table, lambda: [], "thread"))
    expected = reference_chunks(
        Scenario(
            PROCESS_ID,
            "exe",
            [PerfettoThread("s", 1, "t")],
            {"s": [Span(1, 2, "", line=0), Span(3, 4, "b", line=5)]},
            [],
        ),
        "thread",
    )
    assert chunks == expected


# --- the async lane layout -------------------------------------------------------------------------


def test_golden_async_spans_get_three_properly_nested_lanes() -> None:
    scenario = golden_scenario()
    trace = decode_and_check(b"".join(chunks_of(scenario)))
    expected = expected_slices(scenario.async_spans)
    for spans in scenario.thread_spans.values():
        expected += expected_slices(spans)
    assert trace.all_slices() == expected
    async_uuid = xxhash.xxh64_intdigest(b"async_track", xxhash.xxh64_intdigest(PROCESS_ID.encode()))
    lanes = {uuid: d.name for uuid, d in trace.tracks.items() if d.name}
    assert sorted(lanes.values()) == ["Async Operations", "Async lane 1", "Async lane 2"]
    assert all(
        trace.tracks[uuid].parent_uuid == async_uuid for uuid, name in lanes.items() if name != "Async Operations"
    )
    # Spans 30 µs apart lasting 70 µs: span i shares a lane with spans i ± 3 only.
    by_begin = {b: track for track, slices in trace.slices.items() for _, b, _ in slices}
    lane_of = [by_begin[s.begin] for s in scenario.async_spans]
    assert lane_of[:3] == [async_uuid, *lane_of[1:3]] and len(set(lane_of[:3])) == 3
    assert lane_of == lane_of[:3] * 4


def lane_by_span(trace: DecodedTrace, spans: list[Span]) -> dict[int, int]:
    """Lane number of each span (0: "Async Operations", N: "Async lane N")."""
    number = {
        uuid: 0 if d.name == "Async Operations" else int(d.name.rsplit(" ", 1)[1])
        for uuid, d in trace.tracks.items()
        if d.name
    }
    lane_of = {(b, e): number[track] for track, slices in trace.slices.items() for _, b, e in slices}
    return {s.span_id: lane_of[(s.begin, s.end)] for s in spans}


def test_children_nest_on_their_parent_lane_when_they_fit() -> None:
    spans = [
        Span(0, 1000, "root", span_id=1),
        Span(10, 100, "child", span_id=2, parent_span_id=1),
        Span(20, 50, "grandchild", span_id=3, parent_span_id=2),
        Span(60, 200, "overlapping sibling", span_id=4, parent_span_id=1),  # overlaps child 2
        Span(70, 90, "inside its sibling", span_id=10, parent_span_id=1),  # sibling 2 is on top
        Span(300, 1000, "same end as parent", span_id=5, parent_span_id=1),
        Span(400, 2000, "outlives parent", span_id=6, parent_span_id=1),
        Span(1100, 1200, "new root", span_id=7),
        Span(1150, 1160, "orphan", span_id=8, parent_span_id=99),
        Span(1170, 1180, "late child", span_id=9, parent_span_id=7),
        Span(1171, 1172, "null parent", span_id=11, parent_span_id=None),
    ]
    scenario = Scenario(PROCESS_ID, "exe", [], {}, spans)
    trace = decode_and_check(b"".join(chunks_of(scenario, "async")))
    assert trace.all_slices() == expected_slices(spans)
    lane = lane_by_span(trace, spans)
    assert [lane[s.span_id] for s in spans] == [0, 0, 0, 1, 2, 1, 2, 0, 1, 0, 1]


def random_async_spans(seed: int, count: int) -> list[Span]:
    """Trees of async spans: children mostly inside their parent, siblings overlapping, some children
    outliving their parent, shared begin/end instants, zero-length and inverted spans."""
    rng = random.Random(seed)
    spans: list[Span] = []
    for span_id in range(1, count + 1):
        begin = rng.randrange(0, 50_000, 7)
        parent = rng.choice(spans) if spans and rng.random() < 0.75 else None
        if parent is not None and rng.random() < 0.8 and parent.end > parent.begin:
            begin = rng.randrange(parent.begin, parent.end + 1)
            end = rng.choice([parent.end, rng.randrange(begin, parent.end + 1), begin + rng.randrange(9000)])
        else:
            end = begin + rng.choice([-3, 0, rng.randrange(1, 3000)])
        spans.append(Span(begin, end, f"op{span_id}", span_id=span_id, parent_span_id=parent.span_id if parent else 0))
    return sorted(spans, key=lambda s: s.begin)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_random_async_spans_are_laid_out_properly_nested(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfetto_writer, "SLAB_SPANS", 64)
    spans = random_async_spans(seed, 1500)
    scenario = Scenario(PROCESS_ID, "exe", [PerfettoThread("s", 1, "t")], {"s": []}, spans)
    chunks = chunks_of(scenario, "async", batch_rows=100)
    assert all(chunks)
    trace = decode_and_check(b"".join(chunks))
    assert trace.all_slices() == expected_slices(s for s in spans if s.begin < s.end)
    # Nesting on a lane shows real parenthood only, and many spans do nest.
    span_of = {(s.name, s.begin, s.end): s for s in spans}
    nested = {inner: outer for inner, outer in trace.enclosing.items() if outer is not None}
    assert all(span_of[inner].parent_span_id == span_of[outer].span_id for inner, outer in nested.items())
    assert len(nested) > len(spans) / 10
    lanes = [d for d in trace.tracks.values() if d.name]
    assert 1 < len(lanes) < 200
    assert {d.name for d in lanes} == {"Async Operations"} | {f"Async lane {n}" for n in range(1, len(lanes))}


# --- edge cases and bad input -----------------------------------------------------------------------


def test_empty_span_sets_give_a_trace_of_descriptors_only() -> None:
    threads = [PerfettoThread("a", 1, "one"), PerfettoThread("b", 2, "two")]
    chunks = list(
        trace_chunks(
            PROCESS_ID,
            "exe",
            threads,
            lambda _: [pa.table({"begin": pa.array([], TIMESTAMP)})],
            lambda: iter(()),
            "both",
        )
    )
    assert len(chunks) == 3 and all(chunks)
    packets = Trace.FromString(b"".join(chunks)).packet
    assert [p.track_descriptor.WhichOneof("static_or_dynamic_name") for p in packets] == [None, None, None, "name"]
    assert [p.track_descriptor.thread.thread_name for p in packets[1:3]] == ["one", "two"]
    assert chunks == reference_chunks(Scenario(PROCESS_ID, "exe", threads, {"a": [], "b": []}, []))


def test_no_threads_and_thread_only_trace_is_just_the_process() -> None:
    chunks = list(trace_chunks(PROCESS_ID, "exe", [], lambda _: [], lambda: [], "thread"))
    assert chunks == reference_chunks(Scenario(PROCESS_ID, "exe", [], {}, []), "thread")
    assert len(chunks) == 1
    assert Trace.FromString(chunks[0]).packet[0].track_descriptor.process.process_name == "exe"


def test_span_sources_not_requested_are_never_called() -> None:
    def unexpected(*_: object) -> list:
        raise AssertionError("called")

    threads = [PerfettoThread("a", 1, "one")]
    assert len(list(trace_chunks(PROCESS_ID, "exe", threads, lambda _: [], unexpected, "thread"))) == 2
    assert len(list(trace_chunks(PROCESS_ID, "exe", threads, unexpected, lambda: [], "async"))) == 3


def test_zero_length_and_inverted_async_spans_are_skipped() -> None:
    spans = [
        Span(10, 20, "ok", span_id=1),
        Span(15, 15, "zero", span_id=2),
        Span(16, 12, "inverted", span_id=3),
        Span(30, 31, "ok2", span_id=4),
    ]
    scenario = Scenario(PROCESS_ID, "exe", [], {}, spans)
    for layout in AsyncLayout:
        trace = decode_and_check(b"".join(chunks_of(scenario, "async", layout)))
        assert trace.all_slices() == Counter([("ok", 10, 20), ("ok2", 30, 31)])
    assert chunks_of(scenario, "async", AsyncLayout.SINGLE_TRACK) == reference_chunks(scenario, "async")


def test_thread_spans_going_backwards_raise_after_the_spans_before_them() -> None:
    spans = [Span(100 * i, 100 * i + 50, f"s{i}") for i in range(25)]
    spans[23] = Span(150, 160, "late")
    thread = PerfettoThread("stream-1", 1, "t")
    produced = []
    with pytest.raises(ValueError) as error:
        produced.extend(
            trace_chunks(
                PROCESS_ID,
                "exe",
                [thread],
                lambda _: spans_table(spans).to_batches(max_chunksize=8),
                lambda: [],
                "thread",
            )
        )
    assert str(error.value) == "thread spans out of order for stream stream-1: begin 150 follows 2200"
    # As micromegas: the chunks flushed before the bad span were sent, the partial chunk is lost.
    prefix = Scenario(PROCESS_ID, "exe", [thread], {"stream-1": spans[:23]}, [])
    assert produced == reference_chunks(prefix, "thread")[:-1]
    assert len(produced) == 4  # process, thread, 2 x 10 spans


def test_async_spans_going_backwards_raise() -> None:
    spans = [Span(10, 20, "a", span_id=1), Span(5, 30, "b", span_id=2)]
    with pytest.raises(ValueError, match="async spans out of order: begin 5 follows 10"):
        chunks_of(Scenario(PROCESS_ID, "exe", [], {}, spans), "async")


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="span_types must be 'thread', 'async', or 'both', given: all"):
        list(trace_chunks(PROCESS_ID, "exe", [], lambda _: [], lambda: [], "all"))  # type: ignore[arg-type]
    thread = PerfettoThread("s", 1, "t")
    no_name = spans_table([Span(1, 2, "a")]).drop_columns(["name"])
    with pytest.raises(ValueError, match="lack column 'name'"):
        list(trace_chunks(PROCESS_ID, "exe", [thread], lambda _: no_name, lambda: [], "thread"))
    null_begin = spans_table([Span(1, 2, "a")]).set_column(2, "begin", pa.array([None], TIMESTAMP))
    with pytest.raises(ValueError, match="thread spans have null 'begin' values"):
        list(trace_chunks(PROCESS_ID, "exe", [thread], lambda _: null_begin, lambda: [], "thread"))
    no_ids = spans_table([Span(1, 2, "a")]).drop_columns(["span_id"])
    with pytest.raises(ValueError, match="async spans lack column 'span_id'"):
        list(trace_chunks(PROCESS_ID, "exe", [], lambda _: [], lambda: no_ids, "async"))
    null_ids = spans_table([Span(1, 2, "a")]).set_column(0, "span_id", pa.array([None], pa.int64()))
    with pytest.raises(ValueError, match="async spans have null 'span_id' values"):
        list(trace_chunks(PROCESS_ID, "exe", [], lambda _: [], lambda: null_ids, "async"))
    writer = PerfettoTraceWriter(PROCESS_ID)
    with pytest.raises(ValueError, match="no thread descriptor was written for stream s"):
        list(writer.thread_spans("s", []))
    with pytest.raises(ValueError, match="async track descriptor must be written before async spans"):
        list(writer.async_spans([]))
