"""Access to the micromegas Rust fixtures (tests/fixtures/micromegas-rust) as view-builder inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cbor2

from spanlake.lakehouse.transit.decode import StreamLayout, decode_block, stream_layout
from spanlake.views.decoded import DecodedBlock
from spanlake.views.meta import BlockMeta, ProcessMeta, StreamMeta
from spanlake.views.time import TickConverter, converter_from_latest_timing

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "micromegas-rust"


@dataclass(frozen=True)
class FixtureBlock:
    meta: BlockMeta
    expected: dict  # the block's entry in expected.json (with its "events")
    payload: bytes  # the stored blob

    @property
    def block_id(self) -> str:
        return self.meta.block_id


@dataclass(frozen=True)
class FixtureStream:
    meta: StreamMeta
    layout: StreamLayout
    blocks: tuple[FixtureBlock, ...]

    def decoded(self) -> list[tuple[BlockMeta, DecodedBlock]]:
        return [(block.meta, decode_block(block.payload, self.layout)) for block in self.blocks]


@cache
def expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())


@cache
def process() -> ProcessMeta:
    info = expected()["process"]
    body = info["process_info"]
    return ProcessMeta(
        process_id=body["process_id"],
        exe=body["exe"],
        username=body["username"],
        computer=body["computer"],
        start_time_ns=info["start_time_nanos_since_epoch"],
        start_ticks=info["start_ticks"],
        tsc_frequency=info["tsc_frequency"],
        properties=body["properties"],
    )


def _block_meta(block: dict, insert_time_ns: int) -> BlockMeta:
    return BlockMeta(
        block_id=block["block_id"],
        stream_id=block["stream_id"],
        process_id=block["process_id"],
        begin_time_ns=block["begin_time_nanos_since_epoch"],
        begin_ticks=block["begin_ticks"],
        end_time_ns=block["end_time_nanos_since_epoch"],
        end_ticks=block["end_ticks"],
        nb_objects=block["nb_objects"],
        object_offset=block["object_offset"],
        insert_time_ns=insert_time_ns,
    )


@cache
def streams() -> tuple[FixtureStream, ...]:
    result = []
    for stream in expected()["streams"]:
        # The stored metadata is the server's CBOR re-encoding of the insert_stream body.
        body = cbor2.loads((FIXTURES / "streams" / f"{stream['stream_id']}.cbor").read_bytes())
        layout = stream_layout(cbor2.dumps(body["dependencies_metadata"]), cbor2.dumps(body["objects_metadata"]))
        blocks = tuple(
            FixtureBlock(
                _block_meta(block, insert_time_ns=block["end_time_nanos_since_epoch"] + 1000),
                block,
                (FIXTURES / block["files"]["stored_payload_blob"]).read_bytes(),
            )
            for block in stream["blocks"]
        )
        meta = StreamMeta(stream["stream_id"], stream["process_id"], tuple(stream["tags"]), stream["properties"])
        result.append(FixtureStream(meta, layout, blocks))
    return tuple(result)


def streams_tagged(tag: str) -> list[FixtureStream]:
    return [stream for stream in streams() if tag in stream.meta.tags]


def latest_timing_converter() -> TickConverter:
    """The converter async events and thread spans use: from the process's latest block."""
    last = max((block.meta for stream in streams() for block in stream.blocks), key=lambda meta: meta.end_ticks)
    return converter_from_latest_timing(process(), last.end_ticks, last.end_time_ns)
