"""The write side of access control: ingestion stamps the key's audience on the processes it writes.

Every ingestion route (native, OTLP, Firehose, webhook) stamps `micromegas.audience` server-side from
the ingestion key, after stripping any `micromegas.*` property the client sent; streams and blocks are
refused when their process belongs to another audience. OTLP ids are derived from what the client
sends, so with an audience they are folded with it: two audiences exporting the same resource (or
byte-identical blocks) write two processes, never one. As micromegas (write_audience.rs).
"""

from __future__ import annotations

import dataclasses
import uuid

from spanlake.lakehouse.errors import IngestRejected
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock, uuid5_bytes
from spanlake.lakehouse.query.context import Principal
from spanlake.lakehouse.records import ProcessRecord

AUDIENCE_PROPERTY = "micromegas.audience"
RESERVED_PREFIX = "micromegas."
# The namespace of audience-scoped OTLP ids (a fixed, arbitrary UUID: changing it splits processes).
NS_AUDIENCE_SCOPED = uuid.UUID("3f1d3c1e-8a2b-4f57-9b4e-6b2a4a0d7c11")


def write_audience(principal: Principal | None) -> str | None:
    """The audience a caller's writes are stamped with (None: unstamped, as legacy keys and no auth)."""
    return None if principal is None else principal.write_audience


def stamped(process: ProcessRecord, audience: str | None) -> ProcessRecord:
    """The process without client-sent `micromegas.*` properties, with the audience stamped if any."""
    properties = {k: v for k, v in process.properties.items() if not k.lower().startswith(RESERVED_PREFIX)}
    if audience is not None:
        properties[AUDIENCE_PROPERTY] = audience
    return dataclasses.replace(process, properties=properties)


def scoped_otlp_block(block: OtlpResourceBlock, audience: str | None) -> OtlpResourceBlock:
    """An OTLP block with its ids folded with the audience and its process stamped (ids kept when None)."""
    if audience is None:
        return dataclasses.replace(block, process=stamped(block.process, None))

    def scoped(id_: uuid.UUID) -> uuid.UUID:
        return uuid5_bytes(NS_AUDIENCE_SCOPED, f"{audience}\x1f{id_}".encode())

    process_id, stream_id = scoped(block.process.process_id), scoped(block.stream.stream_id)
    process = dataclasses.replace(stamped(block.process, audience), process_id=process_id)
    stream = dataclasses.replace(block.stream, stream_id=stream_id, process_id=process_id)
    record = dataclasses.replace(
        block.block, block_id=scoped(block.block.block_id), stream_id=stream_id, process_id=process_id
    )
    return dataclasses.replace(block, process=process, stream=stream, block=record)


async def check_process_audience(lake: Lake, process_id: uuid.UUID, audience: str | None) -> None:
    """IngestRejected when the process exists with another audience than the writer's."""
    found = await lake.catalog.process_audience(process_id)
    if found is not None and found[0] != audience:
        raise IngestRejected(f"process {process_id} belongs to another audience")
