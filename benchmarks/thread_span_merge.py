"""A thread_spans merge from the partitions' rows against the rebuild from the blocks it replaces.

A synthetic thread (a `frame` span per block, begun at the end of one block and ended in the next, with
nested `work` spans) is cut into 8 partitions of B blocks; each partition is written to parquet with its
notes. Timed, alternately: decoding the payloads of all the blocks and building their call tree (what a
merge did before), and reading the 8 files and joining them (`View.merge_rows`). Prints medians and
their ratio, after checking both give the same rows.

    python benchmarks/thread_span_merge.py [--blocks-per-partition 128] [--spans 50] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from transit_builder import ThreadBlockWriter, thread_stream_metadata

from spanlake.lakehouse.transit.decode import decode_block, stream_layout
from spanlake.views import thread_spans
from spanlake.views.meta import BlockMeta, ProcessMeta, StreamMeta
from spanlake.views.time import TickConverter
from spanlake.views.view import PartitionRows, TransitBlock

PARTITIONS = 8
BLOCK_TICKS = 1_000_000
STREAM = StreamMeta("stream", "process", ("cpu",), {"thread-name": "main", "thread-id": "1"})
PROCESS = ProcessMeta("process", "exe", "user", "host", 0, 0, 1_000_000_000)
CONVERT = TickConverter(0, 0, 1_000_000_000)


def payloads(blocks: int, spans: int) -> list[tuple[BlockMeta, bytes]]:
    """Each block ends the previous block's frame, holds `spans` nested work spans, begins a frame."""
    result = []
    offset = 0
    for number in range(blocks):
        writer = ThreadBlockWriter()
        frame, work = writer.span_desc("frame"), writer.span_desc("work")
        start = number * BLOCK_TICKS
        writer.thread(number == 0, frame, start + 1)
        step = BLOCK_TICKS // (2 * spans + 4)
        for index in range(spans):
            writer.thread(True, work, start + step * (index + 1))
            writer.thread(False, work, start + step * (index + 1) + step // 2)
        writer.thread(True, frame, start + BLOCK_TICKS - 1)
        objects = 2 * spans + 2
        meta = BlockMeta(
            f"b{number}", STREAM.stream_id, "process", start, start, start, start + BLOCK_TICKS, objects, offset, 0
        )
        result.append((meta, writer.payload()))
        offset += objects
    return result


def decoded_rows(blocks: list[tuple[BlockMeta, bytes]]) -> pa.Table:
    """Payloads decoded and built at once, as a merge without notes does."""
    layout = stream_layout(*thread_stream_metadata())
    transit = [TransitBlock(decode_block(payload, layout), meta, STREAM, PROCESS, CONVERT) for meta, payload in blocks]
    return pa.Table.from_batches(list(thread_spans.VIEW.rows_from_transit(transit)))  # with its notes


def joined_rows(files: list[Path]) -> pa.Table:
    """The partition files read and joined from their rows and notes."""
    parts = []
    for file in files:
        parquet = pq.ParquetFile(file)
        parts.append(PartitionRows(parquet.read(), parquet.metadata.metadata))
    merged = thread_spans.VIEW.merge_rows(parts)
    assert merged is not None
    return merged


def main() -> None:
    """Writes the partitions, checks both ways agree, then times them alternately."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks-per-partition", type=int, default=128)
    parser.add_argument("--spans", type=int, default=50, help="work spans per block")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    blocks = payloads(PARTITIONS * args.blocks_per_partition, args.spans)
    with tempfile.TemporaryDirectory(prefix="thread-merge-") as tmp:
        files = []
        for index in range(PARTITIONS):
            part = blocks[index * args.blocks_per_partition : (index + 1) * args.blocks_per_partition]
            table = decoded_rows(part)
            files.append(Path(tmp) / f"{index}.parquet")
            with pq.ParquetWriter(files[-1], thread_spans.SCHEMA, compression="lz4") as writer:
                writer.write_table(table.replace_schema_metadata(None))
                writer.add_key_value_metadata(table.schema.metadata)
        expected = decoded_rows(blocks)
        if joined_rows(files).to_pylist() != expected.to_pylist():
            raise SystemExit("the join differs from the rebuild")
        timings: dict[str, list[float]] = {"rebuild from blocks": [], "join from rows": []}
        ways = {"rebuild from blocks": lambda: decoded_rows(blocks), "join from rows": lambda: joined_rows(files)}
        for _ in range(args.runs):
            for label, run in ways.items():
                start = time.perf_counter()
                run()
                timings[label].append(time.perf_counter() - start)
    rows = expected.num_rows
    print(f"{PARTITIONS} partitions of {args.blocks_per_partition} blocks, {args.spans} spans per block: {rows} rows")
    for label, values in timings.items():
        print(f"{label:<22} median {statistics.median(values) * 1e3:8.1f} ms over {args.runs} runs")
    ratio = statistics.median(timings["rebuild from blocks"]) / statistics.median(timings["join from rows"])
    print(f"rebuild / join: {ratio:.1f}×")


if __name__ == "__main__":
    main()
