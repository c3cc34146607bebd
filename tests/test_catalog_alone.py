"""A process alone on its catalog reads its warm instances without a catalog round trip, and still sees
every acknowledged write at once: its own (counted as they commit) and another process's (whose first
connection waits until this one is no longer alone)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer, wait_until
from lakehouse_support import EXPECTED, LocalLake, cpu_streams, local_lake
from test_warm_queries import LAST_LOG_BLOCK, LOG_BLOCKS, events_in, ingestion_server, log_rows, post_last_block

from spanlake.lakehouse.catalog.source_blocks import SourceBlockReads
from spanlake.lakehouse.catalog_changes import ALONE_RETRY_SECONDS

THREAD = cpu_streams()[0]["stream_id"]
THREAD_BLOCKS = [step for step in EXPECTED["upload_sequence"] if step.get("block_id") and step["stream_id"] == THREAD]
THREAD_SQL = f"SELECT count(*) AS n FROM view_instance('thread_spans', '{THREAD}')"


@pytest.fixture
def lake(postgres: PostgresServer, tmp_path: Path) -> Iterator[LocalLake]:
    """The fixtures but the last log block, in a lake of this process, queried warm and left alone."""
    with local_lake(postgres, tmp_path) as local:
        local.upload([step for step in EXPECTED["upload_sequence"] if step is not LAST_LOG_BLOCK])
        log_rows(local)  # materializes
        wait_until(lambda: not local.lake.settler.pending(), 30, "the settle queue to be idle")
        log_rows(local)  # the round trip after its own commits
        assert local.lake.catalog_changes.alone
        yield local


def test_warm_queries_of_a_process_alone_make_no_round_trip(lake: LocalLake) -> None:
    changes = lake.lake.catalog_changes
    round_trips = changes.round_trips
    assert [log_rows(lake) for _ in range(3)] == [events_in(LOG_BLOCKS[:-1])] * 3
    assert changes.round_trips == round_trips
    assert changes.alone


def test_its_own_acknowledged_block_is_seen_by_the_next_query(lake: LocalLake) -> None:
    changes = lake.lake.catalog_changes
    round_trips = changes.round_trips
    post_last_block(lake.http_url)  # to this lake's own ingestion
    assert log_rows(lake) == events_in(LOG_BLOCKS)
    assert changes.round_trips > round_trips  # its commit was counted before the block was acknowledged
    assert changes.alone


def test_another_lake_ends_it_before_its_first_statement_and_it_returns_after(
    lake: LocalLake, postgres: PostgresServer, tmp_path: Path
) -> None:
    changes = lake.lake.catalog_changes
    with local_lake(postgres, tmp_path, database_url=lake.lake.settings.database_url) as other:
        # Opening the other lake waited until this one gave its lock up: no longer alone already.
        assert not changes.alone
        round_trips = changes.round_trips
        post_last_block(other.http_url)
        assert log_rows(lake) == events_in(LOG_BLOCKS)
        assert changes.round_trips > round_trips
        log_rows(lake)
        assert not changes.alone  # the other lake's connections are still open
    # Once they closed (and its own tail written), a query a retry interval later finds the process alone again.
    wait_until(lambda: not lake.lake.settler.pending(), 30, "the settle queue to be idle")
    wait_until(lambda: log_rows(lake) > 0 and changes.alone, 5 + 4 * ALONE_RETRY_SECONDS, "the lake alone again")
    round_trips = changes.round_trips
    assert log_rows(lake) == events_in(LOG_BLOCKS)
    assert changes.round_trips == round_trips


def test_a_block_another_process_writes_is_seen_by_the_next_query(lake: LocalLake, tmp_path: Path) -> None:
    ingestion = ingestion_server(lake, tmp_path / "ingest")
    try:
        assert not lake.lake.catalog_changes.alone  # its connections announced themselves first
        post_last_block(ingestion.http_url)
        assert log_rows(lake) == events_in(LOG_BLOCKS)  # the very next query: no wait
    finally:
        ingestion.stop()


def test_a_stream_instance_is_reused_until_its_process_gets_a_block(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []  # the instances whose coverage the catalog is asked for
    check = SourceBlockReads.instance_coverage

    async def counted(self: SourceBlockReads, **kwargs: object) -> object:
        checked.append(kwargs["partitions_of"][1])
        return await check(self, **kwargs)

    monkeypatch.setattr(SourceBlockReads, "instance_coverage", counted)
    with local_lake(postgres, tmp_path) as local:
        local.upload([step for step in EXPECTED["upload_sequence"] if step is not THREAD_BLOCKS[-1]])
        spans = local.sql(THREAD_SQL).column("n")[0].as_py()
        wait_until(lambda: not local.lake.settler.pending(), 30, "the settle queue to be idle")
        local.sql(THREAD_SQL)
        asked = len(checked)
        assert [local.sql(THREAD_SQL).column("n")[0].as_py() for _ in range(3)] == [spans] * 3
        assert len(checked) == asked  # warm: reused, not checked
        local.upload([THREAD_BLOCKS[-1]])  # a block of the stream: announced as its process's
        after = local.sql(THREAD_SQL).column("n")[0].as_py()
        assert checked[asked:] == [THREAD]
        with local_lake(postgres, tmp_path, database_url=local.lake.settings.database_url) as cold:
            assert after == cold.sql(THREAD_SQL).column("n")[0].as_py() > spans  # what a new lake finds
