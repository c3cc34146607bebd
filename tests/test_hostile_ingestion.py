"""Hostile input to the ingestion API of a running `spanlake serve`: each body is refused with its status
and reason (or accepted and then skipped, alone, at decoding), the server keeps serving, and every view
of the data stored before shows exactly what it showed (no view broken, no acknowledged row lost)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import lz4.frame
import micromegas
import pytest
from google.rpc import status_pb2
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, http, post, running_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from spanlake.lakehouse.catalog import ns_to_datetime
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.timestamps import parse_rfc3339_ns
from spanlake.lakehouse.view_sets import MAINTAINED

EXPECTED = json.loads((RUST_FIXTURES / "expected.json").read_text())
FIXTURE_PROCESS = EXPECTED["process"]["process_info"]["process_id"]
STREAMS = EXPECTED["streams"]
LOG_STREAM = next(s for s in STREAMS if s["tags"] == ["log"])
CPU_STREAM = next(s for s in STREAMS if s["tags"] == ["cpu"])
BODY_TIMEOUT_S = 2
GIB = 1024**3


def fixture_body(name: str) -> dict[str, Any]:
    return cbor2.loads((RUST_FIXTURES / name).read_bytes())


def stream_file(stream: dict) -> str:
    return next(step["file"] for step in EXPECTED["upload_sequence"] if step.get("stream_id") == stream["stream_id"])


@dataclass
class Process:
    """A copy of the fixture process under new ids: its process, stream and block bodies."""

    process_id: str
    streams: dict[str, str]  # fixture stream id → this process's stream id

    @staticmethod
    def new() -> Process:
        return Process(str(uuid.uuid4()), {s["stream_id"]: str(uuid.uuid4()) for s in STREAMS})

    def process_body(self, **changes: Any) -> dict[str, Any]:
        body = fixture_body("process.cbor")
        body.update(process_id=self.process_id)
        body.update(changes)
        return body

    def stream_body(self, stream: dict, **changes: Any) -> dict[str, Any]:
        body = fixture_body(stream_file(stream))
        body.update(stream_id=self.streams[stream["stream_id"]], process_id=self.process_id)
        body.update(changes)
        return body

    def block_body(self, stream: dict, index: int = 0, **changes: Any) -> dict[str, Any]:
        body = fixture_body(stream["blocks"][index]["files"]["insert_block_request"])
        body.update(block_id=str(uuid.uuid4()), stream_id=self.streams[stream["stream_id"]], process_id=self.process_id)
        body.update(changes)
        return body

    def upload(self, url: str) -> None:
        """The whole fixture, as this process."""
        assert post(f"{url}/ingestion/insert_process", cbor2.dumps(self.process_body()))[0] == 200
        for stream in STREAMS:
            assert post(f"{url}/ingestion/insert_stream", cbor2.dumps(self.stream_body(stream)))[0] == 200
            for index in range(len(stream["blocks"])):
                status, text = post(f"{url}/ingestion/insert_block", cbor2.dumps(self.block_body(stream, index)))
                assert status == 200, text


def with_objects(body: dict[str, Any], objects: bytes) -> dict[str, Any]:
    body["payload"] = {"dependencies": body["payload"]["dependencies"], "objects": objects}
    return body


def lz4_bomb(inflated: int) -> bytes:
    """An LZ4 frame of `inflated` zero bytes, built chunk by chunk (a few MB per GiB)."""
    chunk = bytes(16 * 1024 * 1024)
    with lz4.frame.LZ4FrameCompressor() as compressor:
        parts = [compressor.begin()]
        parts += [compressor.compress(chunk) for _ in range(inflated // len(chunk))]
        parts.append(compressor.flush())
    return b"".join(parts)


def lz4_declaring(declared: int) -> bytes:
    """A valid small LZ4 frame whose header declares `declared` content bytes."""
    frame = lz4.frame.compress(b"x" * 100, store_size=True, content_checksum=False)
    descriptor = frame[4:6] + declared.to_bytes(8, "little")
    return frame[:4] + descriptor + bytes([(xxh32(descriptor) >> 8) & 0xFF]) + frame[15:]


def xxh32(data: bytes) -> int:
    """XXH32 with seed 0 (for inputs under 16 bytes: all a frame header checksum needs)."""
    primes = (2654435761, 2246822519, 3266489917, 668265263, 374761393)
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    assert len(data) < 16
    h = (primes[4] + len(data)) & mask
    i = 0
    while i + 4 <= len(data):
        h = rotl((h + int.from_bytes(data[i : i + 4], "little") * primes[2]) & mask, 17) * primes[3] & mask
        i += 4
    for byte in data[i:]:
        h = rotl((h + byte * primes[4]) & mask, 11) * primes[0] & mask
    h ^= h >> 15
    h = h * primes[1] & mask
    h ^= h >> 13
    h = h * primes[2] & mask
    return h ^ (h >> 16)


def otlp_trace(service_name: str) -> bytes:
    start = time.time_ns()
    span = Span(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="s", start_time_unix_nano=start, end_time_unix_nano=start
    )
    resource = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    resource.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service_name)))
    return ExportTraceServiceRequest(resource_spans=[resource]).SerializeToString()


# --- the server, and what its views show ------------------------------------------------------------


@dataclass
class Lake:
    server: SpanlakeServer
    client: Any
    valid: Process  # a copy of the fixture, target of every refused body
    baseline: dict[str, int]  # what the views show of the fixture process and of `valid`

    def alive(self) -> bool:
        return http("GET", f"{self.server.http_url}/health")[0] == 200


def view_counts(client: Any, process: str, streams: dict[str, str]) -> dict[str, int]:
    """Row counts of every view over one process: its rows in the global views, its instances."""
    sql = {f"global {view}": f"SELECT count(*) AS n FROM {view} WHERE process_id = '{process}'" for view in MAINTAINED}
    for view in ("async_events", "log_entries", "measures"):
        sql[view] = f"SELECT count(*) AS n FROM view_instance('{view}', '{process}')"
    for stream in STREAMS:
        if stream["tags"] == ["cpu"]:
            sql[f"thread_spans {stream['stream_id']}"] = (
                f"SELECT count(*) AS n FROM view_instance('thread_spans', '{streams[stream['stream_id']]}')"
            )
    return {name: int(client.query(statement).n[0]) for name, statement in sql.items()}


def fixture_counts(lake: Lake) -> dict[str, int]:
    own = {s["stream_id"]: s["stream_id"] for s in STREAMS}
    fixture = {f"fixture {k}": v for k, v in view_counts(lake.client, FIXTURE_PROCESS, own).items()}
    valid = {f"valid {k}": v for k, v in view_counts(lake.client, lake.valid.process_id, lake.valid.streams).items()}
    return fixture | valid


# log_stats: the fixture's 148 log entries, counted per minute, level and target.
GLOBAL_COUNTS = {"blocks": 34, "processes": 1, "streams": 8, "log_entries": 148, "measures": 412, "log_stats": 11}


def global_counts(client: Any, process: str) -> dict[str, int]:
    """The process's rows in each global view (filled by the maintenance daemon, within seconds)."""
    sql = "SELECT count(*) AS n FROM {} WHERE process_id = '{}'"
    return {view: int(client.query(sql.format(view, process)).n[0]) for view in MAINTAINED}


def eventually(get: Callable[[], Any], expected: Any, what: str) -> None:
    """Waits for the maintenance daemon (seconds; the minute schedule's if a second tick ran late)."""
    deadline = time.monotonic() + 150
    while (got := get()) != expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waiting for {what}: {got} != {expected}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def lake(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    env = {"SPANLAKE_REQUEST_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    with running_server(postgres, tmp_path_factory.mktemp("hostile"), extra_env=env) as server:
        for step in EXPECTED["upload_sequence"]:
            assert post(server.http_url + step["endpoint"], (RUST_FIXTURES / step["file"]).read_bytes())[0] == 200
        valid = Process.new()
        valid.upload(server.http_url)
        client = micromegas.connect(server.flightsql_url)
        for process_id in (FIXTURE_PROCESS, valid.process_id):
            eventually(lambda p=process_id: global_counts(client, p), GLOBAL_COUNTS, "the uploads' global views")
        lake = Lake(server, client, valid, {})
        lake.baseline = fixture_counts(lake)
        yield lake


def test_baseline_shows_the_whole_fixture(lake: Lake) -> None:
    expected = {"global blocks": 34, "global processes": 1, "global streams": 8, "global log_entries": 148}
    expected |= {"global measures": 412, "log_entries": 148, "measures": 412}
    for who in ("fixture", "valid"):
        assert {k: lake.baseline[f"{who} {k}"] for k in expected} == expected
        assert lake.baseline[f"{who} async_events"] > 1000
        assert lake.baseline[f"{who} thread_spans {CPU_STREAM['stream_id']}"] > 100


# --- refused at ingestion ---------------------------------------------------------------------------

Body = Callable[[Process], bytes]


def block(stream: dict = LOG_STREAM, **changes: Any) -> Body:
    return lambda p: cbor2.dumps(p.block_body(stream, **changes))


def block_with_objects(objects: Callable[[], bytes]) -> Body:
    return lambda p: cbor2.dumps(with_objects(p.block_body(LOG_STREAM), objects()))


def process(**changes: Any) -> Body:
    return lambda p: cbor2.dumps(p.process_body(**changes))


def stream(**changes: Any) -> Body:
    return lambda p: cbor2.dumps(p.stream_body(LOG_STREAM, **changes))


def log_block_time(index: int, key: str) -> str:
    return LOG_STREAM["blocks"][index][key]


def objects_frame() -> bytes:
    return fixture_body(LOG_STREAM["blocks"][0]["files"]["insert_block_request"])["payload"]["objects"]


REFUSED: list[tuple[str, str, Body, int, str]] = [
    ("malformed CBOR", "insert_process", lambda p: b"\xff\xfe\xfd", 400, "malformed CBOR"),
    ("truncated CBOR", "insert_process", lambda p: cbor2.dumps(p.process_body())[:-7], 400, "malformed CBOR"),
    ("not a map", "insert_stream", lambda p: cbor2.dumps([1, 2, 3]), 400, "must be a CBOR map"),
    ("deep nesting", "insert_block", lambda p: b"\x81" * 200_000 + b"\x00", 400, "malformed CBOR"),
    ("4300-digit bignum", "insert_process", process(tsc_frequency=10**4300), 400, "an integer of 14285 bits"),
    ("10 MB id", "insert_process", process(process_id="9" * 10_000_000), 400, "is not a UUID"),
    ("bad UUID", "insert_block", block(stream_id="not-a-uuid"), 400, "'stream_id' is not a UUID"),
    ("year 9999", "insert_block", block(end_time="9999-12-31T00:00:00+00:00"), 400, "outside the representable range"),
    ("year 1000", "insert_block", block(begin_time="1000-01-01T00:00:00Z"), 400, "outside the representable range"),
    (
        "begin after end",
        "insert_block",
        block(begin_time=log_block_time(0, "end_time"), end_time=log_block_time(0, "begin_time")),
        400,
        "'begin_time' is after 'end_time'",
    ),
    (
        "ticks reversed",
        "insert_block",
        block(begin_ticks=10**9, end_ticks=5),
        400,
        "'begin_ticks' (1000000000) is after",
    ),
    (
        "times far from ticks",
        "insert_block",
        block(begin_time="2031-01-01T00:00:00Z", end_time="2031-01-01T00:00:01Z"),
        400,
        "away from what its ticks say",
    ),
    (
        "stream of another process",
        "insert_block",
        lambda p: cbor2.dumps(p.block_body(LOG_STREAM) | {"stream_id": LOG_STREAM["stream_id"]}),
        400,
        f"stream {LOG_STREAM['stream_id']} belongs to process {FIXTURE_PROCESS}",
    ),
    ("truncated LZ4", "insert_block", block_with_objects(lambda: objects_frame()[:-9]), 400, "truncated LZ4 frame"),
    (
        "corrupt LZ4",
        "insert_block",
        block_with_objects(lambda: b"\x04\x22\x4d\x18garbage"),
        400,
        "invalid or truncated",
    ),
    ("LZ4 declaring 2^40 bytes", "insert_block", block_with_objects(lambda: lz4_declaring(2**40)), 400, "LZ4 frame"),
    (
        "LZ4 inflating to 1 GiB",
        "insert_block",
        block_with_objects(lambda: lz4_bomb(GIB)),
        400,
        "inflates past 67108864",
    ),
    ("NUL in exe", "insert_process", process(exe="/bin/a\x00b"), 400, "'exe' contains a NUL character (at 6)"),
    ("NUL in a property", "insert_process", process(properties={"k": "v\x00"}), 400, "property 'k' contains a NUL"),
    ("NUL in a tag", "insert_stream", stream(tags=["log\x00"]), 400, "tag 'log\\x00' contains a NUL"),
    ("oversized body", "insert_block", lambda p: b"", 413, "Maximum request body size 104857600 exceeded"),
]


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "reason"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
def test_refused_with_its_status_and_reason(lake: Lake, endpoint: str, body: Body, status: int, reason: str) -> None:
    content = body(lake.valid)
    headers = {"Content-Length": str(200 * 1024 * 1024)} if status == 413 else None
    got, text = post_raw(f"{lake.server.http_url}/ingestion/{endpoint}", content, headers)
    assert got == status and reason in text.decode(errors="replace"), text[:300]
    assert len(text) < 2000  # the offending value is never echoed whole
    assert lake.alive()


def post_raw(url: str, body: bytes, headers: dict[str, str] | None) -> tuple[int, bytes]:
    """A POST, on a raw socket when the declared length is not the body's (urllib would refuse)."""
    if not headers:
        return post(url, body)
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        conn.sendall("\r\n".join(lines).encode() + body)
        answer = read_response(conn)
    head, _, text = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), text


def read_response(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n")[0].decode().lower()
    length = next((int(line.split(":")[1]) for line in head.splitlines() if line.startswith("content-length")), 0)
    while len(data.split(b"\r\n\r\n", 1)[1]) < length:
        data += conn.recv(65536)
    return data


def test_values_postgresql_cannot_store_are_refused_alike_by_otlp(lake: Lake) -> None:
    status, body = post(
        f"{lake.server.http_url}/ingestion/otlp/v1/traces",
        otlp_trace("svc\x00name"),
        {"Content-Type": "application/x-protobuf"},
    )
    assert status == 400
    message = status_pb2.Status.FromString(body).message
    assert "ProcessInfo: 'exe' contains a NUL character (at 3)" in message
    assert lake.alive()


def test_long_texts_are_stored_whole(lake: Lake) -> None:
    owner = Process.new()
    exe = "/ci/" + "deep/" * 80 + "tool"
    assert len(exe) > 255
    url = lake.server.http_url
    assert (
        post(f"{url}/ingestion/insert_process", cbor2.dumps(owner.process_body(exe=exe, distro="d" * 1000)))[0] == 200
    )
    row = lake.server.process_row(owner.process_id)
    assert row is not None and row["exe"] == exe and row["distro"] == "d" * 1000


def test_block_of_unknown_process_and_stream_is_accepted_and_kept(lake: Lake) -> None:
    stranger = Process.new()
    status, _ = post(f"{lake.server.http_url}/ingestion/insert_block", cbor2.dumps(stranger.block_body(LOG_STREAM)))
    assert status == 200
    assert len(lake.server.block_rows(stranger.process_id)) == 1


def test_slow_body_is_cut_off(lake: Lake) -> None:
    host, port = "127.0.0.1", lake.server.http_port
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=BODY_TIMEOUT_S + 20) as conn:
        conn.sendall(
            f"POST /ingestion/insert_process HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        conn.sendall(b"\xa1")  # then nothing more
        answer = read_response(conn)
        assert conn.recv(1) == b""  # and the connection is closed
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request body not received within 2 s" in answer
    assert time.monotonic() - started < BODY_TIMEOUT_S + 10
    assert lake.alive()


def test_slow_headers_are_cut_off(lake: Lake) -> None:
    head = f"POST /ingestion/insert_process HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {'x' * 100}".encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", lake.server.http_port), timeout=BODY_TIMEOUT_S + 20) as conn:
        closed = False
        for byte in head:  # one byte every 50 ms: 5 s for the whole head, never finished
            try:
                conn.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
        if not closed:
            assert conn.recv(1) == b""
    elapsed = time.monotonic() - started
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 2, elapsed
    assert lake.alive()


def test_server_memory_stays_bounded_under_a_bomb(lake: Lake) -> None:
    peak_before = peak_rss_mb(lake.server)
    url = lake.server.http_url
    bombed = Process.new()
    assert post(f"{url}/ingestion/insert_process", cbor2.dumps(bombed.process_body()))[0] == 200
    assert post(f"{url}/ingestion/insert_stream", cbor2.dumps(bombed.stream_body(LOG_STREAM)))[0] == 200
    bomb = with_objects(bombed.block_body(LOG_STREAM), lz4_bomb(GIB))
    assert len(cbor2.dumps(bomb)) < 8 * 1024 * 1024
    assert post(f"{url}/ingestion/insert_block", cbor2.dumps(bomb))[0] == 400
    # The same bomb stored by an older server: decoding bounds it too.
    payload = cbor2.loads((RUST_FIXTURES / LOG_STREAM["blocks"][0]["files"]["stored_payload_blob"]).read_bytes())
    store_directly(lake, bomb, cbor2.dumps(payload | {"objects": bomb["payload"]["objects"]}))
    logs = f"SELECT count(*) AS n FROM view_instance('log_entries', '{bombed.process_id}')"
    assert int(lake.client.query(logs).n[0]) == 0
    assert peak_rss_mb(lake.server) - peak_before < 150  # inflated, the bomb alone would be 1024 MB


def test_otlp_gzip_bomb_is_refused_by_its_ratio(lake: Lake) -> None:
    compressor = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    zeros = b"\x00" * (1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(1024)) + compressor.flush()  # 1 GiB inflated
    assert len(bomb) < 2 * 1024 * 1024
    peak_before = peak_rss_mb(lake.server)
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    status, body = post(f"{lake.server.http_url}/ingestion/otlp/v1/logs", bomb, headers)
    assert status == 400
    message = status_pb2.Status.FromString(body).message
    assert f"gzip body of {len(bomb)} bytes inflates past 100 times its size (SPANLAKE_MAX_INFLATION_RATIO)" in message
    assert peak_rss_mb(lake.server) - peak_before < 150  # inflated up to the 100x cap at most
    assert lake.alive()


def peak_rss_mb(server: SpanlakeServer) -> float:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


# --- accepted, then skipped at decoding -------------------------------------------------------------


def store_directly(lake: Lake, body: dict[str, Any], payload: bytes) -> None:
    """A block row and payload as an older spanlake (with no checks) would have stored them."""
    process_id, stream_id, block_id = (uuid.UUID(body[k]) for k in ("process_id", "stream_id", "block_id"))
    Path(lake.server.object_store_uri.removeprefix("file://"), blob_key(process_id, stream_id, block_id)).parent.mkdir(
        parents=True, exist_ok=True
    )
    Path(lake.server.object_store_uri.removeprefix("file://"), blob_key(process_id, stream_id, block_id)).write_bytes(
        payload
    )
    lake.server.sql(
        "INSERT INTO blocks VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,now())",
        block_id,
        stream_id,
        process_id,
        times(body["begin_time"]),
        body["begin_ticks"],
        times(body["end_time"]),
        body["end_ticks"],
        body["nb_objects"],
        body["object_offset"],
        len(payload),
    )


def times(text: str) -> Any:
    if text.startswith("9999"):  # beyond int64 nanoseconds: as a datetime directly
        return dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
    return ns_to_datetime(parse_rfc3339_ns(text))


def test_bad_blocks_accepted_or_stored_earlier_break_no_view(lake: Lake) -> None:
    url = lake.server.http_url
    hostile = Process.new()
    hostile.upload(url)  # a whole valid copy first: its views must end up as `valid`'s

    def send(body: dict[str, Any]) -> None:
        status, text = post(f"{url}/ingestion/insert_block", cbor2.dumps(body))
        assert status == 200, text

    # Content the stream's types cannot frame (a valid LZ4 frame of garbage).
    send(with_objects(hostile.block_body(LOG_STREAM), lz4.frame.compress(b"\xfe" + b"\x00" * 64)))
    # A copy of a thread block under another id: it overlaps the original.
    send(hostile.block_body(CPU_STREAM, 1))
    # A block naming a stream not known yet, which then turns out to be another process's.
    other = Process.new()
    send(hostile.block_body(LOG_STREAM) | {"stream_id": other.streams[LOG_STREAM["stream_id"]]})
    assert post(f"{url}/ingestion/insert_stream", cbor2.dumps(other.stream_body(LOG_STREAM)))[0] == 200
    # A block whose times contradict its ticks, sent before its process.
    late = Process.new()
    assert post(f"{url}/ingestion/insert_stream", cbor2.dumps(late.stream_body(LOG_STREAM)))[0] == 200
    send(late.block_body(LOG_STREAM, begin_time="2031-01-01T00:00:00Z", end_time="2031-01-01T00:00:01Z"))
    assert post(f"{url}/ingestion/insert_process", cbor2.dumps(late.process_body()))[0] == 200
    # Stored before the checks existed: bombs and a year-9999 block.
    payload = (RUST_FIXTURES / LOG_STREAM["blocks"][0]["files"]["stored_payload_blob"]).read_bytes()
    envelope = cbor2.loads(payload)
    for objects in (lz4_declaring(2**40), lz4_bomb(GIB // 4)):
        store_directly(lake, hostile.block_body(LOG_STREAM), cbor2.dumps(envelope | {"objects": objects}))
    store_directly(lake, hostile.block_body(LOG_STREAM, end_time="9999-01-01T00:00:00Z"), payload)
    # The blocks view lists stored blocks whose rows are sound, bad payload or not (garbage, overlapping
    # copy, two bombs): once it shows them, the daemon went past every bad block.
    wanted = GLOBAL_COUNTS | {"blocks": 34 + 4}
    eventually(lambda: global_counts(lake.client, hostile.process_id), wanted, "the bad blocks maintained")

    assert lake.alive()
    assert fixture_counts(lake) == lake.baseline
    valid = view_counts(lake.client, lake.valid.process_id, lake.valid.streams)
    got = view_counts(lake.client, hostile.process_id, hostile.streams)
    # The overlapping copy's async events are async events: kept.
    assert got.pop("global blocks") - valid.pop("global blocks") == 4
    assert got.pop("async_events") - valid.pop("async_events") == 61
    assert got == valid  # every other bad block skipped, every good one kept
    late_logs = f"SELECT count(*) AS n FROM view_instance('log_entries', '{late.process_id}')"
    assert int(lake.client.query(late_logs).n[0]) == 0
    assert "cannot be decoded, skipped" in lake.server.log_text()
    for view in MAINTAINED:  # each global view whole, bad rows left out
        assert int(lake.client.query(f"SELECT count(*) AS n FROM {view}").n[0]) > 0


# --- fuzz ---------------------------------------------------------------------------------------------

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**200)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def mutated(template: Callable[[], dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """A template body with some fields replaced by random values, removed, or the body as random bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        body = template()
        for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=3, unique=True)):
            if draw(st.booleans()):
                body[key] = draw(cbor_values)
            else:
                del body[key]
        return cbor2.dumps(body)

    return build() | st.binary(max_size=200)


@st.composite
def ingestion_request(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    fresh = Process.new()
    chosen = draw(st.sampled_from(STREAMS))
    bodies = {
        "insert_process": mutated(fresh.process_body),
        "insert_stream": mutated(lambda: fresh.stream_body(chosen)),
        "insert_block": mutated(lambda: fresh.block_body(chosen)),
    }
    endpoint = draw(st.sampled_from([*bodies, "otlp/v1/logs", "otlp/v1/traces", "otlp/v1/metrics"]))
    if endpoint.startswith("otlp"):
        content_type = draw(st.sampled_from(["application/x-protobuf", "application/json"]))
        body = draw(st.binary(max_size=200) | st.builds(otlp_trace, st.text(max_size=30)))
        return endpoint, body, {"Content-Type": content_type}
    return endpoint, draw(bodies[endpoint]), {}


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=ingestion_request())
def test_fuzzed_ingestion_never_fails_the_server(lake: Lake, request: tuple[str, bytes, dict[str, str]]) -> None:
    endpoint, body, headers = request
    status, text = post(f"{lake.server.http_url}/ingestion/{endpoint}", body, headers)
    assert status in (200, 400, 413, 415), (status, text[:300])
    assert lake.alive()
