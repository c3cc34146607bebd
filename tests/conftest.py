from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer, S3Server, SpanlakeServer, running_server


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
