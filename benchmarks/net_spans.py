"""net_spans materialization: what building the span trees (views/net_spans.py: vectorized for a
well-formed stream, as here) costs next to decoding the same blocks, so its share of a partition build shows.

A synthetic Unreal `net` stream of B blocks (default 50) of about 10,000 events each: connections holding
objects of three properties each, and RPCs. Printed: medians of R runs (default 5) of

* decode: payload → decoded block (transit decoding, LZ4, dependencies), every block;
* rows: decoded blocks → net_spans record batches (event gathering, replay, columns);

in events/s, and rows / decode as a ratio of times.

    python benchmarks/net_spans.py [--blocks B] [--runs R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from transit_builder import NET_DEPENDENCY_TYPES, NET_OBJECT_TYPES, NetBlockWriter, metadata

from spanlake.lakehouse.transit.decode import decode_block, stream_layout
from spanlake.views import net_spans
from spanlake.views.meta import BlockMeta, ProcessMeta, StreamMeta
from spanlake.views.time import converter_from_latest_timing
from spanlake.views.view import TransitBlock

EVENTS_PER_BLOCK = 10_000
FREQUENCY = 1_000_000_000


def block_payload(first_tick: int) -> tuple[bytes, int]:
    """One block of whole connections; returns its payload and event count."""
    writer = NetBlockWriter()
    tick = first_tick
    while writer.count < EVENTS_PER_BLOCK:
        writer.event("NetConnectionBeginEvent", tick, "client-7", outgoing=1)
        for actor in range(20):
            writer.event("NetObjectBeginEvent", tick + 1, f"Actor_{actor}")
            for prop in ("Location", "Rotation", "Velocity"):
                writer.event("NetPropertyEvent", tick + 2, prop, bits=32)
            writer.event("NetObjectEndEvent", tick + 3, bits=100)
        writer.event("NetRPCBeginEvent", tick + 4, "ServerMove")
        writer.event("NetRPCEndEvent", tick + 5, bits=64)
        writer.event("NetConnectionEndEvent", tick + 6, bits=2100)
        tick += 10
    return writer.payload(), writer.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    process_id, stream_id = str(uuid.uuid4()), str(uuid.uuid4())
    process = ProcessMeta(process_id, "game", "u", "pc", 0, 0, FREQUENCY)
    stream = StreamMeta(stream_id, process_id, ("net",))
    layout = stream_layout(metadata(NET_DEPENDENCY_TYPES), metadata(NET_OBJECT_TYPES))
    payloads, metas, offset = [], [], 0
    for index in range(args.blocks):
        payload, count = block_payload(index * 10_000_000)
        begin, end = index * 10_000_000, (index + 1) * 10_000_000
        metas.append(BlockMeta(str(uuid.uuid4()), stream_id, process_id, begin, begin, end, end, count, offset, 0))
        payloads.append(payload)
        offset += count
    latest = converter_from_latest_timing(process, metas[-1].end_ticks, metas[-1].end_time_ns)

    decode_times, rows_times, rows = [], [], 0
    for _ in range(args.runs):
        start = time.perf_counter()
        decoded = [decode_block(payload, layout) for payload in payloads]
        decode_times.append(time.perf_counter() - start)
        transit = [TransitBlock(d, m, stream, process, latest) for d, m in zip(decoded, metas, strict=True)]
        start = time.perf_counter()
        rows = sum(batch.num_rows for batch in net_spans.VIEW.rows_from_transit(transit))
        rows_times.append(time.perf_counter() - start)

    decode, build = statistics.median(decode_times), statistics.median(rows_times)
    print(f"{args.blocks} blocks, {offset:,} events, {rows:,} net_spans rows, median of {args.runs} runs")
    print(f"  decode : {decode * 1000:8.1f} ms  {offset / decode / 1e6:6.2f} M events/s")
    print(f"  rows   : {build * 1000:8.1f} ms  {offset / build / 1e6:6.2f} M events/s")
    print(f"  rows / decode: {build / decode:.2f}x")


if __name__ == "__main__":
    main()
