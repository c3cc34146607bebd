"""An in-process lake for lakehouse tests: a real PostgreSQL database, a local object store and the
HTTP ingestion API on a free port, all in this process, plus DataFusion sessions over it."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from datafusion import SessionContext
from harness import RUST_FIXTURES, PostgresServer, free_port, post

from spanlake.lakehouse.batch_update import materialize_range
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.session import make_session_context
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.timestamps import parse_rfc3339_ns
from spanlake.lakehouse.view_sets import MAINTAINED, VIEW_SETS
from spanlake.server.ingestion import start_ingestion

EXPECTED = json.loads((RUST_FIXTURES / "expected.json").read_text())
PROCESS_ID = EXPECTED["process"]["process_info"]["process_id"]


@dataclass
class LocalLake:
    lake: Lake
    http_url: str

    def session(self, query_range: tuple[int, int] | None = None) -> SessionContext:
        return make_session_context(self.lake, query_range)

    def sql(self, statement: str, query_range: tuple[int, int] | None = None) -> pa.Table:
        return self.session(query_range).sql(statement).to_arrow_table()

    def catalog(self, statement: str, *args: object) -> list[dict]:
        return [dict(r) for r in self.lake.loop.run(self.lake.pool.fetch(statement, *args))]

    def maintain(self) -> None:
        """What the maintenance daemon would have done by now: the global views of today and yesterday."""
        day = 86_400 * 1_000_000_000
        today = time.time_ns() // day * day
        for name in MAINTAINED:
            materialize_range(self.lake, VIEW_SETS[name], today - day, today + day, day)

    def upload(self, steps: list[dict] | None = None) -> None:
        for step in EXPECTED["upload_sequence"] if steps is None else steps:
            status, text = post(self.http_url + step["endpoint"], (RUST_FIXTURES / step["file"]).read_bytes())
            assert status == 200, (step, text)


@contextlib.contextmanager
def local_lake(
    postgres: PostgresServer, tmp_path: Path, database_url: str | None = None, **settings_given: Any
) -> Iterator[LocalLake]:
    """A lake on a new database (or on `database_url`, to reopen one) and the object store in `tmp_path`;
    `settings_given` are further settings (an `object_store_uri` given replaces that store)."""
    defaults = {"object_store_uri": (tmp_path / "lake").as_uri(), "data_dir": tmp_path}
    settings = Settings(database_url=database_url or postgres.new_database(), **(defaults | settings_given))
    with Lake.open(settings) as lake:
        port = free_port()
        runner = lake.loop.run(start_ingestion(lake, None, "127.0.0.1", port))
        try:
            yield LocalLake(lake, f"http://127.0.0.1:{port}")
        finally:
            lake.loop.run(runner.cleanup())


def cpu_streams() -> list[dict]:
    return [s for s in EXPECTED["streams"] if "cpu" in s["tags"]]


def stream_events(stream: dict) -> list[dict]:
    return [event for block in stream["blocks"] for event in block["events"]]


def process_start_ns() -> int:
    # PostgreSQL keeps the process start time to the microsecond; the views convert from that value.
    return EXPECTED["process"]["start_time_nanos_since_epoch"] // 1000 * 1000


def ticks_to_ns(ticks: int, frequency: int) -> int:
    """The reference conversion: f64 arithmetic, rounded half away from zero (Rust's f64::round)."""
    value = float(ticks - EXPECTED["process"]["start_ticks"]) * (1e9 / frequency)
    return process_start_ns() + int(math.copysign(math.floor(abs(value) + 0.5), value))


def latest_frequency() -> int:
    """The estimate micromegas makes from the latest block (tsc_frequency is 0 here), with the block end and
    process start times as PostgreSQL keeps them (µs)."""
    timing = EXPECTED["process"]["latest_timing"]
    end_ns = parse_rfc3339_ns(timing["end_time"]) // 1000 * 1000
    seconds = (end_ns - process_start_ns()) / 1e9
    return math.floor(timing["end_ticks"] / seconds + 0.5)
