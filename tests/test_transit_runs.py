"""Blocks decoded many at a time (`transit.decode_blocks`) and views built per run of blocks: the same
objects and rows as one block at a time, and a bad block fails alone."""

from __future__ import annotations

import struct
from dataclasses import replace

import pyarrow as pa
import rust_fixtures
from transit_builder import (
    BufferWriter,
    ThreadBlockWriter,
    dyn_string,
    metadata,
    payload,
    thread_stream_metadata,
    udt,
)

from spanlake.lakehouse.transit.decode import (
    TransitError,
    decode_block,
    decode_blocks,
    decompress,
    object_values,
    split_payload,
    stream_layout,
)
from spanlake.lakehouse.view_rows import clock_problem, clock_problems
from spanlake.views import async_events, images, log_entries, measures
from spanlake.views.decoded import DecodedBlock, concat_blocks
from spanlake.views.time import converter_for_block
from spanlake.views.view import TransitBlock


def _decoded(results: list[DecodedBlock | TransitError]) -> list[DecodedBlock]:
    assert all(isinstance(result, DecodedBlock) for result in results), results
    return results  # type: ignore[return-value]


def test_each_block_decoded_with_others_is_what_it_decodes_to_alone() -> None:
    for stream in rust_fixtures.streams():
        payloads = [block.payload for block in stream.blocks]
        together = _decoded(decode_blocks(payloads, stream.layout))
        alone = [decode_block(payload, stream.layout) for payload in payloads]
        assert [object_values(block) for block in together] == [object_values(block) for block in alone]
        assert [block.nb_objects for block in together] == [block.nb_objects for block in alone]
        assert [sorted(block.groups) for block in together] == [sorted(block.groups) for block in alone]
        if len(payloads) > 1:  # one joint pass (these blocks each carry their own dependencies)
            assert len({id(block.part_of.run) for block in together if block.part_of}) == 1
            assert all(block.part_of for block in together)


def test_adjacent_parts_of_a_run_concatenate_to_the_run_itself() -> None:
    stream = rust_fixtures.streams_tagged("cpu")[0]
    together = _decoded(decode_blocks([block.payload for block in stream.blocks], stream.layout))
    run, starts = concat_blocks(together)
    assert together[0].part_of is not None
    assert run.groups is together[0].part_of.run.groups
    assert starts.tolist() == [0, *[sum(b.nb_objects for b in together[:i]) for i in range(1, len(together))]]
    middle, _ = concat_blocks(together[1:3])
    assert object_values(middle) == object_values(together[1]) + object_values(together[2])


def _truncated(block_payload: bytes) -> bytes:
    """The payload with the last byte of its objects buffer cut (its last object runs past the end)."""
    dependencies, objects = split_payload(block_payload)
    inflated = decompress(objects, "objects")
    return payload(decompress(dependencies, "dependencies"), inflated[:-1])


def test_a_truncated_block_fails_alone_among_blocks_decoded_together() -> None:
    stream = rust_fixtures.streams_tagged("cpu")[0]
    payloads = [block.payload for block in stream.blocks]
    payloads[2] = _truncated(payloads[2])
    results = decode_blocks(payloads, stream.layout)
    assert isinstance(results[2], TransitError)
    for index in (0, 1, 3, 4, 5):
        assert object_values(results[index]) == object_values(decode_block(payloads[index], stream.layout))


def test_a_reference_held_only_by_a_neighbours_dependencies_fails_its_block_alone() -> None:
    layout = stream_layout(*thread_stream_metadata())
    owner = ThreadBlockWriter()
    desc = owner.span_desc("app::held")
    owner.async_event(True, desc, 1, 0, 10, 0)
    borrower = ThreadBlockWriter()
    assert borrower.span_desc("app::held") == desc  # same ids, but its dependencies are dropped below
    borrower.async_event(True, desc, 2, 0, 20, 0)
    borrowing = payload(b"", borrower.objects.getvalue())
    other = ThreadBlockWriter()
    other.async_event(False, other.span_desc("app::other"), 3, 0, 30, 0)
    results = decode_blocks([owner.payload(), borrowing, other.payload()], layout)
    assert isinstance(results[1], TransitError)
    assert "not found in the block's dependencies" in str(results[1])
    assert [value["span_id"] for value in object_values(results[0])] == [1]
    assert [value["span_id"] for value in object_values(results[2])] == [3]


def test_an_undecodable_envelope_fails_alone() -> None:
    stream = rust_fixtures.streams_tagged("log")[0]
    payloads = [block.payload for block in stream.blocks]
    payloads[1] = payloads[1][:-9]
    results = decode_blocks(payloads, stream.layout)
    assert isinstance(results[1], TransitError)
    assert len(object_values(results[0])) == stream.blocks[0].meta.nb_objects
    assert len(object_values(results[2])) == stream.blocks[2].meta.nb_objects


def _transit_blocks(tag: str) -> tuple[list[TransitBlock], list[pa.RecordBatch]]:
    """A stream's blocks decoded together as the views get them, by a process with a TSC frequency (so
    log and metric blocks share one clock), and each block's rows built alone."""
    process = replace(rust_fixtures.process(), tsc_frequency=rust_fixtures.latest_timing_converter().frequency)
    convert = rust_fixtures.latest_timing_converter()
    stream = rust_fixtures.streams_tagged(tag)[0]
    decoded = _decoded(decode_blocks([block.payload for block in stream.blocks], stream.layout))
    transit = [
        TransitBlock(block, fixture.meta, stream.meta, process, convert)
        for block, fixture in zip(decoded, stream.blocks, strict=True)
    ]
    view = {"log": log_entries, "metrics": measures}.get(tag)
    alone = [
        view.build_batch(decode_block(fixture.payload, stream.layout), fixture.meta, process, convert)
        if view
        else async_events.build_batch(decode_block(fixture.payload, stream.layout), fixture.meta, convert)
        for fixture in stream.blocks
    ]
    return transit, alone


def test_views_built_per_run_give_the_rows_built_block_by_block() -> None:
    for tag, view in (("log", log_entries.VIEW), ("metrics", measures.VIEW), ("cpu", async_events.VIEW)):
        transit, alone = _transit_blocks(tag)
        assert view.rows_from_transit is not None
        batches = list(view.rows_from_transit(transit))
        assert len(batches) == 1, tag  # one run
        expected = pa.Table.from_batches(alone).to_pylist()
        assert len(expected) > 100
        assert pa.Table.from_batches(batches).to_pylist() == expected, tag
        assert len({row["block_id"] for row in expected}) > 1, tag


def _image_blocks() -> tuple[list[TransitBlock], list[pa.RecordBatch]]:
    """Blocks of an `image` stream (some images repeated within and across blocks, a block without any)
    decoded together as the views get them, and each block's rows built alone."""
    layout = stream_layout(metadata([]), metadata([udt("ImageEvent", 0)]))
    process = replace(rust_fixtures.process(), tsc_frequency=1_000_000)
    stream = rust_fixtures.streams_tagged("image")[0]
    fixture = stream.blocks[0].meta
    shapes = [[("a", "png", b"\x89PNG1"), ("b", "jpg", b"")], [], [("a", "png", b"\x89PNG1")]]
    shapes += [[(f"n{i}", "webp" if i % 2 else "png", bytes([i]) * (i * 7)) for i in range(40)]]
    payloads, metas = [], []
    for index, shape in enumerate(shapes):
        objects = BufferWriter()
        for ticks, (name, image_format, data) in enumerate(shape, start=index * 1000):
            body = struct.pack("<q", ticks) + dyn_string(name) + dyn_string(image_format)
            objects.dynamic(0, body + struct.pack("<I", len(data)) + data)
        payloads.append(payload(b"", objects.getvalue()))
        metas.append(replace(fixture, block_id=f"image-block-{index}", nb_objects=len(shape), end_ticks=index * 1000))
    decoded = _decoded(decode_blocks(payloads, layout))
    convert = rust_fixtures.latest_timing_converter()
    transit = [
        TransitBlock(block, meta, stream.meta, process, convert) for block, meta in zip(decoded, metas, strict=True)
    ]
    alone = [
        images.build_batch(decode_block(data, layout), meta, process, converter_for_block(process, meta))
        for data, meta in zip(payloads, metas, strict=True)
    ]
    return transit, alone


def test_images_built_per_run_give_the_rows_built_block_by_block() -> None:
    transit, alone = _image_blocks()
    assert images.VIEW.rows_from_transit is not None
    batches = list(images.VIEW.rows_from_transit(transit))
    assert len(batches) == 1  # one run: the blocks share their process's clock
    expected = pa.Table.from_batches(alone, images.SCHEMA).to_pylist()
    assert pa.Table.from_batches(batches, images.SCHEMA).to_pylist() == expected
    assert [row["block_id"] for row in expected].count("image-block-3") == 40
    assert [(row["name"], row["format"], row["payload_size"]) for row in expected[:3]] == [
        ("a", "png", 5),
        ("b", "jpg", 0),
        ("a", "png", 5),
    ]
    assert expected[-1]["data"] == bytes([39]) * 273 and expected[-1]["payload_size"] == 273


def test_clock_problems_of_many_blocks_are_each_blocks_own() -> None:
    frequency = 1_000_000
    process = replace(rust_fixtures.process(), tsc_frequency=frequency, start_ticks=0, start_time_ns=10**18)
    second = 1_000_000_000
    # (begin ticks, end ticks, begin ns offset, end ns offset): on time, 30 s off (within a minute),
    # 2 minutes late at its end, 3 minutes early at its begin, and one far past what int64 differences hold.
    shapes = [(0, frequency, 0, second), (0, frequency, 30 * second, 31 * second), (0, frequency, 0, 121 * second)]
    shapes += [(10 * frequency, 11 * frequency, 10 * second - 180 * second, 11 * second), (0, 1, -(2**62), 0)]
    metas = [
        replace(
            rust_fixtures.streams()[0].blocks[0].meta,
            block_id=f"b{i}",
            begin_ticks=begin,
            end_ticks=end,
            begin_time_ns=process.start_time_ns + begin_ns,
            end_time_ns=process.start_time_ns + end_ns,
        )
        for i, (begin, end, begin_ns, end_ns) in enumerate(shapes)
    ]
    found = clock_problems(process, metas)
    assert found == [clock_problem(process, meta) for meta in metas]
    assert [problem is not None for problem in found] == [False, False, True, True, True]
    assert found[2] == "its times are 120 s away from what its ticks say"
    in_range = clock_problems(process, metas[:4])  # the vectorized pass (the last block takes the scalar one)
    assert in_range == found[:4]
