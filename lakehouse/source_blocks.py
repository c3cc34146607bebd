"""The blocks views are built from, as the catalog reads them (rows of blocks ⋈ streams ⋈ processes).

As in micromegas, a block is visible to the views once its stream and process rows exist; a block
that arrived first joins the views when they do (its partition's source count then changes).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg

from spanlake.lakehouse.timestamps import datetime_to_ns
from spanlake.views.meta import BlockMeta, ProcessMeta, SourceBlock, SourceProcess, SourceStream, StreamMeta

HOUR_NS = 3600 * 1_000_000_000


@dataclass(frozen=True)
class ProcessTiming:
    """The process and its latest block's end, which async events and thread spans convert ticks with."""

    process: ProcessMeta
    last_block_end_ticks: int
    last_block_end_time_ns: int


@dataclass
class Interned:
    """The streams and processes already decoded in one read: a block shares its stream's and process's."""

    streams: dict[uuid.UUID, SourceStream] = field(default_factory=dict)
    processes: dict[uuid.UUID, SourceProcess] = field(default_factory=dict)


def properties_of(value: list[asyncpg.Record] | None) -> dict[str, str]:
    """A properties column (an array of (key, value) records) as a dict."""
    return {p["key"]: p["value"] for p in value or []}


def process_meta(row: asyncpg.Record, prefix: str = "") -> ProcessMeta:
    """The process of a row holding the `processes` columns."""
    return ProcessMeta(
        process_id=str(row[prefix + "process_id"]),
        exe=row[prefix + "exe"] or "",
        username=row[prefix + "username"] or "",
        computer=row[prefix + "computer"] or "",
        start_time_ns=datetime_to_ns(row[prefix + "start_time"]),
        start_ticks=row[prefix + "start_ticks"],
        tsc_frequency=row[prefix + "tsc_frequency"],
        properties=properties_of(row[prefix + "properties"]),
    )


@dataclass(frozen=True)
class CoverageGroup:
    """The instance's source blocks that one live partition's insert range holds (or that none holds)."""

    partition_begin_ns: int | None  # the holding partition's begin; None: blocks no partition holds
    blocks: int
    objects: int
    first_insert_ns: int
    last_insert_ns: int
    # The ids of the blocks no partition holds, in insert order, when they are few (`UNCOVERED_IDS`): a
    # query may find their rows decoded ahead (`decode_ahead`). Empty for a holding partition's group.
    block_ids: tuple[str, ...] = ()


# The most uncovered blocks whose ids the coverage check returns.
UNCOVERED_IDS = 4096


def source_block(row: asyncpg.Record, interned: Interned) -> SourceBlock:
    """A block of a blocks ⋈ streams ⋈ processes row, its stream and process shared through `interned`."""
    stream = interned.streams.get(row["stream_id"])
    if stream is None:
        stream = interned.streams[row["stream_id"]] = SourceStream(
            StreamMeta(
                str(row["stream_id"]),
                str(row["stream_process_id"]),
                tuple(row["tags"] or ()),
                properties_of(row["stream_properties"]),
            ),
            row["format"],
            bytes(row["dependencies_metadata"] or b""),
            bytes(row["objects_metadata"] or b""),
            datetime_to_ns(row["stream_insert_time"]),
        )
    process = interned.processes.get(row["process_id"])
    if process is None:
        parent = row["parent_process_id"]
        process = interned.processes[row["process_id"]] = SourceProcess(
            process_meta(row),
            row["realname"] or "",
            row["distro"] or "",
            row["cpu_brand"] or "",
            datetime_to_ns(row["process_insert_time"]),
            "" if parent is None else str(parent),
        )
    meta = BlockMeta(
        block_id=str(row["block_id"]),
        stream_id=str(row["stream_id"]),
        process_id=str(row["process_id"]),
        begin_time_ns=datetime_to_ns(row["begin_time"]),
        begin_ticks=row["begin_ticks"],
        end_time_ns=datetime_to_ns(row["end_time"]),
        end_ticks=row["end_ticks"],
        nb_objects=row["nb_objects"],
        object_offset=row["object_offset"],
        insert_time_ns=datetime_to_ns(row["insert_time"]),
    )
    return SourceBlock(meta, stream, process, row["payload_size"])
