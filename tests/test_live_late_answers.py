"""A live process's late queries through a running server (decoding ahead, tails built ahead and read in
memory, written tails kept): each late answer holds the block acknowledged just before it, a merge between
two late queries changes nothing of what the first answered, and once everything settles the quiescent
answer equals the last late one, row for row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import micromegas
import pandas as pd
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from live_process import LiveProcess

SPANS = 3
BLOCKS = 40
ASYNC_ROWS = "SELECT * FROM view_instance('async_events', '{process}') ORDER BY time, span_id, event_type"
# The thread's root span grows with the stream: the blocks' own spans only.
THREAD_ROWS = "SELECT * FROM view_instance('thread_spans', '{stream}') WHERE name LIKE 'b%' ORDER BY id"
PARTITIONS = (
    "SELECT view_set_name, begin_insert_time, num_rows FROM list_partitions()"
    " WHERE view_instance_id IN ('{process}', '{stream}')"
)


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("late")) as running:
        yield running


def answers(client: micromegas.flightsql.client.FlightSQLClient, live: LiveProcess) -> dict[str, pd.DataFrame]:
    """Both views' rows of the live process, in a fixed order."""
    return {
        "async_events": client.query(ASYNC_ROWS.format(process=live.process_id)).reset_index(drop=True),
        "thread_spans": client.query(THREAD_ROWS.format(stream=live.stream_id)).reset_index(drop=True),
    }


def of_blocks(frame: pd.DataFrame, blocks: int) -> pd.DataFrame:
    """The rows of blocks 0 to `blocks - 1` (each block's spans are named after it)."""
    names = {f"b{n}" for n in range(blocks)}
    return frame[frame.name.isin(names)].reset_index(drop=True)


def test_late_answers_hold_each_acknowledged_block_and_survive_merges_and_settling(server: SpanlakeServer) -> None:
    live = LiveProcess(server.http_url, spans_per_block=SPANS)
    live.announce()
    client = micromegas.connect(server.flightsql_url)
    partitions = PARTITIONS.format(process=live.process_id, stream=live.stream_id)
    previous, merged_between = None, 0  # queries whose partitions fewer after than before: merged
    for number in range(BLOCKS):
        before = client.query(partitions)
        live.post_block(number)  # acknowledged: the next query must hold it
        late = answers(client, live)
        assert set(late["async_events"].name) == {f"b{n}" for n in range(number + 1)}
        assert (late["async_events"].groupby("name").size() == 2 * SPANS).all()
        assert (late["thread_spans"].groupby("name").size() == SPANS).all()
        assert len(late["thread_spans"]) == (number + 1) * SPANS
        if previous is not None:
            # What the previous late query answered is unchanged, whatever was merged since.
            for view, rows in late.items():
                pd.testing.assert_frame_equal(of_blocks(rows, number), previous[view])
            merged_between += len(before) > len(client.query(partitions))
        previous = late
    assert merged_between > 0  # tails were merged while the late queries went on

    listings: list[list[tuple]] = []

    def settled() -> bool:
        client.query(ASYNC_ROWS.format(process=live.process_id))  # queues the merges the instances call for
        client.query(THREAD_ROWS.format(stream=live.stream_id))
        time.sleep(1)
        listings.append(sorted(client.query(partitions).itertuples(index=False)))
        return len(listings) > 1 and listings[-1] == listings[-2]  # no merge for a second

    wait_until(settled, 60, "the tail partitions to settle")
    quiescent = answers(client, live)
    for view, rows in quiescent.items():
        pd.testing.assert_frame_equal(rows, previous[view])
