"""The web UI when things go wrong around it, against a running `spanlake serve` on the tests' PostgreSQL:
a Perfetto download cancelled in the page (the server stops generating the trace), and the catalog
database refusing connections (every page says so with a 503, then recovers)."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from harness import PostgresServer, SpanlakeServer, http, query, running_server, wait_until
from synthetic_process import SyntheticProcess
from transit_builder import ThreadBlockWriter
from web_support import RUST_PROCESS_ID, Browser, off_loop, upload_rust_fixture, watched_page

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.settings import Settings

UNAVAILABLE = "the catalog database or the object store is not answering; retry shortly"
SPANS_PER_BLOCK = 100_000
BLOCKS = 6  # 600k thread spans: a trace of 22 MB, several times what the sockets buffer
DOWNLOADED = re.compile(r"perfetto download of (\S+): (\d+) chunks \((\d+) bytes\)")
CANCELLED = re.compile(r"perfetto download of (\S+) cancelled by the client after (\d+) chunks \((\d+) bytes\)")
# In the page: Cancel is clicked as soon as a megabyte has arrived.
CANCEL_AFTER_A_MEGABYTE = """() => {
  const progress = document.getElementById("progress");
  new MutationObserver(() => {
    const received = /generating… ([0-9.]+) MB/.exec(progress.textContent);
    if (received && Number(received[1]) >= 1) document.getElementById("cancel").click();
  }).observe(progress, { childList: true, characterData: true, subtree: true });
}"""


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    debug = {"SPANLAKE_LOG_LEVEL": "DEBUG"}  # the trace generator's count of chunks
    with running_server(postgres, tmp_path_factory.mktemp("web-resilience"), extra_env=debug) as running:
        upload_rust_fixture(running.http_url)
        yield running


def store_large_process(server: SpanlakeServer) -> str:
    """A process whose one thread holds BLOCKS blocks of SPANS_PER_BLOCK consecutive spans, stored
    straight into the server's lake; returns its id."""
    lake = Lake.open(Settings(database_url=server.database_url, object_store_uri=server.object_store_uri))
    try:
        process = SyntheticProcess(lake, exe="large-trace")
        stream_id = process.stream({"thread-name": "main", "thread-id": "1"})
        for block in range(BLOCKS):  # one after the other, each a fresh block as the Rust producer sends them
            first = 1 + 3 * SPANS_PER_BLOCK * block
            writer = ThreadBlockWriter()
            desc = writer.span_desc("work::step")
            for i in range(SPANS_PER_BLOCK):
                writer.thread(True, desc, first + 3 * i)
                writer.thread(False, desc, first + 3 * i + 2)
            process.block(stream_id, writer, 2 * SPANS_PER_BLOCK, (first - 1, first + 3 * SPANS_PER_BLOCK))
        return str(process.process_id)
    finally:
        lake.close()


def download(url: str) -> int:
    with urllib.request.urlopen(url, timeout=120) as response:
        return len(response.read())


def generated_chunks(server: SpanlakeServer, process_id: str) -> int:
    """How many chunks of the process's trace the server has generated, by its debug log (cumulative
    per trace: the count of the latest one)."""
    counts = re.findall(rf"perfetto trace of {process_id}: (\d+) chunks generated", server.log_text())
    return int(counts[-1]) if counts else 0


def test_cancelling_a_download_stops_the_trace_generation(server: SpanlakeServer, chrome: Browser) -> None:
    pid = off_loop(store_large_process, server)
    url = f"{server.http_url}/api/perfetto/{pid}?spans=thread"
    size = off_loop(download, url)  # the whole trace (its spans materialized just in time)
    whole = DOWNLOADED.search(server.log_text())
    assert (whole[1], int(whole[3])) == (pid, size) and size > 20_000_000
    total_chunks = int(whole[2])
    assert generated_chunks(server, pid) == total_chunks
    with watched_page(chrome) as watched:
        page = watched.page
        page.goto(f"{server.http_url}/process/{pid}/perfetto")
        page.check("input[name=spans][value=thread]")
        page.evaluate(CANCEL_AFTER_A_MEGABYTE)
        page.click("#download")
        page.locator("#progress:text-is('cancelled')").wait_for(timeout=60_000)
        try:
            wait_until(lambda: CANCELLED.search(server.log_text()), 30, "the server to log the cancelled download")
        except TimeoutError as timeout:  # say what the server logged of this trace instead (seen once in CI)
            lines = [line for line in server.log_text().splitlines() if pid in line and "perfetto" in line]
            raise AssertionError("\n".join(lines[-10:])) from timeout
        cancelled = CANCELLED.search(server.log_text())
        assert cancelled[1] == pid and int(cancelled[3]) < size // 2, cancelled[0]
        time.sleep(1)  # time enough for a server that kept on to generate the rest (a tenth of that)
        stopped_at = generated_chunks(server, pid)
        # What the socket buffers held past what was sent, no more: far from the whole trace.
        assert stopped_at < total_chunks // 2, (stopped_at, total_chunks, cancelled[0])
        time.sleep(0.5)
        assert generated_chunks(server, pid) == stopped_at
        assert page.locator("#perfetto-error").is_hidden()


def set_database_open(postgres: PostgresServer, server: SpanlakeServer, is_open: bool) -> None:
    """Opens or closes the server's database: closed, it refuses new connections and its open ones
    are terminated (as a restarting or unreachable PostgreSQL)."""
    database = urllib.parse.urlsplit(server.database_url).path.lstrip("/")
    query(postgres.admin_url, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(is_open).lower()}')
    if not is_open:
        query(
            postgres.admin_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )


def test_pages_say_the_database_is_down_with_a_503_and_recover(
    postgres: PostgresServer, server: SpanlakeServer, chrome: Browser
) -> None:
    with watched_page(chrome) as watched:
        page = watched.page
        paths = ["/", f"/process/{RUST_PROCESS_ID}", f"/process/{RUST_PROCESS_ID}/logs"]
        for path in paths:  # the open loopback UI, no sign-in
            assert (page.goto(server.http_url + path).status, page.url) == (200, server.http_url + path)
        off_loop(set_database_open, postgres, server, False)
        try:
            watched.expect_error("the server responded with a status of 503")
            for path in paths:
                started = time.monotonic()
                response = page.goto(server.http_url + path)

                shown = (response.status, page.inner_text("#error"))
                assert shown == (503, UNAVAILABLE), (path, shown)
                assert time.monotonic() - started < 10, f"{path} took {time.monotonic() - started:.1f} s"
                assert page.title() == "Storage unavailable · spanlake"
                assert "Traceback" not in page.content()
            chrome.shot(page, "database-down")
            status, body = http("GET", f"{server.http_url}/api/process/{RUST_PROCESS_ID}/async-spans")
            assert (status, json.loads(body)) == (503, {"error": UNAVAILABLE})  # what the tree script shows
        finally:
            off_loop(set_database_open, postgres, server, True)

        def listed() -> bool:  # the pool reconnects, the global processes view catches up
            response = page.goto(server.http_url + "/")
            return response.status == 200 and RUST_PROCESS_ID in page.locator("#processes a.pid").all_inner_texts()

        wait_until(listed, 20, "the processes page to list the fixture again")
        response = page.goto(f"{server.http_url}/process/{RUST_PROCESS_ID}")
        assert response.status == 200 and int(page.inner_text(".count[data-count=log-entries]").replace(",", "")) > 0
        assert "Error handling request" not in server.log_text()  # aiohttp logs an unhandled exception so
