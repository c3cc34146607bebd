"""Ingestion worker processes, through running `spanlake serve` processes: the workers share the HTTP port
(each its own SO_REUSEPORT socket) and spread the connections, the web UI's connections reach the main
process, and so do the web UI's requests on a worker's kept-alive connection (with the client's address:
a key allowed from 127.0.0.1 only signs in); a key revoked on the web door is refused by every worker
within REVOKE_BOUND_S; a clean stop stops every worker; killed with SIGKILL while senders keep posting
(rows being committed in groups), every acknowledged block is stored, row and payload, and no row lacks
its payload. (The other test modules run the default: the ingestion API in the main process.)"""

from __future__ import annotations

import contextlib
import http.client as http_client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import cbor2
import lz4.frame
import psutil
import pytest
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, http, running_server, wait_until
from live_process import LiveProcess

WORKERS = 2
SENDERS = 8
SPANS_PER_BLOCK = 2
ADMIN_KEY = "slk_workers_test_admin"
# A key revoked on the web door is refused by every worker within this (PostgreSQL's notification).
REVOKE_BOUND_S = 1.0


def worker_processes(server: SpanlakeServer) -> list[psutil.Process]:
    """The server's ingestion worker processes."""
    assert server.process is not None
    workers = []
    for child in psutil.Process(server.process.pid).children():
        with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):  # exited, reaped or not
            if "spanlake.server.ingestion_worker" in child.cmdline():
                workers.append(child)
    return workers


def connections_on_port(process: psutil.Process, port: int, status: str) -> int:
    return sum(1 for c in process.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == status)


@pytest.fixture
def workers_server(postgres: PostgresServer, tmp_path: Path) -> Iterator[SpanlakeServer]:
    """A `spanlake serve` whose ingestion API is served by WORKERS worker processes."""
    with running_server(postgres, tmp_path, extra_env={"SPANLAKE_INGESTION_WORKERS": str(WORKERS)}) as server:
        # /health answers once one worker listens; the ready text, once every one does.
        wait_until(lambda: "spanlake ready" in server.log_text(), 60, "every worker to listen")
        yield server


@pytest.fixture(scope="module")
def keyed_server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    """Workers behind API keys: ADMIN_KEY configured (an admin), three wrong sign-ins per address a minute."""
    env = {"SPANLAKE_ADMINS": "tests", "SPANLAKE_LOGIN_FAILURES_PER_IP": "3"}
    env["SPANLAKE_INGESTION_WORKERS"] = str(WORKERS)
    tmp_path = tmp_path_factory.mktemp("keyed")
    with running_server(postgres, tmp_path, api_key=ADMIN_KEY, extra_env=env) as server:
        wait_until(lambda: "spanlake ready" in server.log_text(), 60, "every worker to listen")
        yield server


def request(
    connection: http_client.HTTPConnection, method: str, path: str, body: bytes | None = None, **headers: str
) -> http_client.HTTPResponse:
    """One request on a kept-alive connection, its answer read."""
    connection.request(method, path, body, headers)
    response = connection.getresponse()
    response.data = response.read()  # type: ignore[attr-defined]
    return response


def admin(server: SpanlakeServer, method: str, path: str, document: dict | None = None) -> dict:
    """An access API call with the admin key (a new connection: the web UI's, handed to the main process)."""
    body = json.dumps(document).encode() if document is not None else None
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
    status, answer = http(method, server.http_url + path, body, headers)
    assert status in (200, 201), answer
    return json.loads(answer)


def test_web_requests_on_a_workers_connection_are_answered_by_the_main_process(keyed_server: SpanlakeServer) -> None:
    server = keyed_server
    allowed = admin(server, "POST", "/api/analytics-api-keys", {"name": "near", "allowed_cidrs": ["127.0.0.1/32"]})
    elsewhere = admin(server, "POST", "/api/analytics-api-keys", {"name": "far", "allowed_cidrs": ["10.0.0.0/8"]})
    live = LiveProcess(server.http_url, SPANS_PER_BLOCK)
    ingest = {"Authorization": f"Bearer {ADMIN_KEY}"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    connection = http_client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        # The first request is the ingestion API's: the connection stays with the worker that took it.
        assert request(connection, "POST", "/ingestion/insert_block", block_body(live, 0), **ingest).status == 200
        page = request(connection, "GET", "/login")
        assert page.status == 200 and b"<form" in page.data  # a worker alone answers 404
        assert "spanlake_csrf=" in page.getheader("Set-Cookie", "")  # the site guard's answer, as it made it
        # The main process sees the client's address: a key allowed from 127.0.0.1 only signs in...
        signed_in = request(connection, "POST", "/login", _form(allowed["key"]), **form)
        assert (signed_in.status, signed_in.getheader("Location")) == (303, "/")
        cookie = signed_in.getheader("Set-Cookie", "").split(";")[0]
        home = request(connection, "GET", "/", Cookie=cookie)
        assert home.status == 200 and home.data.startswith(b"<!doctype html>")
        # ...one allowed from 10.0.0.0/8 only does not, and wrong keys from this address are throttled.
        assert request(connection, "POST", "/login", _form(elsewhere["key"]), **form).status == 401
        assert [request(connection, "POST", "/login", _form("slk_wrong"), **form).status for _ in range(3)] == [
            401,
            401,
            429,
        ]
        assert request(connection, "POST", "/ingestion/insert_block", block_body(live, 1), **ingest).status == 200
    finally:
        connection.close()
    assert len(server.block_rows(live.process_id)) == 2


def block_body(live: LiveProcess, number: int) -> bytes:
    """The CBOR body of the live process's block `number`."""
    return cbor2.dumps(live.block_message(number))


def _form(key: str) -> bytes:
    return urllib.parse.urlencode({"key": key, "next": "/"}).encode()


def test_a_key_revoked_on_the_web_door_is_refused_by_every_worker(keyed_server: SpanlakeServer) -> None:
    server = keyed_server
    minted = admin(server, "POST", "/api/ingestion-api-keys", {"name": "sender", "audience": "team"})
    bearer = {"Authorization": f"Bearer {minted['key']}"}
    live = LiveProcess(server.http_url, SPANS_PER_BLOCK)
    body = block_body(live, 0)
    # Kept-alive connections on both workers, each having used the key (every worker caches it valid).
    connections = [http_client.HTTPConnection("127.0.0.1", server.http_port, timeout=30) for _ in range(12)]
    try:
        assert {request(c, "POST", "/ingestion/insert_block", body, **bearer).status for c in connections} == {200}
        workers = worker_processes(server)
        established = [connections_on_port(w, server.http_port, psutil.CONN_ESTABLISHED) for w in workers]
        assert len(established) == WORKERS and min(established) > 0, established
        admin(server, "DELETE", f"/api/ingestion-api-keys/{minted['key_id']}")
        revoked_at = time.monotonic()
        for connection in connections:  # each connection stays with its worker
            while request(connection, "POST", "/ingestion/insert_block", body, **bearer).status != 401:
                assert time.monotonic() - revoked_at < REVOKE_BOUND_S, "a worker still takes the revoked key"
        print(f"every worker refused the revoked key {time.monotonic() - revoked_at:.3f} s after the revoke")
    finally:
        for connection in connections:
            connection.close()


def test_workers_share_the_port_serve_ingestion_and_stop_with_the_server(workers_server: SpanlakeServer) -> None:
    server = workers_server
    workers = worker_processes(server)
    assert len(workers) == WORKERS
    # Each worker listens on the HTTP port itself; the main process does not.
    assert [connections_on_port(w, server.http_port, psutil.CONN_LISTEN) for w in workers] == [1] * WORKERS
    assert connections_on_port(psutil.Process(server.process.pid), server.http_port, psutil.CONN_LISTEN) == 0

    live = LiveProcess(server.http_url, SPANS_PER_BLOCK)
    live.announce()
    # Twenty kept-alive connections, each with a block: the kernel spreads them over both workers.
    connections = [http_client.HTTPConnection("127.0.0.1", server.http_port, timeout=30) for _ in range(20)]
    try:
        for number, connection in enumerate(connections):
            connection.request("POST", "/ingestion/insert_block", block_body(live, number))
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"")
        established = [connections_on_port(w, server.http_port, psutil.CONN_ESTABLISHED) for w in workers]
        assert sum(established) == 20 and min(established) > 0, established
    finally:
        for connection in connections:
            connection.close()
    stored = server.block_rows(live.process_id)
    assert sorted(row["object_offset"] // (4 * SPANS_PER_BLOCK) for row in stored) == list(range(20))

    # The web UI's pages (a worker alone would answer 404), on new connections the workers hand over.
    for _ in range(6):
        status, body = http("GET", f"{server.http_url}/")
        assert status == 200 and body.startswith(b"<!doctype html>")
    assert http("GET", f"{server.http_url}/health") == (200, b"ok")

    # A worker that dies is replaced; the port keeps serving.
    workers[0].send_signal(signal.SIGKILL)
    wait_until(lambda: workers[0].pid not in {w.pid for w in worker_processes(server)}, 10, "the dead worker reaped")
    wait_until(lambda: len(worker_processes(server)) == WORKERS, 60, "a replacement worker")
    workers = worker_processes(server)
    wait_until(
        lambda: all(connections_on_port(w, server.http_port, psutil.CONN_LISTEN) == 1 for w in workers),
        60,
        "the replacement to listen",
    )
    live.post_block(20)
    assert len(server.block_rows(live.process_id)) == 21

    server.stop()
    assert server.process.returncode == 0, server.log_text()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_a_worker_receives_a_large_payload_into_its_file_on_the_lean_path(
    workers_server: SpanlakeServer, tmp_path: Path
) -> None:
    server = workers_server
    live = LiveProcess(server.http_url, SPANS_PER_BLOCK)
    live.announce()
    message = live.block_message(0)
    message["payload"]["objects"] = lz4.frame.compress(os.urandom(2 << 20))  # random bytes: checked, not decoded
    body = cbor2.dumps(message)
    head = f"POST /ingestion/insert_block HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    staged = lambda: list((tmp_path / "lake" / "blobs").glob("staged.*.tmp"))  # noqa: E731
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as conn:
        conn.sendall(head.encode() + body[: len(body) // 2])
        # Only the lean path receives a payload into a file of the store (aiohttp reads it into memory).
        wait_until(staged, 10, "the worker to receive the payload into a staged file")
        conn.sendall(body[len(body) // 2 :])
        assert conn.recv(4096).startswith(b"HTTP/1.1 200 OK")
    assert not staged()
    assert [payload for _, payload in server.stored_blocks(live.process_id)] == [cbor2.dumps(message["payload"])]


class Senders:
    """SENDERS threads posting new blocks of one live process until stopped, remembering those answered 200."""

    def __init__(self, server: SpanlakeServer) -> None:
        self.live = LiveProcess(server.http_url, SPANS_PER_BLOCK)
        self.live.announce()
        self.failed = 0
        self._stop = threading.Event()
        self._numbers = iter(range(10**9))
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send) for _ in range(SENDERS)]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _send(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                number = next(self._numbers)
            try:
                self.live.post_block(number)
            except (OSError, RuntimeError, http_client.HTTPException, urllib.error.URLError):
                with self._lock:
                    self.failed += 1


@pytest.mark.parametrize("killed", ["workers and main process", "main process"])
def test_sigkill_mid_group_loses_no_acknowledged_block(workers_server: SpanlakeServer, killed: str) -> None:
    server = workers_server
    workers = worker_processes(server)
    main = psutil.Process(server.process.pid)
    with Senders(server) as senders:
        wait_until(lambda: len(senders.live.acknowledged_now()) >= 200, 60, "200 blocks acknowledged")
        victims = [*workers, main] if killed == "workers and main process" else [main]
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        # Without their parent, the workers finish what they have and exit by themselves.
        wait_until(lambda: not any(_alive(w) for w in workers), 30, "the workers to exit")
    server.process.wait()
    server._log.close()

    acknowledged = senders.live.acknowledged_now()
    rows = server.block_rows(senders.live.process_id)
    stored = {row["object_offset"] // (4 * SPANS_PER_BLOCK) for row in rows}
    assert acknowledged <= stored, f"acknowledged blocks lost: {sorted(acknowledged - stored)[:10]}"
    for row in rows:  # no row without its payload
        assert server.read_object(f"blobs/{row['process_id']}/{row['stream_id']}/{row['block_id']}")
    print(f"{killed} killed: {len(acknowledged)} acknowledged, {len(rows)} stored, {senders.failed} posts failed")


def _alive(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


def test_a_port_taken_by_another_server_is_named(postgres: PostgresServer, tmp_path: Path) -> None:
    """The workers' SO_REUSEPORT sockets do not let another spanlake join their port."""
    with running_server(postgres, tmp_path / "first", extra_env={"SPANLAKE_INGESTION_WORKERS": "1"}) as first:
        wait_until(lambda: "spanlake ready" in first.log_text(), 60, "the worker to listen")
        second = SpanlakeServer(
            database_url=postgres.new_database(),
            data_dir=tmp_path / "second",
            object_store_uri=(tmp_path / "lake2").as_uri(),
            http_port=first.http_port,
            extra_env={"SPANLAKE_INGESTION_WORKERS": "1"},
        )
        result = subprocess.run(
            [sys.executable, "-m", "spanlake.server.cli", "serve"],
            env=second.env(),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert f"port {first.http_port} on 127.0.0.1 is already in use" in result.stderr
        assert len(worker_processes(first)) == 1
        assert http("GET", f"{first.http_url}/health") == (200, b"ok")
