"""Storing an ingested block: the payload first, then the row.

Both writes are idempotent on the client's ids (the payload is created only if absent, the row
inserted only if new), so a retried write stores things once, and no row ever points at a missing
payload. `BlockRowGroups` commits the rows of concurrent requests together, one multi-row insert per
group, and answers each request once the group holding its row is committed. Used by the ingestion API
(native and OTLP) and by self-tracing's sink; `BlockContexts` refuses a native block of another
audience's process, naming another process's stream or contradicting its process's clock.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import NamedTuple

import asyncpg

from spanlake.lakehouse.block_traces import NO_TRACES, BlockTraces
from spanlake.lakehouse.errors import IngestRejected
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.object_store import StagedObject
from spanlake.lakehouse.records import BlockRecord, blob_key, block_meta
from spanlake.lakehouse.timestamps import datetime_to_ns
from spanlake.lakehouse.view_rows import clock_problem
from spanlake.views.meta import ProcessMeta

log = logging.getLogger(__name__)

# Values PostgreSQL refuses for what they are (a text it cannot encode, a number out of range, a row
# too big): refused on every retry, so the client's error, never "retry later".
REFUSED_VALUES = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError)
# Groups committing at once: while one runs, the rows arriving meanwhile gather into the next one (one
# at a time: 8 senders of 4 KiB blocks made groups of 3.9 rows on average, against 2.7 with two in flight).
GROUPS_IN_FLIGHT = 1
GROUP_ROWS = 2000
# A payload to store: its bytes, or a local store's file already holding them.
Payload = bytes | memoryview | StagedObject
# Payloads up to this size are written to a local store on the loop thread (`write_payload`).
INLINE_WRITE_LIMIT = 64 * 1024


async def write_payload(
    lake: Lake, record: BlockRecord, payload: Payload, traces: BlockTraces | None = NO_TRACES
) -> None:
    """Stores `payload` at the block's blob key (create-only), a large one or one sent to S3 on a worker
    thread (the loop keeps serving the other requests meanwhile), a small local one on the loop (the
    thread hop costs more CPU than a small file's write), a staged one by a link on the loop, and indexes the
    block's `traces` before its row is inserted (so a stored block's traces are always in the index, or
    queued: None, traces not readable yet, queues the block for `lakehouse.trace_catch_up`)."""
    key = blob_key(record.process_id, record.stream_id, record.block_id)
    if isinstance(payload, StagedObject):
        payload.publish(key)
    elif len(payload) <= INLINE_WRITE_LIMIT and lake.store.scheme == "file":
        lake.store.put_if_absent(key, payload)
    else:
        await asyncio.to_thread(lake.store.put_if_absent, key, payload)
    if traces is None:
        await lake.catalog.queue_trace_indexing([record.block_id])
    elif traces.trace_ids:
        await lake.catalog.index_traces(record.process_id, traces)


async def store_block(lake: Lake, record: BlockRecord, payload: bytes, traces: BlockTraces | None = NO_TRACES) -> None:
    """Stores `payload` and indexes its traces (`write_payload`), then inserts the block's row on its own."""
    await write_payload(lake, record, payload, traces)
    await lake.catalog.insert_block(record)


class BlockRowGroups:
    """Block rows committed in groups: a row joins the next group, at most GROUPS_IN_FLIGHT groups commit
    at once (one multi-row insert each, started on the loop's turn after one may start), and `insert`
    returns once the row's own group is committed, so nothing acknowledged can be lost.

    A group the database refuses for one of its values is inserted again row by row, so only the request
    with the bad value is refused; any other failure (an outage) fails every request of the group."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._waiting: list[tuple[BlockRecord, asyncio.Future[None]]] = []
        self._committing: set[asyncio.Task[None]] = set()
        self._next_group_called = False

    async def insert(self, record: BlockRecord) -> None:
        """Returns once the block's row is committed (new, or already there); raises what its group raised."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((record, done))
        self._call_next_group()
        await done

    async def store(
        self, lake: Lake, record: BlockRecord, payload: Payload, traces: BlockTraces | None = NO_TRACES
    ) -> None:
        """Stores `payload` (create-only) and indexes its traces, then the block's row with the next group."""
        await write_payload(lake, record, payload, traces)
        await self.insert(record)

    def _call_next_group(self) -> None:
        if self._waiting and not self._next_group_called and len(self._committing) < GROUPS_IN_FLIGHT:
            self._next_group_called = True
            asyncio.get_running_loop().call_soon(self._start_group)

    def _start_group(self) -> None:
        self._next_group_called = False
        group, self._waiting = self._waiting[:GROUP_ROWS], self._waiting[GROUP_ROWS:]
        task = asyncio.get_running_loop().create_task(self._commit(group))
        self._committing.add(task)
        task.add_done_callback(self._group_done)

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._committing.discard(task)
        self._call_next_group()

    async def _commit(self, group: list[tuple[BlockRecord, asyncio.Future[None]]]) -> None:
        try:
            await self.lake.catalog.insert_blocks([record for record, _ in group])
        except REFUSED_VALUES as err:
            log.info("a group of %d block rows refused (%s): inserting them one by one", len(group), err)
            await self._commit_one_by_one(group)
        except Exception as err:
            _answer(group, err)
        else:
            _answer(group, None)

    async def _commit_one_by_one(self, group: list[tuple[BlockRecord, asyncio.Future[None]]]) -> None:
        for record, done in group:
            try:
                await self.lake.catalog.insert_block(record)
            except Exception as err:
                _answer([(record, done)], err)
            else:
                _answer([(record, done)], None)


def _answer(group: list[tuple[BlockRecord, asyncio.Future[None]]], error: Exception | None) -> None:
    """Wakes the requests of `group` (those still waiting: a client gone meanwhile cancelled its own)."""
    for _, done in group:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class BlockContexts:
    """What ingestion checks a block against: the audience of its process, the owner of its stream and
    its process's clock.

    All never change once in the catalog (the first insert wins), so known ones are cached (up to
    `capacity` pairs, then forgotten at once): a client's steady stream of blocks costs no query.
    Unknown ones are asked again with each block until they arrive."""

    def __init__(self, lake: Lake, capacity: int = 10_000) -> None:
        self.lake = lake
        self.capacity = capacity
        self._known: dict[tuple[uuid.UUID, uuid.UUID], _BlockContext] = {}

    async def check(self, record: BlockRecord, audience: str | None = None) -> ProcessMeta | None:
        """The block's process (its clock; None while unknown). `IngestRejected` when its process is
        known in another audience than the writer's `audience`, when the block names a known stream of
        another process (it would mix two processes' clocks in that stream's views) or, its process
        known, when its times contradict its ticks. (A block may arrive before its stream or process:
        then decoding checks it.)"""
        context = await self._context(record.stream_id, record.process_id)
        if context.process is not None and context.audience != audience:
            raise IngestRejected(f"process {record.process_id} belongs to another audience")
        if context.owner is not None and context.owner != record.process_id:
            raise IngestRejected(
                f"Block: stream {record.stream_id} belongs to process {context.owner}, not to {record.process_id}"
            )
        if context.process is not None:
            problem = clock_problem(context.process, block_meta(record))
            if problem is not None:
                raise IngestRejected(f"Block: {problem} (on the clock of process {record.process_id})")
        return context.process

    async def _context(self, stream_id: uuid.UUID, process_id: uuid.UUID) -> _BlockContext:
        known = self._known.get((stream_id, process_id))
        if known is not None:
            return known
        row = await self.lake.catalog.block_context(stream_id, process_id)
        process = None
        if row["start_time"] is not None:
            start_ns = datetime_to_ns(row["start_time"])
            process = ProcessMeta(str(process_id), "", "", "", start_ns, row["start_ticks"], row["tsc_frequency"])
        context = _BlockContext(row["owner"], process, row["audience"])
        if context.owner is not None and process is not None:
            if len(self._known) >= self.capacity:
                self._known.clear()
            self._known[(stream_id, process_id)] = context
        return context


class _BlockContext(NamedTuple):
    """A block's stream owner, process clock and process audience, as the catalog holds them (None: unknown)."""

    owner: uuid.UUID | None
    process: ProcessMeta | None
    audience: str | None
