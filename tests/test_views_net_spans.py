"""net_spans: a `net` stream laid out as Unreal's MicromegasTracing writes it (NetEvents.h,
NetMetadata.h: uint64 time, StaticStringRef names, uint32 bit sizes, StaticStringDependency strings),
turned into spans by micromegas's stack rules; directly and through a running server with the
micromegas client."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import cbor2
import micromegas
import numpy as np
import pyarrow as pa
import pytest
from harness import RUST_FIXTURES, PostgresServer, post, running_server
from transit_builder import NET_DEPENDENCY_TYPES, NET_OBJECT_TYPES, NetBlockWriter, compress, metadata

from spanlake.lakehouse.transit.decode import decode_block, stream_layout
from spanlake.views import net_spans
from spanlake.views.meta import BlockMeta, ProcessMeta, StreamMeta
from spanlake.views.time import converter_from_latest_timing
from spanlake.views.view import TransitBlock

TICKS_PER_SECOND = 1_000_000
START_TICKS = 1_000
START_NS = 1_790_000_000_000_000_000  # µs-aligned: PostgreSQL keeps the start time to the microsecond
DICT = pa.dictionary(pa.int32(), pa.utf8())
TS = pa.timestamp("ns", tz="+00:00")

# micromegas's net_spans_table_schema (net_spans_table.rs).
MICROMEGAS_SCHEMA = pa.schema(
    [
        pa.field("process_id", DICT, False),
        pa.field("stream_id", DICT, False),
        pa.field("span_id", pa.int64(), False),
        pa.field("parent_span_id", pa.int64(), False),
        pa.field("depth", pa.uint32(), False),
        pa.field("kind", DICT, False),
        pa.field("name", DICT, False),
        pa.field("connection_name", DICT, False),
        pa.field("is_outgoing", pa.bool_(), False),
        pa.field("begin_bits", pa.int64(), False),
        pa.field("end_bits", pa.int64(), False),
        pa.field("bit_size", pa.int64(), False),
        pa.field("begin_time", TS, False),
        pa.field("end_time", TS, False),
    ]
)

# (type, ticks after start, name, bits, outgoing) — two blocks of one chain, then what follows.
BLOCK_1 = [
    ("NetConnectionBeginEvent", 100, "client-1", 0, 1),
    ("NetObjectBeginEvent", 110, "Pawn", 0, 0),
    ("NetPropertyEvent", 120, "Location", 32, 0),
    ("NetPropertyEvent", 121, "Rotation", 16, 0),
    ("NetObjectEndEvent", 130, None, 80, 0),
    ("NetRPCBeginEvent", 140, "ServerMove", 0, 0),
]
BLOCK_2 = [
    ("NetPropertyEvent", 150, "Ack", 8, 0),
    ("NetRPCEndEvent", 160, None, 40, 0),
    ("NetObjectEndEvent", 165, None, 5, 0),  # the top is the connection: skipped
    ("NetConnectionEndEvent", 170, None, 200, 0),
    ("NetConnectionEndEvent", 180, None, 1, 0),  # nothing open: skipped
    ("NetPropertyEvent", 190, "Orphan", 4, 0),  # no connection: parent -1, ""
    ("NetConnectionBeginEvent", 200, "server-2", 0, 0),  # never closed: dropped
    ("NetObjectBeginEvent", 210, "Door", 0, 0),
]
# (span_id, parent, depth, kind, name, connection, outgoing, begin_bits, bit_size, begin, end) in emission order
EXPECTED = [
    (2, 1, 2, "property", "Location", "client-1", True, 0, 32, 120, 120),
    (3, 1, 2, "property", "Rotation", "client-1", True, 32, 16, 121, 121),
    (1, 0, 1, "object", "Pawn", "client-1", True, 0, 80, 110, 130),
    (6, 5, 2, "property", "Ack", "client-1", True, 0, 8, 150, 150),
    (5, 0, 1, "rpc", "ServerMove", "client-1", True, 80, 40, 140, 160),
    (0, -1, 0, "connection", "client-1", "client-1", True, 0, 200, 100, 170),
    (11, -1, 0, "property", "Orphan", "", False, 0, 4, 190, 190),
]


def ns(ticks_after_start: int) -> int:
    return START_NS + ticks_after_start * (1_000_000_000 // TICKS_PER_SECOND)


def blocks() -> list[tuple[NetBlockWriter, int, int, int]]:
    """(writer, object_offset, begin ticks, end ticks) with ticks relative to the process start."""
    result = []
    offset, begin = 0, 0
    for events, end in ((BLOCK_1, 145), (BLOCK_2, 220)):
        writer = NetBlockWriter()
        for type_name, ticks, name, bits, outgoing in events:
            writer.event(type_name, START_TICKS + ticks, name, bits, outgoing)
        result.append((writer, offset, begin, end))
        offset, begin = offset + writer.count, end
    return result


def expected_rows(process_id: str, stream_id: str) -> list[dict]:
    keys = ("span_id", "parent_span_id", "depth", "kind", "name", "connection_name", "is_outgoing", "begin_bits")
    rows = []
    for values in EXPECTED:
        row = dict(zip(keys, values[:8], strict=True))
        bit_size, begin, end = values[8:]
        row.update(bit_size=bit_size, end_bits=row["begin_bits"] + bit_size, begin_time=ns(begin), end_time=ns(end))
        rows.append({"process_id": process_id, "stream_id": stream_id, **row})
    return rows


def as_plain(table: pa.Table) -> list[dict]:
    times = {name: table.column(name).cast(pa.int64()).to_pylist() for name in ("begin_time", "end_time")}
    rows = table.to_pylist()
    for index, row in enumerate(rows):
        row.update({name: values[index] for name, values in times.items()})
    return rows


def test_schema_is_micromegas_schema() -> None:
    assert net_spans.SCHEMA == MICROMEGAS_SCHEMA
    assert [f.nullable for f in net_spans.SCHEMA] == [f.nullable for f in MICROMEGAS_SCHEMA]


def test_spans_from_decoded_blocks() -> None:
    process_id, stream_id = str(uuid.uuid4()), str(uuid.uuid4())
    process = ProcessMeta(process_id, "game", "u", "pc", START_NS, START_TICKS, TICKS_PER_SECOND)
    stream = StreamMeta(stream_id, process_id, ("net",))
    layout = stream_layout(metadata(NET_DEPENDENCY_TYPES), metadata(NET_OBJECT_TYPES))
    latest = converter_from_latest_timing(process, 220, ns(220))
    transit = []
    for writer, offset, begin, end in blocks():
        meta = BlockMeta(
            str(uuid.uuid4()), stream_id, process_id, ns(begin), begin, ns(end), end, writer.count, offset, 0
        )
        transit.append(TransitBlock(decode_block(writer.payload(), layout), meta, stream, process, latest))
    # Given out of order: the view sorts a stream's blocks by their ticks.
    (batch,) = net_spans.VIEW.rows_from_transit(reversed(transit))
    assert batch.schema == MICROMEGAS_SCHEMA
    assert as_plain(pa.Table.from_batches([batch])) == expected_rows(process_id, stream_id)


def test_a_gap_between_blocks_starts_a_new_tree() -> None:
    process_id, stream_id = str(uuid.uuid4()), str(uuid.uuid4())
    process = ProcessMeta(process_id, "game", "u", "pc", START_NS, START_TICKS, TICKS_PER_SECOND)
    stream = StreamMeta(stream_id, process_id, ("net",))
    layout = stream_layout(metadata(NET_DEPENDENCY_TYPES), metadata(NET_OBJECT_TYPES))
    latest = converter_from_latest_timing(process, 400, ns(400))
    transit = []
    for offset, begin, end, events in (
        (0, 0, 100, [("NetConnectionBeginEvent", 10, "c", 0, 0)]),
        (
            1,
            200,
            300,
            [
                ("NetConnectionEndEvent", 250, None, 9, 0),  # not contiguous: nothing open here
                ("NetConnectionBeginEvent", 260, "d", 0, 1),
                ("NetConnectionEndEvent", 270, None, 7, 0),
            ],
        ),
    ):
        writer = NetBlockWriter()
        for type_name, ticks, name, bits, outgoing in events:
            writer.event(type_name, START_TICKS + ticks, name, bits, outgoing)
        meta = BlockMeta(
            str(uuid.uuid4()), stream_id, process_id, ns(begin), begin, ns(end), end, len(events), offset, 0
        )
        transit.append(TransitBlock(decode_block(writer.payload(), layout), meta, stream, process, latest))
    (batch,) = net_spans.VIEW.rows_from_transit(transit)
    # The first tree's connection never closes (dropped); the second tree has its own.
    assert as_plain(pa.Table.from_batches([batch])) == [
        {
            "process_id": process_id,
            "stream_id": stream_id,
            "span_id": 2,
            "parent_span_id": -1,
            "depth": 0,
            "kind": "connection",
            "name": "d",
            "connection_name": "d",
            "is_outgoing": True,
            "begin_bits": 0,
            "end_bits": 7,
            "bit_size": 7,
            "begin_time": ns(260),
            "end_time": ns(270),
        }
    ]


def _rfc3339(ns_since_epoch: int) -> str:
    seconds, nanos = divmod(ns_since_epoch, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}+00:00"


@pytest.fixture
def uploaded(postgres: PostgresServer, tmp_path) -> tuple[str, str, str]:
    """A running server that received a process with one net stream of two blocks."""
    process_id, stream_id = str(uuid.uuid4()), str(uuid.uuid4())
    process = cbor2.loads((RUST_FIXTURES / "process.cbor").read_bytes())
    process.update(
        process_id=process_id, tsc_frequency=TICKS_PER_SECOND, start_ticks=START_TICKS, start_time=_rfc3339(START_NS)
    )
    stream = {
        "process_id": process_id,
        "stream_id": stream_id,
        "dependencies_metadata": NET_DEPENDENCY_TYPES,
        "objects_metadata": NET_OBJECT_TYPES,
        "tags": ["net"],
        "properties": {},
    }
    with running_server(postgres, tmp_path) as server:
        assert post(server.http_url + "/ingestion/insert_process", cbor2.dumps(process))[0] == 200
        assert post(server.http_url + "/ingestion/insert_stream", cbor2.dumps(stream))[0] == 200
        for writer, offset, begin, end in blocks():
            block = {
                "block_id": str(uuid.uuid4()),
                "stream_id": stream_id,
                "process_id": process_id,
                "begin_time": _rfc3339(ns(begin)),
                "begin_ticks": begin,
                "end_time": _rfc3339(ns(end)),
                "end_ticks": end,
                "payload": {
                    "dependencies": compress(writer.dependencies.getvalue()),
                    "objects": compress(writer.objects.getvalue()),
                },
                "object_offset": offset,
                "nb_objects": writer.count,
            }
            status, text = post(server.http_url + "/ingestion/insert_block", cbor2.dumps(block))
            assert status == 200, text
        yield server.flightsql_url, process_id, stream_id


def test_net_spans_through_the_micromegas_client(uploaded: tuple[str, str, str]) -> None:
    uri, process_id, stream_id = uploaded
    client = micromegas.connect(uri, preserve_dictionary=True)
    table = client.query_arrow(f"SELECT * FROM view_instance('net_spans', '{process_id}')")
    assert table.schema == MICROMEGAS_SCHEMA
    assert sorted(as_plain(table), key=lambda r: r["end_time"]) == sorted(
        expected_rows(process_id, stream_id), key=lambda r: r["end_time"]
    )
    # The time range keeps the spans meeting it (begin_time <= end and end_time >= begin).
    windowed = micromegas.connect(uri).query(
        f"SELECT name FROM view_instance('net_spans', '{process_id}') ORDER BY name",
        datetime.fromtimestamp(ns(145) / 1e9, UTC),
        datetime.fromtimestamp(ns(155) / 1e9, UTC),
    )
    assert windowed["name"].tolist() == ["Ack", "ServerMove", "client-1"]
    with pytest.raises(Exception, match="net_spans has no global instance"):
        micromegas.connect(uri).query("SELECT * FROM view_instance('net_spans', 'global')")


def random_events(rng: np.random.Generator, n: int, well_formed: bool) -> net_spans._NetEvents:
    """A random chain: opens, leaves and ends; `well_formed`: every end closes the top span."""
    steps, kinds, stack = [], [], []
    for _ in range(n):
        choice = rng.integers(0, 3)
        if choice == 2 and (stack or not well_formed):
            kind = stack.pop() if well_formed else int(rng.choice([0, 1, 3]))
            if not well_formed and stack and stack[-1] == kind:
                stack.pop()
            steps.append(net_spans.END)
            kinds.append(kind)
        elif choice == 1:
            steps.append(net_spans.LEAF)
            kinds.append(net_spans.PROPERTY)
        else:
            kind = int(rng.choice([net_spans.CONNECTION, net_spans.OBJECT, net_spans.RPC]))
            stack.append(kind)
            steps.append(net_spans.BEGIN)
            kinds.append(kind)
    m = len(steps)
    return net_spans._NetEvents(
        np.array(steps, np.int64),
        np.array(kinds, np.int64),
        np.arange(m, dtype=np.int64) + 1000,
        np.arange(m, dtype=np.int64) * 10,
        rng.integers(0, 3, m),
        np.where(np.array(steps) == net_spans.BEGIN, 0, rng.integers(1, 100, m)),
        rng.random(m) < 0.5,
        ["", "a", "b"],
    )


@pytest.mark.parametrize("seed", range(40))
def test_vectorized_replay_equals_the_stepwise_replay(seed: int) -> None:
    rng = np.random.default_rng(seed)
    events = random_events(rng, int(rng.integers(1, 300)), well_formed=True)
    nested = net_spans.replay_nested(events)
    assert nested is not None
    assert nested.tolist() == [list(row) for row in net_spans.replay_stepwise(events)]


@pytest.mark.parametrize("seed", range(20))
def test_chains_with_skipped_ends_are_replayed_step_by_step(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    events = random_events(rng, int(rng.integers(20, 300)), well_formed=False)
    stepwise = np.array(net_spans.replay_stepwise(events), np.int64).reshape(-1, 6)
    assert net_spans.replay(events).tolist() == stepwise.tolist()
    if net_spans.replay_nested(events) is not None:  # no end happened to be skipped
        assert net_spans.replay_nested(events).tolist() == stepwise.tolist()
