"""A running `spanlake serve` holding micromegas's Rust fixtures, with an admin and a reader API key,
and the clients that talk to it (this module holds no tests)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as adbc
import pyarrow.flight as flight
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, post, running_server, wait_until
from micromegas.auth import StaticTokenAuthProvider
from micromegas.flightsql.client import FlightSQLClient

EXPECTED = json.loads((RUST_FIXTURES / "expected.json").read_text())
PROCESS_ID = EXPECTED["process"]["process_info"]["process_id"]
ADMIN_KEY = "admin-key-0123456789"
READER_KEY = "reader-key-0123456789"


@contextlib.contextmanager
def served_lakehouse(postgres: PostgresServer, tmp_path: Path, upload: bool = True) -> Iterator[SpanlakeServer]:
    """`spanlake serve` with auth on (keys `admin`, an admin, and `reader`) and, unless told not to,
    the fixtures uploaded and materialized in the global views."""
    keys = json.dumps([{"name": "admin", "key": ADMIN_KEY}, {"name": "reader", "key": READER_KEY}])
    # DEBUG: the audit lines, which the deny-list tests read, are not printed at the default level.
    extra_env = {"SPANLAKE_API_KEYS": keys, "SPANLAKE_ADMINS": "admin", "SPANLAKE_LOG_LEVEL": "DEBUG"}
    with running_server(postgres, tmp_path, extra_env=extra_env) as server:
        if not upload:
            yield server
            return
        for step in EXPECTED["upload_sequence"]:
            body = (RUST_FIXTURES / step["file"]).read_bytes()
            status, text = post(server.http_url + step["endpoint"], body, {"Authorization": f"Bearer {ADMIN_KEY}"})
            assert status == 200, (step, text)
        client = micromegas_client(server)
        wait_until(
            lambda: client.query("SELECT count(*) AS n FROM streams")["n"][0] == len(EXPECTED["streams"]),
            60,
            "the maintenance daemon to materialize the fixtures' streams",
        )
        yield server


def micromegas_client(server: SpanlakeServer, key: str = ADMIN_KEY) -> FlightSQLClient:
    return FlightSQLClient(server.flightsql_url, auth_provider=StaticTokenAuthProvider(key))


def adbc_connect(server: SpanlakeServer, key: str = ADMIN_KEY, **db_kwargs: str) -> Any:
    return adbc.connect(
        server.flightsql_url, db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {key}", **db_kwargs}
    )


def flight_options(key: str = ADMIN_KEY, **headers: str) -> flight.FlightCallOptions:
    pairs = [("authorization", f"Bearer {key}"), *headers.items()]
    return flight.FlightCallOptions(headers=[(k.encode(), v.encode()) for k, v in pairs])
