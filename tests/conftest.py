from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer, S3Server, SpanlakeServer, running_server
from web_support import Browser, WatchedPage, browser, watched_page

from spanlake import tracing


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    return PostgresServer()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh, empty database (no migrations applied yet)."""
    return postgres.new_database()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def spanlake_server(postgres: PostgresServer, tmp_path: Path) -> Iterator[SpanlakeServer]:
    """A running `spanlake serve` with its own database and local object store, auth off."""
    with running_server(postgres, tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Debian's chromium, one per test module (web_support: never a downloaded browser)."""
    with browser(tmp_path_factory.mktemp("screenshots")) as opened:
        yield opened


@pytest.fixture
def watched(chrome: Browser) -> Iterator[WatchedPage]:
    """A fresh page of `chrome` whose console errors and failed requests the test can read."""
    with watched_page(chrome) as page:
        yield page


@pytest.fixture
def sink() -> Iterator[tracing.MemorySink]:
    """The SDK initialised with an in-memory sink (no flush on its own), shut down after the test."""
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=3600)
    yield sink
    tracing.shutdown()
