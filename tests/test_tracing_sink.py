"""The HTTP sink against servers that are down, failing, refusing, slow or saturated: the instrumented
program always runs to completion, `shutdown` returns within its timeout, and every loss is counted.

The misbehaving servers are real HTTP servers on loopback ports that answer as each test tells them.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cbor2
import pytest
from harness import free_port, wait_until

from spanlake import tracing
from spanlake.lakehouse.transit.decode import decode_block, object_values, stream_layout
from spanlake.tracing.sink import INSERT_BLOCK, INSERT_PROCESS, INSERT_STREAM, HttpSink, Priority, SinkConfig

FAST_RETRIES = SinkConfig(backoff_base=0.001, backoff_max=0.005, retries=(3, 2, 2, 1))


@dataclass
class Received:
    path: str
    body: bytes
    authorization: str | None


@dataclass
class ScriptedServer:
    """Answers request n (0-based) with `respond(n, path)` → (status, seconds to wait before answering)."""

    respond: Callable[[int, str], tuple[int, float]]
    received: list[Received] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    number = len(scripted.received)
                    scripted.received.append(Received(self.path, body, self.headers.get("Authorization")))
                status, delay = scripted.respond(number, self.path)
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [r.path for r in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int, str], tuple[int, float]]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(respond: Callable[[int, str], tuple[int, float]]) -> ScriptedServer:
        servers.append(ScriptedServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@tracing.span_fn
def handle(i: int) -> int:
    tracing.info(f"handled {i}")
    tracing.imetric("handled", "count", i)
    return i


@tracing.span_fn
async def handle_async(i: int) -> int:
    await asyncio.sleep(0)
    return handle(i)


def instrumented_program() -> int:
    """A small program using every kind of event; returns its result, which must not depend on telemetry."""
    total = sum(handle(i) for i in range(50))

    async def main() -> int:
        return sum(await asyncio.gather(*(handle_async(i) for i in range(20))))

    total += asyncio.run(main())
    tracing.flush(timeout=0.2)  # does not wait longer than asked, whatever the server does
    return total


def run_against(url: str, config: SinkConfig, shutdown_timeout: float = 5.0) -> tuple[int, bool, HttpSink]:
    sink = HttpSink(url, config=config)
    tracing.init(sink=sink, flush_period=3600)
    try:
        result = instrumented_program()
    finally:
        delivered = tracing.shutdown(timeout=shutdown_timeout)
    return result, delivered, sink


EXPECTED_RESULT = sum(range(50)) + sum(range(20))


def test_server_down(serve: Callable) -> None:
    result, delivered, sink = run_against(f"http://127.0.0.1:{free_port()}", FAST_RETRIES)
    assert result == EXPECTED_RESULT
    assert not delivered
    stats = sink.stats()
    assert sum(stats.sent) == 0
    # process + 3 streams (metadata), then one log, one metrics and one cpu block: all counted as failed
    assert stats.failed == [4, 1, 1, 1]


def test_server_error_is_retried_then_given_up(serve: Callable) -> None:
    server = serve(lambda n, path: (500, 0))
    result, delivered, sink = run_against(server.url, FAST_RETRIES)
    assert result == EXPECTED_RESULT and not delivered
    stats = sink.stats()
    assert stats.failed == [4, 1, 1, 1] and sum(stats.sent) == 0
    # Each item was tried 1 + retries[priority] times.
    attempts = {path: server.paths().count(path) for path in set(server.paths())}
    assert attempts == {INSERT_PROCESS: 4, INSERT_STREAM: 3 * 4, INSERT_BLOCK: 3 + 3 + 2}


def test_transient_errors_are_retried_until_delivered(serve: Callable) -> None:
    server = serve(lambda n, path: (503 if n < 3 else 200, 0))
    result, delivered, sink = run_against(server.url, FAST_RETRIES)
    assert result == EXPECTED_RESULT and delivered
    stats = sink.stats()
    assert stats.sent == [4, 1, 1, 1] and stats.lost() == 0
    assert server.paths()[:4] == [INSERT_PROCESS] * 4  # the first one, retried three times
    blocks = [cbor2.loads(r.body) for r in server.received if r.path == INSERT_BLOCK]
    assert sum(b["nb_objects"] for b in blocks) == 70 + 70 + 2 * 70 + 2 * 20  # logs, metrics, span edges


def test_client_errors_are_final(serve: Callable) -> None:
    server = serve(lambda n, path: (400, 0))
    result, delivered, sink = run_against(server.url, FAST_RETRIES)
    assert result == EXPECTED_RESULT and not delivered
    stats = sink.stats()
    assert stats.rejected == [4, 1, 1, 1] and sum(stats.failed) == 0
    assert len(server.received) == 7  # no retry


def test_slow_server_is_abandoned_at_shutdown(serve: Callable) -> None:
    server = serve(lambda n, path: (200, 3.0))
    config = SinkConfig(request_timeout=0.2, backoff_base=0.001, retries=(1, 0, 0, 0))
    result, delivered, sink = run_against(server.url, config, shutdown_timeout=1.0)
    assert result == EXPECTED_RESULT and not delivered
    stats = sink.stats()
    assert sum(stats.sent) == 0
    assert stats.lost() == 7  # timed out, or still queued when the shutdown deadline passed


def test_backpressure_sheds_the_lowest_priority_first(serve: Callable) -> None:
    release = threading.Event()

    def respond(n: int, path: str) -> tuple[int, float]:
        if n == 0:
            release.wait(30)  # hold the sender: everything else stays queued
        return 200, 0

    server = serve(respond)
    sink = HttpSink(server.url, config=SinkConfig(max_queue_bytes=10_000))
    try:
        sink.submit(Priority.METADATA, INSERT_PROCESS, b"gate")
        wait_until(lambda: len(server.received) == 1, 10, "the first request")
        submitted = [sink.submit(Priority.TRACES, INSERT_BLOCK, b"t%d" % i + bytes(1998)) for i in range(6)]
        assert submitted == [True] * 5 + [False]  # the 6th does not fit and cannot evict its own priority
        assert sink.submit(Priority.LOGS, INSERT_BLOCK, b"l0" + bytes(1998))  # evicts t0
        assert sink.submit(Priority.LOGS, INSERT_BLOCK, b"l1" + bytes(1998))  # evicts t1
        assert sink.submit(Priority.METRICS, INSERT_BLOCK, b"m0" + bytes(1998))  # evicts t2
        assert sink.submit(Priority.METADATA, INSERT_STREAM, b"s0" + bytes(4998))  # metadata is never dropped
        assert not sink.submit(Priority.LOGS, INSERT_BLOCK, b"l2" + bytes(1998))  # evicting all below is not enough
        assert sink.stats().dropped == [0, 1, 0, 4]
    finally:
        release.set()
    assert sink.shutdown(10) is False  # something was dropped
    assert [r.body[:2] for r in server.received] == [b"ga", b"s0", b"l0", b"l1", b"m0", b"t3", b"t4"]
    assert sink.stats().sent == [2, 2, 1, 2]


def test_configuration_from_the_environment(serve: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(lambda n, path: (200, 0))
    monkeypatch.setenv("MICROMEGAS_TELEMETRY_URL", server.url)
    monkeypatch.setenv("MICROMEGAS_INGESTION_API_KEY", "secret-key")
    monkeypatch.setenv("MICROMEGAS_FLUSH_PERIOD", "0.05")
    tracing.init()
    try:
        tracing.info("flushed by the period")
        wait_until(lambda: INSERT_BLOCK in server.paths(), 10, "a periodic flush")
    finally:
        assert tracing.shutdown()
    assert {r.authorization for r in server.received} == {"Bearer secret-key"}


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="telemetry url must be http"):
        HttpSink("ftp://example.invalid")
    with pytest.raises(ValueError, match="telemetry url must be http"):
        tracing.init("not a url")


def test_losses_are_reported_as_metrics(serve: Callable) -> None:
    blocks_seen = []

    def respond(n: int, path: str) -> tuple[int, float]:
        if path == INSERT_BLOCK:
            blocks_seen.append(n)
            return (400 if len(blocks_seen) == 1 else 200), 0
        return 200, 0

    server = serve(respond)
    tracing.init(server.url, flush_period=0.05)
    try:
        tracing.info("this log block is refused")

        def reported() -> bool:
            return any(name == "telemetry_dropped_logs" and value == 1 for name, value in decoded_metrics(server))

        wait_until(reported, 10, "the telemetry_dropped_logs metric")
    finally:
        tracing.shutdown()


def decoded_metrics(server: ScriptedServer) -> list[tuple[str, int]]:
    infos = {
        info["stream_id"]: info
        for info in (cbor2.loads(r.body) for r in list(server.received) if r.path == INSERT_STREAM)
    }
    metrics = []
    for block in (cbor2.loads(r.body) for r in list(server.received) if r.path == INSERT_BLOCK):
        info = infos.get(block["stream_id"])
        if info is None or info["tags"] != ["metrics"]:
            continue
        layout = stream_layout(cbor2.dumps(info["dependencies_metadata"]), cbor2.dumps(info["objects_metadata"]))
        for event in object_values(decode_block(cbor2.dumps(block["payload"]), layout)):
            metrics.append((event["desc"]["name"], event["value"]))
    return metrics
