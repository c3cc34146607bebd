"""One trace across two SDK processes through a running server: an httpx caller → an aiohttp service
that hands the request to an executor thread and to a queue consumer task, with no manual context
passing but the queue message's. Asserted on `view_instance('span_traces', pid)` of both processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import micromegas
import pandas as pd
import pytest
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, running_server

PROGRAMS = PROJECT_ROOT / "tests" / "trace_programs.py"


@pytest.fixture(scope="module")
def traced(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SpanlakeServer, dict, dict]]:
    """A server, and what the service and the caller printed once the caller's request was served."""
    with running_server(postgres, tmp_path_factory.mktemp("two_processes")) as server:
        service = subprocess.Popen(
            [sys.executable, str(PROGRAMS), "service", server.http_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
        )
        try:
            assert service.stdout is not None
            service_info = json.loads(service.stdout.readline())
            called = subprocess.run(
                [sys.executable, str(PROGRAMS), "caller", server.http_url, str(service_info["port"])],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=PROJECT_ROOT,
            )
            assert called.returncode == 0, called.stderr
            service.communicate("", timeout=60)  # closing stdin stops the service, which flushes
            assert service.returncode == 0
        finally:
            if service.poll() is None:
                service.kill()
        yield server, service_info, json.loads(called.stdout)


def spans(server: SpanlakeServer, process_id: str) -> pd.DataFrame:
    client = micromegas.connect(server.flightsql_url)
    traces = client.query(f"SELECT * FROM view_instance('span_traces', '{process_id}')")
    events = client.query(
        f"SELECT span_id, parent_span_id, name FROM view_instance('async_events', '{process_id}')"
        " WHERE event_type = 'begin'"
    )
    return traces.merge(events, on="span_id").set_index("name")


def test_one_trace_across_processes_and_hand_offs(traced: tuple[SpanlakeServer, dict, dict]) -> None:
    server, service_info, caller_info = traced
    caller = spans(server, caller_info["process_id"])
    service = spans(server, service_info["process_id"])
    trace_id = caller_info["trace_id"]
    assert set(caller["trace_id"]) == {trace_id} and set(service["trace_id"]) == {trace_id}

    client_span = caller.loc["GET 127.0.0.1/items/7"]
    assert client_span["kind"] == "client"
    assert client_span["parent_span_id"] == caller.loc["caller", "span_id"]
    assert json.loads(client_span["attributes"])["http.status_code"] == 200

    server_span = service.loc["GET /items/{id}"]
    assert server_span["kind"] == "server"
    assert server_span["parent_span_hex"] == client_span["span_hex"]  # the parent in the other process
    assert server_span["parent_span_id"] == 0  # a local root of the service's own tree
    assert json.loads(server_span["attributes"]) == {
        "http.method": "GET",
        "http.route": "/items/{id}",
        "http.status_code": 200,
    }

    executor_work = service.loc["executor_work"]
    assert executor_work["parent_span_id"] == server_span["span_id"]  # run_in_executor kept the context
    assert executor_work["stream_id"] != server_span["stream_id"]  # on the executor's thread

    consume = service.loc["consume"]
    assert consume["kind"] == "consumer"
    assert consume["parent_span_id"] == server_span["span_id"]
    assert consume["parent_span_hex"] == server_span["span_hex"]  # recorded as a hand-off
