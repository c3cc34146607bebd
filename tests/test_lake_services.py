"""The lake owns its services: closing it finishes the queued settles and leaves no thread of its running."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from harness import PostgresServer
from lakehouse_support import EXPECTED, PROCESS_ID, local_lake

from spanlake.lakehouse.jit_layout import MERGE_FANIN
from spanlake.lakehouse.settle_queue import SettleQueue

ASYNC_COUNT = f"SELECT count(*) AS n FROM view_instance('async_events', '{PROCESS_ID}')"


def thread_kinds(threads: list[threading.Thread]) -> set[str]:
    """Thread names without their numbers: `lake-io_3` → `lake-io`."""
    return {thread.name.rsplit("_", 1)[0] for thread in threads}


def test_closing_the_lake_stops_every_thread_it_started(postgres: PostgresServer, tmp_path: Path) -> None:
    before = set(threading.enumerate())
    steps = EXPECTED["upload_sequence"]
    cpu = {s["stream_id"] for s in EXPECTED["streams"] if "cpu" in s["tags"]}
    with local_lake(postgres, tmp_path) as local:
        local.upload([s for s in steps if s["endpoint"] != "/ingestion/insert_block"])
        blocks = [s for s in steps if s["endpoint"] == "/ingestion/insert_block" and s["stream_id"] in cpu]
        for block in blocks[:MERGE_FANIN]:  # a one-block partition per query; the eighth queues a merge
            local.upload([block])
            local.sql(ASYNC_COUNT)
        local.lake.loop.run(asyncio.to_thread(local.lake.store.ping))  # as the readiness check does
        local.lake.io_pool.submit(local.lake.store.ping).result()  # as reads of many payloads do
        started = thread_kinds([t for t in threading.enumerate() if t not in before])
        settler = local.lake.settler
    # Payload readers, DataFusion calls of table functions, the settle worker, the loop and the
    # threads of its `asyncio.to_thread` calls (uvloop's default executor).
    assert {"lake-io", "datafusion-plan", "jit-settle", "spanlake-loop", "uvloop"} <= started, started
    assert [t.name for t in threading.enumerate() if t not in before] == []
    assert settler.pending() == frozenset()


def test_the_settle_queue_finishes_queued_work_at_close_and_refuses_more() -> None:
    before = set(threading.enumerate())
    queue = SettleQueue()
    release = threading.Event()
    ran: list[str] = []
    queue.submit("a", lambda: release.wait(10) and ran.append("a"))
    queue.submit("a", lambda: ran.append("a again"))  # "a" is pending: not queued twice
    queue.submit("b", lambda: ran.append("b"))
    assert queue.pending() == {"a", "b"}
    closing = threading.Thread(target=queue.close)
    closing.start()
    closing.join(0.2)
    assert closing.is_alive()  # close waits for the running and the queued work
    release.set()
    closing.join(10)
    assert not closing.is_alive() and ran == ["a", "b"] and queue.pending() == frozenset()
    queue.submit("c", lambda: ran.append("c"))
    assert ran == ["a", "b"] and queue.pending() == frozenset()
    assert [t.name for t in threading.enumerate() if t not in before] == []
