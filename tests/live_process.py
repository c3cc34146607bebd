"""A synthetic live process posting numbered blocks to a running server's ingestion API.

Block n of its one cpu stream holds `spans_per_block` thread spans named `b{n}` (each closed within
the block) and as many named async spans `b{n}` (begin and end), so a query can count rows per block:
every block must show exactly `spans_per_block` of each, never fewer, never more.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field

import cbor2
import micromegas
from harness import post
from transit_builder import ThreadBlockWriter, compress, thread_stream_metadata

TICK_NS = 1  # tsc_frequency 1e9: one tick per nanosecond
BLOCK_TICKS = 1_000_000


def rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:09d}Z"


@dataclass
class LiveProcess:
    http_url: str
    spans_per_block: int = 5
    process_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    stream_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    start_ns: int = field(default_factory=lambda: time.time_ns() - 3_600_000_000_000 // 2)
    tsc_frequency: int = 1_000_000_000  # 0: unknown, estimated from the process's blocks
    acknowledged: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def announce(self) -> None:
        """Posts the process and its cpu stream."""
        process = {
            "process_id": self.process_id,
            "exe": "live-process",
            "username": "user",
            "realname": "user",
            "computer": "host",
            "distro": "linux",
            "cpu_brand": "cpu",
            "tsc_frequency": self.tsc_frequency,
            "start_time": rfc3339(self.start_ns),
            "start_ticks": 0,
            "parent_process_id": "",
            "properties": {},
        }
        dependencies, objects = thread_stream_metadata()
        stream = {
            "stream_id": self.stream_id,
            "process_id": self.process_id,
            "dependencies_metadata": cbor2.loads(dependencies),
            "objects_metadata": cbor2.loads(objects),
            "tags": ["cpu"],
            "properties": {"thread-name": "main", "thread-id": "1"},
        }
        self._post("/ingestion/insert_process", process)
        self._post("/ingestion/insert_stream", stream)

    def post_block(self, number: int) -> None:
        """Posts block `number` (its ticks follow from the number, so blocks may be posted in any order)."""
        self._post("/ingestion/insert_block", self.block_message(number))
        with self._lock:
            self.acknowledged.add(number)

    def block_message(self, number: int) -> dict:
        """Block `number` as the sink sends it (a new block id each time)."""
        writer = ThreadBlockWriter()
        desc = writer.span_desc(f"b{number}")
        location = writer.span_location()
        first_tick = number * BLOCK_TICKS
        step = BLOCK_TICKS // (4 * self.spans_per_block + 2)
        tick = first_tick + step
        for index in range(self.spans_per_block):
            span_id = number * 1000 + index + 1
            writer.thread(True, desc, tick)
            writer.async_named(True, location, f"b{number}", span_id, 0, tick, 0)
            writer.async_named(False, location, f"b{number}", span_id, 0, tick + step, 0)
            writer.thread(False, desc, tick + 2 * step)
            tick += 4 * step
        nb_objects = 4 * self.spans_per_block
        return self.events_message(number, writer, nb_objects, number * nb_objects)

    def post_events(self, number: int, writer: ThreadBlockWriter, nb_objects: int, object_offset: int) -> None:
        """Posts the events of `writer` as block `number`."""
        self._post("/ingestion/insert_block", self.events_message(number, writer, nb_objects, object_offset))
        with self._lock:
            self.acknowledged.add(number)

    def events_message(self, number: int, writer: ThreadBlockWriter, nb_objects: int, object_offset: int) -> dict:
        """The events of `writer` as block `number` (ticks [number, number + 1) × BLOCK_TICKS, a new block id)."""
        first_tick = number * BLOCK_TICKS
        dependencies, objects = compress(writer.dependencies.getvalue()), compress(writer.objects.getvalue())
        block = {
            "block_id": str(uuid.uuid4()),
            "stream_id": self.stream_id,
            "process_id": self.process_id,
            "begin_time": rfc3339(self.start_ns + first_tick * TICK_NS),
            "begin_ticks": first_tick,
            "end_time": rfc3339(self.start_ns + (first_tick + BLOCK_TICKS) * TICK_NS),
            "end_ticks": first_tick + BLOCK_TICKS,
            "payload": {"dependencies": dependencies, "objects": objects},
            "nb_objects": nb_objects,
            "object_offset": object_offset,
        }
        return block

    def acknowledged_now(self) -> set[int]:
        with self._lock:
            return set(self.acknowledged)

    def _post(self, path: str, message: dict) -> None:
        status, text = post(self.http_url + path, cbor2.dumps(message))
        if status != 200:
            raise RuntimeError(f"{path}: {status} {text!r}")


ASYNC_PER_BLOCK = "SELECT name, count(*) AS n FROM view_instance('async_events', '{process}') GROUP BY name"
THREAD_PER_BLOCK = "SELECT name, count(*) AS n FROM view_instance('thread_spans', '{stream}') GROUP BY name"


def per_block(client: micromegas.flightsql.client.FlightSQLClient, sql: str) -> dict[str, int]:
    """The rows of each block (`name` → `n`) a per-block count query answers."""
    frame = client.query(sql)
    return dict(zip(frame["name"], frame["n"], strict=True))


def check(counts: dict[str, int], acknowledged: set[int], spans: int, root_name: str | None) -> None:
    """Each block seen is whole and once; every block acknowledged before the query is there."""
    blocks = {name: n for name, n in counts.items() if name != root_name}
    wrong = {name: n for name, n in blocks.items() if n != spans}
    assert not wrong, f"blocks with missing or doubled rows: {wrong}"
    missing = {f"b{number}" for number in acknowledged} - set(blocks)
    assert not missing, f"acknowledged blocks missing from the query: {sorted(missing)[:10]}"


def post_while_querying(live: LiveProcess, flightsql_url: str, blocks: int, posters: int, queriers: int) -> int:
    """Posts blocks 0..`blocks` from `posters` threads while `queriers` clients count the instances' rows per
    block (async_events and thread_spans in turn), each answer `check`ed; the number of queries answered.
    The first failure of any thread is raised."""
    numbers = iter(range(blocks))
    numbers_lock = threading.Lock()
    posting_done = threading.Event()
    errors: list[BaseException] = []
    queries = itertools.count()

    def poster() -> None:
        while True:
            with numbers_lock:
                number = next(numbers, None)
            if number is None:
                return
            live.post_block(number)

    def querier(index: int) -> None:
        client = micromegas.connect(flightsql_url)
        while not posting_done.is_set() and not errors:
            acknowledged = live.acknowledged_now()
            if index % 2:
                counts = per_block(client, THREAD_PER_BLOCK.format(stream=live.stream_id))
                check(counts, acknowledged, live.spans_per_block, "main-1")
            else:
                # async_events: a begin and an end row per span
                counts = per_block(client, ASYNC_PER_BLOCK.format(process=live.process_id))
                check(counts, acknowledged, 2 * live.spans_per_block, None)
            next(queries)

    def guarded(target, *args) -> None:
        try:
            target(*args)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    posting = [threading.Thread(target=guarded, args=(poster,)) for _ in range(posters)]
    querying = [threading.Thread(target=guarded, args=(querier, i)) for i in range(queriers)]
    for thread in querying + posting:
        thread.start()
    for thread in posting:
        thread.join()
    posting_done.set()
    for thread in querying:
        thread.join()
    assert not errors, errors[0]
    return next(queries)
