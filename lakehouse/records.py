"""Rows of the ingestion tables (`processes`, `streams`, `blocks`) as the ingestion paths build them.

Times are kept as integer nanoseconds since the Unix epoch (UTC): Python's datetime stops at
microseconds and the micromegas sink sends nanosecond RFC3339 strings.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from spanlake.views.meta import BlockMeta


@dataclass(frozen=True)
class ProcessRecord:
    """A `processes` row: what the instrumented process said about itself at startup."""

    process_id: uuid.UUID
    exe: str
    username: str
    realname: str
    computer: str
    distro: str
    cpu_brand: str
    tsc_frequency: int
    start_time_ns: int
    start_ticks: int
    parent_process_id: uuid.UUID | None
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamRecord:
    """A `streams` row: one event stream of a process, with the transit metadata of its blocks."""

    stream_id: uuid.UUID
    process_id: uuid.UUID
    dependencies_metadata: bytes  # CBOR array of UserDefinedType, as stored
    objects_metadata: bytes
    tags: list[str]
    properties: dict[str, str]
    format: str = "micromegas-transit"


@dataclass(frozen=True)
class BlockRecord:
    """A `blocks` row: where one payload of a stream sits in time, ticks and object count."""

    block_id: uuid.UUID
    stream_id: uuid.UUID
    process_id: uuid.UUID
    begin_time_ns: int
    begin_ticks: int
    end_time_ns: int
    end_ticks: int
    nb_objects: int
    object_offset: int
    payload_size: int


def blob_key(process_id: uuid.UUID | str, stream_id: uuid.UUID | str, block_id: uuid.UUID | str) -> str:
    """Object-store key of a block payload, relative to the store root (micromegas layout); the one place
    that spells it."""
    return f"blobs/{process_id}/{stream_id}/{block_id}"


def block_meta(record: BlockRecord) -> BlockMeta:
    """The block as the views see it (no insert time yet: 0)."""
    return BlockMeta(
        str(record.block_id),
        str(record.stream_id),
        str(record.process_id),
        record.begin_time_ns,
        record.begin_ticks,
        record.end_time_ns,
        record.end_ticks,
        record.nb_objects,
        record.object_offset,
        0,
    )
