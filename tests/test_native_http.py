"""The lean HTTP path of the native ingestion routes (`server.native_http`), on a real server in this
process (its connections are inspected) over a real PostgreSQL: pipelined requests, a body arriving in
many reads, stalled heads and bodies, refused bodies on a kept-alive connection, and the hand-over to
aiohttp of anything else, on a connection the lean path has already served."""

from __future__ import annotations

import glob
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import cbor2
import lz4.frame
import pytest
from harness import RUST_FIXTURES, PostgresServer, free_port, wait_until
from lakehouse_support import EXPECTED, PROCESS_ID

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.settings import Settings
from spanlake.server.ingestion import NATIVE_BODY_LIMIT, start_ingestion
from spanlake.server.native_http import (
    POOLED_BODY_BYTES,
    STAGED_BODY_BYTES,
    BodyBuffers,
    NativeHttpServer,
    parse_head,
)

BODY_TIMEOUT_S = 2
PATHS = frozenset(("/ingestion/insert_process", "/ingestion/insert_stream", "/ingestion/insert_block"))
STEPS = EXPECTED["upload_sequence"]
BLOCK_STEPS = [step for step in STEPS if step["endpoint"] == "/ingestion/insert_block"]


@dataclass
class Served:
    """The lake, its HTTP server and its port."""

    lake: Lake
    server: NativeHttpServer
    port: int

    def connect(self) -> socket.socket:
        """A new connection to the server."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=BODY_TIMEOUT_S + 20)

    def lean_connections(self) -> int:
        """Connections the lean path serves now (not handed to aiohttp)."""
        return len(self.server.routes.connections)

    def staged_files(self) -> list[str]:
        """The temporary files of payloads being received (or left behind by a request not served)."""
        return glob.glob(f"{self.lake.store.root}/blobs/staged.*.tmp")

    def stored(self, fields: dict, block_id: str) -> bytes | None:
        """The payload stored for a block of the fixture's process, None if there is none."""
        key = blob_key(PROCESS_ID, fields["stream_id"], block_id)
        return self.lake.store.get(key) if self.lake.store.exists(key) else None

    def block_ids(self) -> set[str]:
        """The ids of the blocks the catalog holds."""
        rows = self.lake.loop.run(self.lake.pool.fetch("SELECT block_id FROM blocks"))
        return {str(row["block_id"]) for row in rows}


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("native-http")
    settings = Settings(
        database_url=postgres.new_database(),
        object_store_uri=(tmp_path / "lake").as_uri(),
        data_dir=tmp_path,
        request_body_timeout_s=BODY_TIMEOUT_S,
    )
    with Lake.open(settings) as lake:
        port = free_port()
        server = lake.loop.run(start_ingestion(lake, None, "127.0.0.1", port))
        assert isinstance(server, NativeHttpServer)
        try:
            yield Served(lake, server, port)
        finally:
            lake.loop.run(server.cleanup())


def request(path: str, body: bytes, *headers: str) -> bytes:
    """A POST of `body` to `path` as a program sends it."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", *headers, "", ""]
    return "\r\n".join(lines).encode() + body


def fixture_request(step: dict) -> bytes:
    """The request of one step of the micromegas fixture's upload."""
    return request(step["endpoint"], (RUST_FIXTURES / step["file"]).read_bytes())


def fresh_block(**changes: object) -> tuple[str, dict, bytes]:
    """A block of the fixture's first block stream under a new id (with `changes`): its id, fields and body."""
    fields = cbor2.loads((RUST_FIXTURES / BLOCK_STEPS[0]["file"]).read_bytes()) | changes
    block_id = str(uuid.uuid4())
    return block_id, fields, request("/ingestion/insert_block", cbor2.dumps(fields | {"block_id": block_id}))


class Answers:
    """The answers read from one connection, in order."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.data = b""

    def next(self) -> tuple[int, bytes, bytes]:
        """The next answer's status, head and body."""
        while b"\r\n\r\n" not in self.data:
            self._receive()
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        while len(self.data) < length:
            self._receive()
        body, self.data = self.data[:length], self.data[length:]
        return int(head.split()[1]), head, body

    def closed(self) -> bool:
        """Whether the server closed the connection (nothing more comes)."""
        return not self.data and self.conn.recv(1) == b""

    def _receive(self) -> None:
        chunk = self.conn.recv(65536)
        assert chunk, f"connection closed after {self.data[:200]!r}"
        self.data += chunk


def test_pipelined_upload_is_answered_in_order_by_the_lean_path(served: Served) -> None:
    blocks = {step["block_id"] for step in BLOCK_STEPS}
    with served.connect() as conn:
        conn.sendall(b"".join(fixture_request(step) for step in STEPS))
        answers = Answers(conn)
        statuses = [answers.next()[0] for _ in STEPS]
        assert statuses == [200] * len(STEPS)
        assert served.lean_connections() == 1  # served here, never handed over
    assert blocks <= served.block_ids()
    wait_until(lambda: served.lean_connections() == 0, 10, "the closed connection to be forgotten")


def test_non_native_request_is_handed_to_aiohttp_on_a_kept_alive_connection(served: Served) -> None:
    process, stream = STEPS[0], STEPS[1]
    with served.connect() as conn:
        answers = Answers(conn)
        conn.sendall(fixture_request(process))
        assert answers.next()[0] == 200
        assert served.lean_connections() == 1
        # A health probe, then a native request, pipelined after it: both are aiohttp's now.
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + fixture_request(stream))
        status, _, text = answers.next()
        assert (status, text) == (200, b"ok")
        assert answers.next()[0] == 200
        assert served.lean_connections() == 0
        conn.sendall(request("/ingestion/otlp/v1/logs", b"", "Content-Type: application/json"))
        assert answers.next()[0] in (200, 400)  # OTLP's own answer to an empty export, whichever it is
    rows = served.lake.loop.run(served.lake.pool.fetch("SELECT stream_id FROM streams"))
    assert stream["stream_id"] in {str(row["stream_id"]) for row in rows}


def test_large_body_arriving_in_many_reads_is_stored_whole(served: Served) -> None:
    payload = {"dependencies": lz4.frame.compress(b""), "objects": lz4.frame.compress(os.urandom(3 << 20))}
    block_id, fields, message = fresh_block(payload=payload)
    with served.connect() as conn:
        conn.sendall(message[:300])  # the head and the body's start, then the rest in pieces
        for start in range(300, len(message), 256 * 1024):
            time.sleep(0.01)
            conn.sendall(message[start : start + 256 * 1024])
        status, _, text = Answers(conn).next()
        assert status == 200, text
    key = blob_key(PROCESS_ID, fields["stream_id"], block_id)
    assert served.lake.store.get(key) == cbor2.dumps(payload)


def test_large_bodies_in_reused_buffers_are_stored_each_whole(served: Served) -> None:
    # Large bodies of one connection, pipelined: each one is read into a kept buffer (the second, smaller,
    # into the first's), the refused one (a truncated frame) included; every stored payload is its own.
    sizes = (2 << 20, 1 << 20, 3 << 20)
    payloads = [{"dependencies": lz4.frame.compress(b""), "objects": lz4.frame.compress(os.urandom(n))} for n in sizes]
    blocks = [fresh_block(payload=payload) for payload in payloads]
    truncated = lz4.frame.compress(os.urandom(1 << 20))[:-1000]
    _, _, refused = fresh_block(payload={"dependencies": lz4.frame.compress(b""), "objects": truncated})
    with served.connect() as conn:
        conn.sendall(blocks[0][2] + blocks[1][2] + refused + blocks[2][2])
        answers = Answers(conn)
        statuses = [answers.next()[0] for _ in range(4)]
    assert statuses == [200, 200, 400, 200]
    for (block_id, fields, _), payload in zip(blocks, payloads, strict=True):
        assert served.lake.store.get(blob_key(PROCESS_ID, fields["stream_id"], block_id)) == cbor2.dumps(payload)


def large_payload(size: int = 2 << 20) -> dict[str, bytes]:
    """A payload whose objects buffer is a frame of `size` random bytes (a body spliced into a file)."""
    assert size >= STAGED_BODY_BYTES
    return {"dependencies": lz4.frame.compress(b""), "objects": lz4.frame.compress(os.urandom(size))}


def lz4_zeros(inflated: int) -> bytes:
    """An LZ4 frame of `inflated` zero bytes, compressed 1 MiB at a time."""
    compressor = lz4.frame.LZ4FrameCompressor()
    zeros = bytes(1 << 20)
    return compressor.begin() + b"".join(compressor.compress(zeros) for _ in range(inflated >> 20)) + compressor.flush()


def test_large_bodies_sent_at_once_on_many_connections_are_stored_each_whole(served: Served) -> None:
    payloads = [large_payload((2 << 20) + n) for n in range(4)]
    blocks = [fresh_block(payload=payload) for payload in payloads]
    connections = [served.connect() for _ in blocks]
    try:
        for start in range(0, max(len(message) for _, _, message in blocks), 128 * 1024):
            for conn, (_, _, message) in zip(connections, blocks, strict=True):
                conn.sendall(message[start : start + 128 * 1024])
        assert [Answers(conn).next()[0] for conn in connections] == [200] * len(blocks)
    finally:
        for conn in connections:
            conn.close()
    for (block_id, fields, _), payload in zip(blocks, payloads, strict=True):
        assert served.stored(fields, block_id) == cbor2.dumps(payload)
    assert served.staged_files() == []


def test_large_body_ending_early_stores_nothing_and_leaves_no_file(served: Served) -> None:
    block_id, fields, message = fresh_block(payload=large_payload())
    with served.connect() as conn:
        conn.sendall(message[: len(message) // 2])
        wait_until(lambda: served.staged_files(), 10, "the payload to be received into a file")
    wait_until(lambda: not served.staged_files(), 10, "the payload's file to be removed")
    assert served.stored(fields, block_id) is None
    assert block_id not in served.block_ids()


def test_large_body_stalled_in_its_payload_is_answered_408_and_leaves_no_file(served: Served) -> None:
    block_id, fields, message = fresh_block(payload=large_payload())
    with served.connect() as conn:
        conn.sendall(message[: len(message) // 2])
        answers = Answers(conn)
        assert answers.next()[0] == 408
        assert answers.closed()
    assert served.staged_files() == []
    assert served.stored(fields, block_id) is None


def test_payload_longer_than_its_declared_body_is_refused_and_stores_nothing(served: Served) -> None:
    block_id, fields, message = fresh_block(payload=large_payload())
    body = message[message.index(b"\r\n\r\n") + 4 :]
    with served.connect() as conn:
        # The body's length says 1000 bytes fewer than its payload holds; they follow it.
        conn.sendall(request("/ingestion/insert_block", body[:-1000]) + body[-1000:])
        status, _, text = Answers(conn).next()
    assert status == 400, text
    assert served.stored(fields, block_id) is None
    assert served.staged_files() == []


@pytest.mark.parametrize(
    ("objects", "reason"),
    [
        (lz4.frame.compress(os.urandom(2 << 20))[:-1000], b"invalid or truncated LZ4 frame"),
        (b"\0\0\0\0" + lz4.frame.compress(os.urandom(2 << 20))[4:], b"invalid or truncated LZ4 frame"),
        (lz4_zeros(512 << 20), b"inflates past"),
    ],
    ids=["truncated", "not a frame", "inflating past the limit"],
)
def test_refused_large_frame_is_answered_400_and_leaves_no_file(served: Served, objects: bytes, reason: bytes) -> None:
    assert len(objects) >= STAGED_BODY_BYTES
    block_id, fields, message = fresh_block(payload={"dependencies": lz4.frame.compress(b""), "objects": objects})
    with served.connect() as conn:
        answers = Answers(conn)
        conn.sendall(message)
        status, _, text = answers.next()
        assert status == 400 and reason in text, text
        kept_block_id, _, kept = fresh_block()  # the connection serves on
        conn.sendall(kept)
        assert answers.next()[0] == 200
    assert served.stored(fields, block_id) is None
    assert served.staged_files() == []
    assert {kept_block_id} & served.block_ids() and block_id not in served.block_ids()


def test_large_payload_not_as_the_sink_encodes_it_is_stored_encoded_again(served: Served) -> None:
    # A length head longer than needed (8 bytes for a 2 MiB buffer): located in the body's first bytes,
    # but not what cbor2 writes, so the payload is encoded again, as the whole-body path stores it.
    payload = large_payload()
    encoded = b"\xa2" + cbor2.dumps("dependencies") + cbor2.dumps(payload["dependencies"]) + cbor2.dumps("objects")
    encoded += b"\x5b" + len(payload["objects"]).to_bytes(8, "big") + payload["objects"]
    block_id, fields, _ = fresh_block()
    body = bytes([0xA0 | len(fields)])
    for key, value in (fields | {"block_id": block_id}).items():
        body += cbor2.dumps(key) + (encoded if key == "payload" else cbor2.dumps(value))
    with served.connect() as conn:
        conn.sendall(request("/ingestion/insert_block", body))
        status, _, text = Answers(conn).next()
    assert status == 200, text
    assert served.stored(fields, block_id) == cbor2.dumps(payload)
    assert served.staged_files() == []


def test_body_buffer_is_reused_only_once_no_view_of_it_is_held() -> None:
    buffers = BodyBuffers(kept_bytes=3 * POOLED_BODY_BYTES)
    first = buffers.take(2 * POOLED_BODY_BYTES)
    first_buffer = first.obj
    kept_view = first[10:20]
    buffers.give_back(first)
    assert buffers.free == []  # a view outlived the request: its buffer is never written into again
    second = buffers.take(2 * POOLED_BODY_BYTES)
    assert second.obj is not first_buffer
    second_buffer = second.obj
    buffers.give_back(second)
    smaller = buffers.take(POOLED_BODY_BYTES)
    assert smaller.obj is second_buffer and len(smaller) == POOLED_BODY_BYTES
    del kept_view
    buffers.give_back(smaller)
    buffers.give_back(buffers.take(3 * POOLED_BODY_BYTES))  # over the bound with the other: the smaller goes
    assert [len(buffer) for buffer in buffers.free] == [3 * POOLED_BODY_BYTES]
    assert isinstance(buffers.take(100), bytearray)  # a small body: a buffer of its own


def test_small_body_trickling_in_is_stored(served: Served) -> None:
    block_id, _, message = fresh_block()
    with served.connect() as conn:
        for start in range(0, len(message), 97):
            conn.sendall(message[start : start + 97])
            time.sleep(0.002)
        assert Answers(conn).next()[0] == 200
    assert block_id in served.block_ids()


def test_block_of_a_client_gone_before_its_answer_is_stored(served: Served) -> None:
    block_id, _, block = fresh_block()
    with served.connect() as conn:
        conn.sendall(block)
    wait_until(lambda: block_id in served.block_ids(), 10, "the block to be stored")


def test_refused_body_is_answered_400_and_the_connection_kept(served: Served) -> None:
    with served.connect() as conn:
        answers = Answers(conn)
        block_id, _, block = fresh_block()
        conn.sendall(request("/ingestion/insert_block", b"\xa1\x61") + block)
        status, head, text = answers.next()
        assert status == 400 and text.startswith(b"bad request: malformed CBOR"), text
        assert b"Content-Type: text/plain; charset=utf-8" in head and b"X-Frame-Options: DENY" in head
        assert answers.next()[0] == 200
        assert served.lean_connections() == 1
    assert block_id in served.block_ids()


def test_stalled_body_is_answered_408_and_closed(served: Served) -> None:
    started = time.monotonic()
    with served.connect() as conn:
        conn.sendall(request("/ingestion/insert_block", b"x" * 100_000)[:-95_000])  # then nothing more
        answers = Answers(conn)
        status, head, text = answers.next()
        assert (status, text) == (408, f"request body not received within {BODY_TIMEOUT_S} s".encode())
        assert b"Connection: close" in head
        assert answers.closed()
    assert BODY_TIMEOUT_S - 0.5 < time.monotonic() - started < BODY_TIMEOUT_S + 5


def test_idle_kept_alive_connection_is_closed_after_the_time_limit(served: Served) -> None:
    with served.connect() as conn:
        answers = Answers(conn)
        conn.sendall(fixture_request(STEPS[0]))
        assert answers.next()[0] == 200
        answered = time.monotonic()
        conn.sendall(b"POST /ingestion/insert_block HTTP/1.1\r\n")  # a head never finished
        assert answers.closed()
    assert BODY_TIMEOUT_S - 0.5 < time.monotonic() - answered < BODY_TIMEOUT_S + 5


def test_connection_close_is_honoured(served: Served) -> None:
    with served.connect() as conn:
        conn.sendall(
            request(STEPS[0]["endpoint"], (RUST_FIXTURES / STEPS[0]["file"]).read_bytes(), "Connection: close")
        )
        answers = Answers(conn)
        status, head, _ = answers.next()
        assert status == 200 and b"Connection: close" in head
        assert answers.closed()


@pytest.mark.parametrize(
    ("head", "handed_over"),
    [
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5", False),
        (b"GET /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5", True),
        (b"POST /ingestion/insert_block HTTP/1.0\r\nContent-Length: 5", True),
        (b"POST /ingestion/insert_block?x=1 HTTP/1.1\r\nContent-Length: 5", True),
        (b"POST /ingestion/otlp/v1/logs HTTP/1.1\r\nContent-Length: 5", True),
        (b"POST /ingestion/insert_block HTTP/1.1", True),  # no length (aiohttp reads none)
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: +5", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: %d" % (NATIVE_BODY_LIMIT + 1), True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\nConnection: Upgrade", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\nOrigin: http://evil.example", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\nSec-Fetch-Site: cross-site", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\nX-A: \xc3\xa9", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\r\n folded", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nContent-Length: 5\nX-A: b", True),
        (b"POST /ingestion/insert_block HTTP/1.1\r\nBad Name: 1\r\nContent-Length: 5", True),
    ],
)
def test_only_plain_native_heads_stay_on_the_lean_path(head: bytes, handed_over: bool) -> None:
    assert (parse_head(head, PATHS, NATIVE_BODY_LIMIT) is None) == handed_over


def test_native_head_is_read_as_aiohttp_reads_it() -> None:
    head = b"POST /ingestion/insert_stream HTTP/1.1\r\ncontent-length:  12 \r\nAuthorization: Bearer k\r\n"
    head += b"Connection: Close"
    parsed = parse_head(head, PATHS, NATIVE_BODY_LIMIT)
    assert parsed is not None
    assert (parsed.path, parsed.length, parsed.authorization, parsed.close) == (
        "/ingestion/insert_stream",
        12,
        "Bearer k",
        True,
    )
