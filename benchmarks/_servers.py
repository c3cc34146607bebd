"""Start a throwaway `spanlake serve` (embedded PostgreSQL in a temp dir) for benchmarks."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import PostgresServer, SpanlakeServer

ROOT = Path(__file__).resolve().parents[1]


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


@contextlib.contextmanager
def source_env(revision: str | None) -> Iterator[dict[str, str]]:
    """Environment that makes the server run the code of git `revision` (None: this checkout)."""
    if revision is None:
        yield {}
        return
    with tempfile.TemporaryDirectory(prefix="spanlake-baseline-") as tmp:
        package = Path(tmp) / "spanlake"
        package.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(package)], input=archive.stdout, check=True)
        yield {"PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
