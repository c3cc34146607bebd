"""Warm queries: a view instance nothing was written to since its last query is read without a catalog
round trip, and a block another process writes is seen by the very next query."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, post, wait_until
from lakehouse_support import EXPECTED, LocalLake, local_lake

from spanlake.lakehouse.catalog.source_blocks import SourceBlockReads
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query import session
from spanlake.views.view import View

PROCESS_ID = EXPECTED["process"]["process_info"]["process_id"]
LOG_STREAM = next(s for s in EXPECTED["streams"] if s["tags"] == ["log"])
LOG_BLOCKS = [
    step
    for step in EXPECTED["upload_sequence"]
    if step.get("block_id") and step["stream_id"] == LOG_STREAM["stream_id"]
]
LAST_LOG_BLOCK = LOG_BLOCKS[-1]
COUNT_SQL = f"SELECT count(*) AS n FROM view_instance('log_entries', '{PROCESS_ID}')"


@pytest.fixture(scope="module")
def lake(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLake]:
    """The fixtures but the last log block, in a lake of this process."""
    with local_lake(postgres, tmp_path_factory.mktemp("warm")) as local:
        local.upload([step for step in EXPECTED["upload_sequence"] if step is not LAST_LOG_BLOCK])
        yield local


@pytest.fixture
def coverage_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The instances whose coverage the catalog is asked for, as the queries ask."""
    asked: list[str] = []
    check = SourceBlockReads.instance_coverage

    async def counted(self: SourceBlockReads, **kwargs: object) -> object:
        asked.append(kwargs["partitions_of"][1])
        return await check(self, **kwargs)

    monkeypatch.setattr(SourceBlockReads, "instance_coverage", counted)
    return asked


def log_rows(lake: LocalLake) -> int:
    return lake.sql(COUNT_SQL).column("n")[0].as_py()


def events_in(blocks: list[dict]) -> int:
    ids = {step["block_id"] for step in blocks}
    return sum(len(block["events"]) for block in LOG_STREAM["blocks"] if block["block_id"] in ids)


def ingestion_server(lake: LocalLake, data_dir: Path) -> SpanlakeServer:
    """A separate `spanlake ingest` process on the lake's database and object store, started."""
    settings = lake.lake.settings
    return SpanlakeServer(
        database_url=settings.database_url,
        data_dir=data_dir,
        object_store_uri=settings.object_store_uri,
        command="ingest",
    ).start()


def post_last_block(http_url: str) -> None:
    """Sends the log stream's last block to an ingestion server."""
    status, text = post(http_url + LAST_LOG_BLOCK["endpoint"], (RUST_FIXTURES / LAST_LOG_BLOCK["file"]).read_bytes())
    assert status == 200, text


def test_a_warm_query_asks_the_catalog_nothing(lake: LocalLake, coverage_checks: list[str]) -> None:
    first = log_rows(lake)
    assert coverage_checks == [PROCESS_ID]  # checked, then materialized
    # Its partitions written, and settled: the writes of this process are announced too, so one more
    # query checks the instance; after it, nothing changes and no query asks.
    wait_until(lambda: not lake.lake.settler.pending(), 30, "the settle queue to be idle")
    assert log_rows(lake) == first
    checked = len(coverage_checks)
    assert [log_rows(lake) for _ in range(3)] == [first] * 3
    assert len(coverage_checks) == checked


def test_a_warm_query_reuses_its_files_scan(lake: LocalLake, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[list[str]] = []
    new_scan = session._new_scan

    def counted(local: Lake, view: View, keys: list[str]) -> object:
        built.append(keys)
        return new_scan(local, view, keys)

    monkeypatch.setattr(session, "_new_scan", counted)
    first = log_rows(lake)
    wait_until(lambda: not lake.lake.settler.pending(), 30, "the settle queue to be idle")
    assert log_rows(lake) == first
    scans = len(built)
    assert [log_rows(lake) for _ in range(3)] == [first] * 3
    assert len(built) == scans  # the same files: the scan built before, not one per query
    assert first == events_in(LOG_BLOCKS[:-1])


def test_a_block_another_process_writes_is_seen_at_once(
    lake: LocalLake, postgres: PostgresServer, tmp_path: Path, coverage_checks: list[str]
) -> None:
    before = log_rows(lake)
    assert before == events_in(LOG_BLOCKS[:-1])
    ingestion = ingestion_server(lake, tmp_path / "ingest")
    try:
        checks_before = len(coverage_checks)
        post_last_block(ingestion.http_url)
        assert log_rows(lake) == events_in(LOG_BLOCKS) > before  # the very next query: no wait
        assert len(coverage_checks) == checks_before + 1
    finally:
        ingestion.stop()
