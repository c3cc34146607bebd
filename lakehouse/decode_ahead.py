"""Blocks of live processes decoded as they arrive, off the requests' path, so that a live process's late
query builds its tail's rows from blocks already decoded instead of reading and decoding them itself.

A query that reads a view instance's tail in memory (`jit.in_memory`) follows that view for the
instance's process (`follow`) for FOLLOW_SECONDS. Each block of a followed process that this process
ingests (`stored`, called once the block's row is committed) is queued for one worker thread, which
reads its row and payload and decodes it (what every view's rows are built from, and most of their
cost). A late query whose uncovered blocks were all decoded ahead takes their rows (`tail_rows`), waiting
for those still queued. A block ingested by another process (ingestion workers, another machine) or before
the follow began, or of a process without a TSC frequency (its rows follow the process's latest block), is
decoded by the query as before.

The worker also builds each followed view's rows of the blocks it decoded that no partition of the view
holds yet (`_Run`), right after decoding them, so that the late query finds its tail's rows ready instead
of building them (about 2 ms for 10 blocks, most of it fixed costs of the build), and their frame
(`rows_frames.py`: a query would hand it to another thread, about 1 ms on a busy machine). For a view
whose rows come from each block alone (`View.blockwise_formats`), it builds the rows of the blocks just
decoded, and the whole unwritten tail is those runs concatenated; for the others (a thread's call tree
spans blocks), it builds the rows of the whole unwritten tail again (up to READY_TAIL_OBJECTS objects).
A query takes a whole tail only when its tail is exactly those blocks; else it builds its rows itself, as
before. This costs the worker more CPU than the queries save (measured with `benchmarks/live_process.py`'s
20-span blocks: about 2.8 ms a block for both views, against 1.1 ms decoding it, and a query's 2 ms for 10
blocks every 10 blocks), but it is spent as the blocks arrive, not while a late query waits. (Two changes
were measured and dropped: taking each block 20 ms after it arrived, to leave the interpreter to a query
that began with it, was slower, as such a query usually holds that block and then waited for it; and
letting a query wait for its own view's rows only, not every view's, showed no gain.)

The rows of a tail a query read are also kept once its partition is written from them (`WrittenTails`),
until a merge replaces that partition: the next late queries read them from memory instead of its file, so
their scan of the instance's files stays the one they planned before (one more file per query otherwise:
a new scan to plan and a footer to read), while the tails of a live process settle.

Nothing here is a catalog fact: a query takes rows only for the blocks its coverage check found no
partition holding, and a block's rows are the same whenever it is decoded. What is held is bounded
(`decode_ahead_objects` objects, queued and decoded, the oldest decoded dropped first) and dropped
once each view it was decoded for has written it in a partition (`forget`, after a grace period for the
queries that checked the coverage before).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
from datafusion import DataFrame

from spanlake.lakehouse.catalog.partitions import Partition
from spanlake.lakehouse.query.rows_frames import plain_rows, rows_frame
from spanlake.lakehouse.records import BlockRecord
from spanlake.lakehouse.source_blocks import ProcessTiming
from spanlake.lakehouse.view_rows import decoded_transit
from spanlake.views.meta import TRANSIT_FORMAT, SourceBlock
from spanlake.views.view import TransitBlock, View

if TYPE_CHECKING:
    from spanlake.lakehouse.lake import Lake

log = logging.getLogger(__name__)

# A process is decoded ahead for a view this long after the view's last query of it read a tail.
FOLLOW_SECONDS = 60.0
# The longest a query waits for its blocks still queued for decoding, before decoding them itself.
PENDING_WAIT_SECONDS = 0.5
# Blocks forgotten (their partition written) stay this long for the queries that checked before the write.
FORGET_GRACE_SECONDS = 1.0
# The largest unwritten tail whose rows the worker builds again at each block, for a view that is not blockwise.
READY_TAIL_OBJECTS = 4096
# The whole tails kept per view instance, the newest last (a query may have checked before the newest block).
READY_WHOLE_RUNS = 2


@dataclass
class _Decoded:
    """One block decoded ahead (None: decoding skips it), the views it was decoded for that have not
    forgotten it yet, and those that have not written it (`unwritten`: a tail's rows are built of those)."""

    process_id: uuid.UUID
    stream_id: str
    objects: int
    views: set[str]
    unwritten: set[str]
    transit: TransitBlock | None


@dataclass(frozen=True)
class _Run:
    """A view's rows of consecutive blocks of one instance (insert order), built ahead by the worker."""

    instance: tuple[str, str]  # (view name, stream or process id)
    block_ids: tuple[str, ...]
    objects: int
    rows: list[pa.RecordBatch]
    frame: DataFrame | None  # the rows as a frame: the instance's whole unwritten tail; None: blocks just decoded

    @property
    def whole(self) -> bool:
        """Whether the run is its instance's whole unwritten tail (when it was built)."""
        return self.frame is not None


@dataclass(frozen=True)
class TailRows:
    """A view's rows of a tail of blocks, with their frame when the worker made it (`rows_frames.py`)."""

    rows: list[pa.RecordBatch]
    frame: DataFrame | None = None


def _instance_of(view: View, decoded: _Decoded) -> tuple[str, str]:
    """The view instance a block decoded ahead feeds: (view name, its stream or process id)."""
    instance = decoded.stream_id if view.instance_kind == "stream" else str(decoded.process_id)
    return view.name, instance


def _blockwise(view: View) -> bool:
    """Whether the view's rows of transit blocks come from each block alone (runs concatenate)."""
    return TRANSIT_FORMAT in view.blockwise_formats


class WrittenTails:
    """The rows partitions were written from in memory (a tail a query read), by view instance and file,
    within a bound (`decode_ahead_objects` objects, the instance used least recently dropped first)."""

    def __init__(self, budget: int) -> None:
        """Nothing kept; at most `budget` objects' rows once something is."""
        self._budget = budget
        self._lock = threading.Lock()
        # (view set, instance id) → file → (objects, rows); instances used least recently first
        self._kept: OrderedDict[tuple[str, str], dict[str, tuple[int, list[pa.RecordBatch]]]] = OrderedDict()
        self._frames: dict[tuple[str, str], tuple[frozenset[str], DataFrame]] = {}  # the kept rows of these files
        self._objects = 0

    def keep(
        self, partition: Partition, objects: int, rows: list[pa.RecordBatch], schema: pa.Schema | None = None
    ) -> None:
        """The partition's file was written from these rows (of `objects` source objects); with the view's
        `schema`, the instance's kept rows are also made one frame (off the queries' path: `frame_of`)."""
        if partition.file_path is None or objects > self._budget:
            return
        instance = (partition.view_set_name, partition.view_instance_id)
        rows = _one_batch(rows)
        with self._lock:
            files = self._kept.setdefault(instance, {})
            self._kept.move_to_end(instance)
            previous = files.get(partition.file_path)
            self._objects += objects - (0 if previous is None else previous[0])
            files[partition.file_path] = (objects, rows)
            while self._objects > self._budget:
                dropped_instance, dropped = self._kept.popitem(last=False)
                self._frames.pop(dropped_instance, None)
                self._objects -= sum(kept_objects for kept_objects, _ in dropped.values())
            kept = dict(self._kept.get(instance, {}))
        if schema is not None and kept:
            frame = rows_frame([batch for _, batches in kept.values() for batch in batches], schema)
            with self._lock:
                if self._kept.get(instance, {}).keys() == kept.keys():
                    self._frames[instance] = (frozenset(kept), frame)

    def frame_of(self, view: View, instance_id: str, files: Iterable[str]) -> DataFrame | None:
        """The frame of the rows kept of exactly these files (`rows_of`'s), if `keep` made it, else None."""
        found = self._frames.get((view.name, instance_id))
        return found[1] if found is not None and found[0] == frozenset(files) else None

    def rows_of(self, view: View, instance_id: str, partitions: Sequence[Partition]) -> dict[str, list[pa.RecordBatch]]:
        """The rows kept of these partitions (the instance's live ones, its others dropped), by file."""
        instance = (view.name, instance_id)
        if instance not in self._kept:  # the usual case, a dict lookup without the lock
            return {}
        live = {p.file_path for p in partitions if p.file_schema_hash == view.schema_hash}
        with self._lock:
            files = self._kept.get(instance, {})
            for file in [file for file in files if file not in live]:  # replaced by a merge, or retired
                self._objects -= files.pop(file)[0]
            if not files:
                self._kept.pop(instance, None)
                self._frames.pop(instance, None)
                return {}
            self._kept.move_to_end(instance)
            return {file: rows for file, (_, rows) in files.items()}

    def held_objects(self) -> int:
        """The objects whose rows are kept."""
        with self._lock:
            return self._objects


def _one_batch(rows: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """The rows as one batch without schema notes: each query reading them registers one batch instead of
    many (~5 µs a batch), and the copy is made once, where they are kept, not in every query."""
    if not rows:
        return rows
    return [pa.concat_batches([batch.replace_schema_metadata(None) for batch in rows])]


class DecodeAhead:
    """The followed views by process, the blocks queued for decoding and those decoded, for one lake."""

    def __init__(self, lake: Lake) -> None:
        """Nothing followed; decodes with `lake` (its catalog, store and settings) once something is."""
        self._lake = lake
        self._budget = lake.settings.decode_ahead_objects
        self._lock = threading.Condition()
        self._followed: dict[uuid.UUID, dict[str, tuple[View, float]]] = {}  # view name → (view, until)
        self._queued: list[BlockRecord] = []
        self._pending: set[str] = set()  # ids of the blocks queued or being decoded
        self._pending_objects = 0
        self._decoded: OrderedDict[str, _Decoded] = OrderedDict()  # by block id, oldest first
        self._decoded_objects = 0
        self._forgotten: deque[tuple[float, str, list[str]]] = deque()  # (when due, view, block ids)
        self._runs: dict[tuple[str, str], list[_Run]] = {}  # by view instance, oldest first
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="decode-ahead")  # its thread starts on use
        self.written = WrittenTails(self._budget)
        self._draining = False
        self._closed = False

    def follow(self, process_id: str, view: View) -> None:
        """A query read the view's tail of this process in memory: decode the process's next blocks ahead
        for the view, for FOLLOW_SECONDS."""
        if self._budget <= 0 or view.rows_from_transit is None:
            return
        with self._lock:
            self._followed.setdefault(uuid.UUID(process_id), {})[view.name] = (view, time.monotonic() + FOLLOW_SECONDS)

    def stored(self, record: BlockRecord) -> None:
        """The block's row was just committed by this process (on the loop: this must not block): queues
        its decoding when its process is followed and the bound leaves room."""
        if record.process_id not in self._followed:  # the usual case, a dict lookup without the lock
            return
        block_id = str(record.block_id)
        with self._lock:
            if self._closed or self._pending_objects + record.nb_objects > self._budget:
                return
            if block_id in self._pending or block_id in self._decoded:  # a block sent again
                return
            self._queued.append(record)
            self._pending.add(block_id)
            self._pending_objects += record.nb_objects
            if not self._draining:
                self._draining = True
                self._executor.submit(self._drain).add_done_callback(_log_failure)

    def tail_rows(self, view: View, block_ids: Sequence[str]) -> TailRows | None:
        """The view's rows of these blocks (insert order) when each was decoded ahead, once those still
        queued are decoded (waiting up to PENDING_WAIT_SECONDS): those the worker built (`_Run`) when it
        built them, else built now; else None."""
        with self._lock:
            if self._pending:
                self._lock.wait_for(lambda: self._pending.isdisjoint(block_ids), PENDING_WAIT_SECONDS)
            found = self._found(block_ids)
            if not found:
                return None
            followed = self._followed.get(found[0].process_id, {})
            if view.name in followed:
                followed[view.name] = (view, time.monotonic() + FOLLOW_SECONDS)
            ready = self._ready_rows(view, tuple(block_ids), _instance_of(view, found[0]))
        return TailRows(self._rows(view, found)) if ready is None else ready

    def _ready_rows(self, view: View, block_ids: tuple[str, ...], instance: tuple[str, str]) -> TailRows | None:
        """The rows of exactly these blocks from the runs built ahead, or None (under the lock): a whole
        tail's with its frame, else (a blockwise view) the runs of its blocks concatenated."""
        runs = self._runs.get(instance, [])
        whole = next((run for run in runs if run.whole and run.block_ids == block_ids), None)
        if whole is not None:
            return TailRows(whole.rows, whole.frame)
        wanted = set(block_ids)
        parts = [run for run in runs if not run.whole and not wanted.isdisjoint(run.block_ids)]
        if not _blockwise(view) or tuple(block_id for run in parts for block_id in run.block_ids) != block_ids:
            return None
        return TailRows([batch for run in parts for batch in run.rows])

    def rows_of(self, view: View, blocks: Sequence[SourceBlock]) -> list[pa.RecordBatch] | None:
        """The view's rows of these blocks (insert order) when each was decoded ahead, else None (nothing
        waited for: a partition's writer decodes what is missing)."""
        with self._lock:
            found = self._found([block.meta.block_id for block in blocks])
        return None if found is None else self._rows(view, found)

    def _found(self, block_ids: Sequence[str]) -> list[_Decoded] | None:
        """The blocks decoded ahead, or None when one was not (under the lock)."""
        found = [self._decoded.get(block_id) for block_id in block_ids]
        return None if any(decoded is None for decoded in found) else found  # type: ignore[return-value]

    @staticmethod
    def _rows(view: View, found: Sequence[_Decoded]) -> list[pa.RecordBatch]:
        """The view's rows of the decoded blocks, built at once as `view_rows` builds them."""
        assert view.rows_from_transit is not None  # a view reading payloads of transit blocks
        return list(view.rows_from_transit([d.transit for d in found if d.transit is not None]))

    def forget(self, view: View, block_ids: Iterable[str]) -> None:
        """The view's partitions holding these blocks are written: their rows built ahead are dropped, and
        once FORGET_GRACE_SECONDS have passed, each block is dropped if every view it was decoded for has
        written it."""
        ids = [block_id for block_id in block_ids if block_id in self._decoded]
        if ids:
            with self._lock:
                for block_id in ids:
                    ahead = self._decoded.get(block_id)
                    if ahead is not None:
                        ahead.unwritten.discard(view.name)
                self._forgotten.append((time.monotonic() + FORGET_GRACE_SECONDS, view.name, ids))
                self._drop_forgotten()
                self._drop_runs()

    def held_objects(self) -> tuple[int, int]:
        """The objects of the blocks queued for decoding, and of those decoded and held."""
        with self._lock:
            self._drop_forgotten()
            return self._pending_objects, self._decoded_objects

    def close(self) -> None:
        """Stops decoding: the queued blocks are dropped and the worker thread ends."""
        with self._lock:
            self._closed = True
            self._queued.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _drain(self) -> None:
        """Decodes the queued blocks, many at a time, until none is left (the worker thread)."""
        records: list[BlockRecord] = []
        try:
            while True:
                with self._lock:
                    records, self._queued = self._queued, []
                    if not records or self._closed:
                        self._draining = False
                        return
                decoded, views = self._decode(records)
                self._decoded_in(records, decoded, self._built_runs(decoded, views))
                records = []
        finally:
            if records:  # decoding them failed: the queries decode them; the next block drains again
                self._decoded_in(records, {}, [])
                with self._lock:
                    self._draining = False

    def _decode(self, records: list[BlockRecord]) -> tuple[dict[str, _Decoded], dict[str, View]]:
        """The blocks of these records decoded for their process's followed views (when they can be), and
        those views by name."""
        lake = self._lake
        blocks = lake.loop.run(lake.catalog.blocks_by_id([record.block_id for record in records]))
        views_of = {block.meta.block_id: self._views_for(block) for block in blocks}
        # A known TSC frequency: the process's latest block leaves its clock as it is (`_latest_clock`).
        wanted = [block for block in blocks if views_of[block.meta.block_id]]
        timings = {b.meta.process_id: ProcessTiming(b.process.meta, 0, b.process.meta.start_time_ns) for b in wanted}
        transits = {transit.block.block_id: transit for transit in decoded_transit(lake, wanted, timings)}
        decoded = {
            block.meta.block_id: _Decoded(
                uuid.UUID(block.meta.process_id),
                block.meta.stream_id,
                block.meta.nb_objects,
                {view.name for view in views_of[block.meta.block_id]},
                {view.name for view in views_of[block.meta.block_id]},
                transits.get(block.meta.block_id),
            )
            for block in wanted
        }
        return decoded, {view.name: view for views in views_of.values() for view in views}

    def _built_runs(self, decoded: dict[str, _Decoded], views: dict[str, View]) -> list[_Run]:
        """Each view's rows, built on the worker thread: of each instance's whole unwritten tail with the
        blocks just decoded, with its frame (up to READY_TAIL_OBJECTS objects); for a blockwise view, of the
        blocks just decoded, the whole tail being the instance's runs concatenated."""
        runs = []
        for view in views.values():
            for instance, tail in self._tails(view, decoded).items():
                ids = tuple(block_id for block_id, _ in tail)
                objects = sum(ahead.objects for _, ahead in tail)
                rows = [batch for batch in self._rows(view, [ahead for _, ahead in tail]) if batch.num_rows]
                if _blockwise(view):
                    with self._lock:
                        before = [run for run in self._runs.get(instance, []) if not run.whole]
                    runs.append(_Run(instance, ids, objects, rows, None))
                    ids = tuple(block_id for run in before for block_id in run.block_ids) + ids
                    objects += sum(run.objects for run in before)
                    rows = [batch for run in before for batch in run.rows] + rows
                if objects <= READY_TAIL_OBJECTS:
                    runs.append(_Run(instance, ids, objects, rows, rows_frame(plain_rows(rows), view.schema)))
        return runs

    def _tails(self, view: View, decoded: dict[str, _Decoded]) -> dict[tuple[str, str], list[tuple[str, _Decoded]]]:
        """The blocks whose rows the worker builds for the view, by instance (insert order): those just
        decoded for it, after its instance's unwritten ones decoded before for a view that is not blockwise."""
        blocks = [(block_id, ahead) for block_id, ahead in decoded.items() if view.name in ahead.views]
        if not _blockwise(view):
            touched = {_instance_of(view, ahead) for _, ahead in blocks}
            with self._lock:
                before = [
                    (block_id, ahead)
                    for block_id, ahead in self._decoded.items()
                    if view.name in ahead.unwritten and _instance_of(view, ahead) in touched
                ]
            blocks = before + blocks
        tails: dict[tuple[str, str], list[tuple[str, _Decoded]]] = {}
        for block_id, ahead in blocks:
            tails.setdefault(_instance_of(view, ahead), []).append((block_id, ahead))
        return tails

    def _views_for(self, block: SourceBlock) -> list[View]:
        """The followed views of the block's process that read it (none for a block that cannot be decoded
        ahead: not transit, or a process without a TSC frequency); forgets the views followed no more."""
        if block.stream.format != TRANSIT_FORMAT or block.process.meta.tsc_frequency <= 0:
            return []
        process_id = uuid.UUID(block.meta.process_id)
        now = time.monotonic()
        with self._lock:
            followed = self._followed.get(process_id, {})
            for name in [name for name, (_, until) in followed.items() if until < now]:
                del followed[name]
            if not followed:
                self._followed.pop(process_id, None)
            views = [view for view, _ in followed.values()]
        tags = set(block.stream.meta.tags)
        return [view for view in views if not view.stream_tags or tags.intersection(view.stream_tags)]

    def _decoded_in(self, records: list[BlockRecord], decoded: dict[str, _Decoded], runs: list[_Run]) -> None:
        """Keeps the blocks decoded (the oldest dropped past the bound) and the runs built of them (those
        whose blocks are all still unwritten), and wakes the queries waiting."""
        with self._lock:
            for record in records:
                self._pending.discard(str(record.block_id))
                self._pending_objects -= record.nb_objects
            for block_id, ahead in decoded.items():
                self._decoded[block_id] = ahead
                self._decoded_objects += ahead.objects
            while self._decoded_objects > self._budget:
                self._decoded_objects -= self._decoded.popitem(last=False)[1].objects
            self._drop_forgotten()
            for run in runs:
                kept = self._runs.setdefault(run.instance, [])
                kept.append(run)
                while sum(kept_run.whole for kept_run in kept) > READY_WHOLE_RUNS:
                    kept.remove(next(kept_run for kept_run in kept if kept_run.whole))
            self._drop_runs()
            self._lock.notify_all()

    def _drop_runs(self) -> None:
        """Drops the runs holding a block no longer decoded ahead, or written by their view (under the lock)."""
        for instance, runs in list(self._runs.items()):
            kept = [run for run in runs if all(self._unwritten(instance[0], b) for b in run.block_ids)]
            if kept:
                self._runs[instance] = kept
            else:
                del self._runs[instance]

    def _unwritten(self, view_name: str, block_id: str) -> bool:
        """Whether the block is decoded ahead and not written by the view yet (under the lock)."""
        ahead = self._decoded.get(block_id)
        return ahead is not None and view_name in ahead.unwritten

    def _drop_forgotten(self) -> None:
        """Drops the blocks forgotten FORGET_GRACE_SECONDS ago by every view they were decoded for (under
        the lock)."""
        now = time.monotonic()
        while self._forgotten and self._forgotten[0][0] <= now:
            _, name, ids = self._forgotten.popleft()
            for block_id in ids:
                ahead = self._decoded.get(block_id)
                if ahead is None:
                    continue
                ahead.views.discard(name)
                if not ahead.views:
                    self._decoded_objects -= self._decoded.pop(block_id).objects


def _log_failure(future: Future) -> None:
    error = future.exception()
    if error is not None:
        log.error("decoding blocks ahead failed; queries decode them", exc_info=error)
