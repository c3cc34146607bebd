"""Start a throwaway `spanlake serve` (embedded PostgreSQL in a temp dir) for benchmarks."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import PostgresServer, SpanlakeServer


@contextlib.contextmanager
def spanlake_server(**kwargs: object) -> Iterator[SpanlakeServer]:
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        postgres = PostgresServer()
        server = SpanlakeServer(
            database_url=postgres.new_database(),
            data_dir=Path(tmp) / "data",
            object_store_uri=(Path(tmp) / "lake").as_uri(),
            **kwargs,
        )
        server.start()
        try:
            yield server
        finally:
            server.stop()
