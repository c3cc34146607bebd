"""The view contract: every view file of `views/` exports one `VIEW`, a `View` saying what the view is.

A view is named, has an Arrow schema (and the hash its partitions are stored under), is instantiated
per process, per stream or only globally, is fed by the streams with one of its tags, and bounds each
partition's events by two time columns. Its rows come from one of three sources, each a function
from an iterable of blocks to record batches (iterables, so a view can build rows block by block or
over all the blocks of a partition at once, as thread call trees and OTLP span depths need):

* `rows_from_transit`: decoded micromegas-transit blocks (`TransitBlock`);
* `rows_from_otlp`: OTLP blocks of format `otlp_format`, as arrays the lakehouse parsed from their
  protobuf (`OtlpBlock`, whose `columns` type the view defines);
* `rows_from_blocks`: the block rows alone, no payload (the metadata views: blocks, processes, streams).

A merge of a view instance's partitions reads their files instead of decoding their blocks again:
concatenated when each block gives its rows alone (`blockwise_formats`), else through `merge_rows`
when the view has one (its rows span blocks: a thread's call tree). Such a view's rows functions note
what a merge needs in their batches' schema metadata, which the partition writer keeps in the file's
footer; `merge_rows` gets each partition's rows with those notes (`PartitionRows`).

Views stay pure: arrays in, arrays out. The lakehouse fetches, decodes and stores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pyarrow as pa

from spanlake.views.columns import block_identity_columns, concat_columns, run_identity_columns
from spanlake.views.decoded import BlockRowsError, DecodedBlock, concat_blocks
from spanlake.views.meta import BlockMeta, ProcessMeta, SourceBlock, StreamMeta
from spanlake.views.time import TickConverter, converter_for_block

log = logging.getLogger(__name__)

InstanceKind = Literal["process", "stream"]
HOUR_SECONDS = 3600
DAY_SECONDS = 24 * HOUR_SECONDS
Columns = TypeVar("Columns")


@dataclass(frozen=True)
class TransitBlock:
    """One decoded transit block with the rows of its block, stream and process."""

    decoded: DecodedBlock
    block: BlockMeta
    stream: StreamMeta
    process: ProcessMeta
    latest: TickConverter  # ticks → time by the process's latest block (async events and thread spans)


@dataclass(frozen=True)
class OtlpBlock(Generic[Columns]):
    """One OTLP block as the arrays the lakehouse parsed from it, with its block and process rows."""

    columns: Columns
    block: BlockMeta
    process: ProcessMeta


@dataclass(frozen=True)
class PartitionRows:
    """A partition's rows read back for a merge, with its file's footer metadata (the notes its rows carried)."""

    table: pa.Table
    metadata: dict[bytes, bytes] | None


TransitRows = Callable[[Iterable[TransitBlock]], Iterator[pa.RecordBatch]]
OtlpRows = Callable[[Iterable[OtlpBlock[Any]]], Iterator[pa.RecordBatch]]
BlockRows = Callable[[Sequence[SourceBlock]], Iterator[pa.RecordBatch]]


@dataclass(frozen=True)
class SqlSource:
    """The queries of a SQL-defined view (`CREATE MATERIALIZED VIEW`, micromegas's `SqlBatchView`):
    `{begin}` and `{end}` stand for a bucket's insert range, `{source}` for the partitions merged."""

    extract_query: str  # the bucket's rows, from the global views' partitions inserted in it
    count_src_query: str  # one row, column `count`: the bucket's source count (stale partitions differ)
    merge_partitions_query: str | None  # rows of several partitions as one; None: concatenated
    update_group: int  # the daemon materializes SQL views by update group, after the built-in views
    definition_sql: str  # the `CREATE MATERIALIZED VIEW` statement, as stored and listed


@dataclass(frozen=True, kw_only=True)
class View:
    """What a view is; see the module docstring."""

    name: str
    schema: pa.Schema
    schema_hash: bytes  # stored with each partition: a partition of another hash is stale
    instance_kind: InstanceKind | None  # what a view_instance id names; None: global only
    has_global_instance: bool  # also materialized over every process, as instance 'global'
    stream_tags: tuple[str, ...]  # blocks of streams with one of these tags feed it (empty: every stream)
    time_columns: tuple[str, str]  # (column of the earliest, column of the latest) event time of a row
    rows_from_transit: TransitRows | None = None
    rows_from_otlp: OtlpRows | None = None
    otlp_format: str | None = None  # the stream format `rows_from_otlp` reads
    rows_from_blocks: BlockRows | None = None
    merge: Callable[[pa.Table], pa.Table] | None = None  # rows of several partitions as one; None: concatenated
    # The stream formats whose blocks each give their rows alone (`each_block`): a merge of partitions of
    # such blocks concatenates their files instead of decoding the blocks again.
    blockwise_formats: frozenset[str] = frozenset()
    # Rows of consecutive partitions (insert order) as a build from all their blocks gives them, their
    # notes in the table's schema metadata; None when the notes cannot tell (the blocks are decoded).
    merge_rows: Callable[[Sequence[PartitionRows]], pa.Table | None] | None = None
    max_partition_seconds: int = DAY_SECONDS  # global instance: merges stop at partitions this long
    sql: SqlSource | None = None  # a SQL-defined view: rows and source counts come from its queries

    @property
    def reads_payloads(self) -> bool:
        """Whether the view's rows need the blocks' payloads (all but the metadata and SQL views)."""
        return self.rows_from_blocks is None and self.sql is None

    @property
    def counts_blocks(self) -> bool:
        """Staleness by the number of source blocks (metadata views) instead of source objects."""
        return self.rows_from_blocks is not None


Block = TypeVar("Block", TransitBlock, OtlpBlock[Any])


def each_block(rows: Callable[[Block], pa.RecordBatch]) -> Callable[[Iterable[Block]], Iterator[pa.RecordBatch]]:
    """Rows block by block; a block whose content cannot become rows is logged and skipped."""

    def batches(blocks: Iterable[Block]) -> Iterator[pa.RecordBatch]:
        for block in blocks:
            try:
                yield rows(block)
            except BlockRowsError as err:
                log.warning(
                    "block %s of stream %s cannot be decoded, skipped: %s",
                    block.block.block_id,
                    block.block.stream_id,
                    err,
                )

    return batches


# Objects of consecutive blocks a view decodes as one run (`each_run`): enough that the fixed cost of
# building a batch is shared by many small blocks, few enough that a run's decoded blocks stay small.
RUN_OBJECTS = 256 * 1024


def latest_clock(block: TransitBlock) -> object:
    """What blocks converting ticks with their process's latest clock share (async events)."""
    return block.latest


def own_clock(block: TransitBlock) -> object:
    """What blocks converting ticks with their own clock share (log and metric blocks): their process
    and the clock (`converter_for_block`) it gives them."""
    return block.process.process_id, converter_for_block(block.process, block.block)


def each_run(
    rows: Callable[[Sequence[TransitBlock]], pa.RecordBatch], run_key: Callable[[TransitBlock], object] = latest_clock
) -> TransitRows:
    """Rows of runs of consecutive blocks of equal `run_key` (their clock), each built at once: a batch
    per run of many blocks, not per block. A run whose content cannot become rows is built again block
    by block, so only its bad blocks are logged and skipped."""
    return _each_run(rows, lambda blocks: _runs(blocks, run_key, lambda transit: transit.decoded.nb_objects))


def each_process_run(rows: Callable[[Sequence[OtlpBlock[Any]]], pa.RecordBatch]) -> OtlpRows:
    """Rows of runs of consecutive OTLP blocks of one process, each built at once (`OtlpRun`), as
    `each_run` builds transit blocks."""
    return _each_run(rows, process_runs)


def process_runs(blocks: Iterable[OtlpBlock[Any]]) -> Iterator[list[OtlpBlock[Any]]]:
    """Runs of consecutive OTLP blocks of one process (up to `RUN_OBJECTS` objects), to build at once."""
    return _runs(blocks, lambda otlp: otlp.process.process_id, lambda otlp: otlp.block.nb_objects)


def _each_run(
    rows: Callable[[Sequence[Block]], pa.RecordBatch], runs: Callable[[Iterable[Block]], Iterator[list[Block]]]
) -> Callable[[Iterable[Block]], Iterator[pa.RecordBatch]]:
    by_block = each_block(lambda block: rows([block]))

    def batches(blocks: Iterable[Block]) -> Iterator[pa.RecordBatch]:
        for run in runs(blocks):
            try:
                yield rows(run)
            except BlockRowsError:
                yield from by_block(run)

    return batches


@dataclass(frozen=True)
class OtlpRun(Generic[Columns]):
    """Consecutive OTLP blocks of one process as one: their columns concatenated, their block rows, and
    each block's first row."""

    columns: Columns
    process: ProcessMeta
    blocks: Sequence[BlockMeta]
    starts: np.ndarray

    @staticmethod
    def of(run: Sequence[OtlpBlock[Columns]]) -> OtlpRun[Columns]:
        """The blocks of `run` (one process's) as one."""
        columns, starts = concat_columns([block.columns for block in run])
        return OtlpRun(columns, run[0].process, [block.block for block in run], starts)

    def identity_columns(self, length: int) -> list[pa.Array]:
        """`block_identity_columns` of the run's `length` rows, each naming its own block."""
        return run_identity_columns(self.process, self.blocks, self.starts, np.arange(length))


# A view's rows of a decoded block or run of blocks: (block, process, clock, identity columns of the rows
# from their object positions).
IdentityColumns = Callable[[np.ndarray], list[pa.Array]]
DecodedRows = Callable[[DecodedBlock, ProcessMeta, TickConverter, IdentityColumns], pa.RecordBatch]


def block_rows(
    rows: DecodedRows, block: DecodedBlock, meta: BlockMeta, process: ProcessMeta, convert: TickConverter
) -> pa.RecordBatch:
    """`rows` of one decoded block, every row naming that block."""
    return rows(block, process, convert, lambda positions: block_identity_columns(process, meta, len(positions)))


def run_rows(rows: DecodedRows, run: Sequence[TransitBlock]) -> pa.RecordBatch:
    """`rows` of consecutive decoded blocks of one process sharing one clock, built at once, every row naming
    its own block."""
    block, starts = concat_blocks([transit.decoded for transit in run])
    process, metas = run[0].process, [transit.block for transit in run]
    convert = converter_for_block(process, run[0].block)
    return rows(block, process, convert, lambda positions: run_identity_columns(process, metas, starts, positions))


def _runs(
    blocks: Iterable[Block], run_key: Callable[[Block], object], size: Callable[[Block], int]
) -> Iterator[list[Block]]:
    run: list[Block] = []
    key: object = None
    objects = 0
    for block in blocks:
        block_key = run_key(block)
        if run and (block_key != key or objects + size(block) > RUN_OBJECTS):
            yield run
            run, objects = [], 0
        run.append(block)
        key = block_key
        objects += size(block)
    if run:
        yield run
