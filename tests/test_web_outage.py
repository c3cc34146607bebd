"""The web UI when things go wrong under it, against a running `spanlake serve` on the tests' PostgreSQL:
the catalog database refusing connections (every page says so with a 503, then recovers)."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator

import pytest
from harness import PostgresServer, SpanlakeServer, query, running_server
from web_support import RUST_PROCESS_ID, Browser, browser, off_loop, upload_rust_fixture, watched_page

UNAVAILABLE = "the catalog database or the object store is not answering; retry shortly"


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("web-outage")) as running:
        upload_rust_fixture(running.http_url)
        yield running


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with browser(tmp_path_factory.mktemp("screenshots")) as opened:
        yield opened


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

                assert (response.status, page.inner_text("#error")) == (503, UNAVAILABLE), path
                assert time.monotonic() - started < 10, f"{path} took {time.monotonic() - started:.1f} s"
                assert page.title() == "Storage unavailable · spanlake"
                assert "Traceback" not in page.content()
            chrome.shot(page, "database-down")
        finally:
            off_loop(set_database_open, postgres, server, True)
        response = page.goto(server.http_url + "/")
        assert response.status == 200 and RUST_PROCESS_ID in page.locator("#processes a.pid").all_inner_texts()
        response = page.goto(f"{server.http_url}/process/{RUST_PROCESS_ID}")
        assert response.status == 200 and int(page.inner_text(".count[data-count=log-entries]").replace(",", "")) > 0
        assert "Error handling request" not in server.log_text()  # aiohttp logs an unhandled exception so
