"""The metadata a view builder needs besides the decoded block: its process, stream and block rows.

Ids are the lower-case hyphenated UUID strings the views store; times are integer nanoseconds since
the Unix epoch (UTC); ticks are as stored in PostgreSQL (block ticks relative to the process start).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Stream formats: how a stream's block payloads are encoded.
TRANSIT_FORMAT = "micromegas-transit"
OTLP_LOGS_FORMAT = "otlp/v1/logs"
OTLP_METRICS_FORMAT = "otlp/v1/metrics"
OTLP_TRACES_FORMAT = "otlp/v1/traces"


@dataclass(frozen=True)
class ProcessMeta:
    """The `processes` row of a block's process, as view builders use it."""

    process_id: str
    exe: str
    username: str
    computer: str
    start_time_ns: int
    start_ticks: int
    tsc_frequency: int
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamMeta:
    """The `streams` row of a block's stream."""

    stream_id: str
    process_id: str
    tags: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockMeta:
    """The `blocks` row of the block being decoded."""

    block_id: str
    stream_id: str
    process_id: str
    begin_time_ns: int
    begin_ticks: int  # relative to the process's start_ticks
    end_time_ns: int
    end_ticks: int
    nb_objects: int
    object_offset: int  # index of the block's first object within its stream
    insert_time_ns: int


@dataclass(frozen=True)
class SourceStream:
    """A `streams` row, as the views see it."""

    meta: StreamMeta
    format: str
    dependencies_metadata: bytes
    objects_metadata: bytes
    insert_time_ns: int


@dataclass(frozen=True)
class SourceProcess:
    """A `processes` row, as the metadata views (blocks, processes) show it."""

    meta: ProcessMeta
    realname: str
    distro: str
    cpu_brand: str
    insert_time_ns: int
    parent_process_id: str  # "" when there is none


@dataclass(frozen=True)
class SourceBlock:
    """A `blocks` row joined with its stream and process: what a view is built from, payload aside."""

    meta: BlockMeta
    stream: SourceStream
    process: SourceProcess
    payload_size: int
