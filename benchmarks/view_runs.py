"""Views over many small blocks: rows built per run of blocks against the previous code (`--baseline`,
a git revision, default `main`), in alternating processes.

For `images` (transit blocks, decoded together beforehand) and the OTLP rows of `log_entries`,
`measures` and `otel_spans` (blocks parsed beforehand), it times the view's rows of `--blocks`
blocks of `--records` records each, as materialization builds a partition's, and prints the medians
of `--repeats` rounds and this code's time over the previous code's.

    python benchmarks/view_runs.py [--blocks 400] [--records 50] [--repeats 5] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VIEWS = ("images", "log_entries", "measures", "otel_spans")


def image_blocks(blocks: int, records: int) -> tuple[Callable[[list[Any]], Iterator[Any]], list[Any]]:
    """The images view's rows and its input: `blocks` image blocks decoded together."""
    from dataclasses import replace

    import rust_fixtures
    from transit_builder import BufferWriter, dyn_string, metadata, payload, udt

    from spanlake.lakehouse.transit.decode import decode_blocks, stream_layout
    from spanlake.views import images
    from spanlake.views.view import TransitBlock

    layout = stream_layout(metadata([]), metadata([udt("ImageEvent", 0)]))
    process = replace(rust_fixtures.process(), tsc_frequency=1_000_000)
    stream = rust_fixtures.streams_tagged("image")[0]
    payloads = []
    for block in range(blocks):
        objects = BufferWriter()
        for ticks in range(block * records, (block + 1) * records):
            data = bytes([ticks % 256]) * 64
            body = struct.pack("<q", ticks) + dyn_string(f"frame{ticks % 9}") + dyn_string("png")
            objects.dynamic(0, body + struct.pack("<I", len(data)) + data)
        payloads.append(payload(b"", objects.getvalue()))
    metas = [replace(stream.blocks[0].meta, block_id=f"b{i}", nb_objects=records) for i in range(blocks)]
    convert = rust_fixtures.latest_timing_converter()
    decoded = decode_blocks(payloads, layout)
    transit = [TransitBlock(d, m, stream.meta, process, convert) for d, m in zip(decoded, metas, strict=True)]
    return images.VIEW.rows_from_transit, transit


def otlp_blocks(view_name: str, blocks: int, records: int) -> tuple[Callable[[list[Any]], Iterator[Any]], list[Any]]:
    """The view's OTLP rows and its input: `blocks` parsed blocks of `records` records of one process."""
    import otlp_throughput

    from spanlake.lakehouse.otlp.decode import otlp_block
    from spanlake.server import otlp
    from spanlake.views import log_entries, measures, otel_spans

    view, signal, build = {
        "log_entries": (log_entries.VIEW, "logs", otlp_throughput.logs),
        "measures": (measures.VIEW, "metrics", otlp_throughput.metrics),
        "otel_spans": (otel_spans.VIEW, "traces", otlp_throughput.traces),
    }[view_name]
    request = build(records)
    if signal == "metrics":  # built by the thousand points
        del request.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[records:]
    body = request.SerializeToString()
    [stored] = otlp.blocks_from_request(signal, body, otlp.PROTOBUF, None)
    process, meta = otlp_throughput.metas(stored)
    parsed = otlp_block(view, view.otlp_format, stored.payload, process, meta)
    return view.rows_from_otlp, [parsed] * blocks


def worker(view_name: str, blocks: int, records: int) -> None:
    """Prints the seconds the view's rows of its blocks take, once (after one untimed build)."""
    rows, inputs = image_blocks(blocks, records) if view_name == "images" else otlp_blocks(view_name, blocks, records)
    batches = list(rows(inputs))
    started = time.perf_counter()
    list(rows(inputs))
    elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "rows": sum(batch.num_rows for batch in batches)}))


def timed(view_name: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    """One worker process's answer for this view on the code `env` names."""
    command = [sys.executable, __file__, "--worker", view_name, "--blocks", str(args.blocks)]
    command += ["--records", str(args.records)]
    merged = {**os.environ, **env}
    merged.pop("PYTHONDONTWRITEBYTECODE", None)
    result = subprocess.run(command, env=merged, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=400)
    parser.add_argument("--records", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default="main", help="git revision of the previous code")
    parser.add_argument("--worker", choices=VIEWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.blocks, args.records)
        return
    from _servers import source_env

    times: dict[tuple[str, str], list[float]] = {}
    rows: dict[tuple[str, str], int] = {}
    with source_env(None) as here, source_env(args.baseline) as previous:
        for _ in range(args.repeats):
            for view_name in VIEWS:
                for code, env in (("this", here), ("previous", previous)):
                    answer = timed(view_name, args, env)
                    times.setdefault((view_name, code), []).append(answer["seconds"])
                    rows[view_name, code] = answer["rows"]
    print(f"{args.blocks} blocks of {args.records} records; load {os.getloadavg()[0]:.2f}")
    print(f"{'view':12} {'rows':>7} {'this ms':>8} {'previous ms':>12} {'ratio':>6}")
    for view_name in VIEWS:
        assert rows[view_name, "this"] == rows[view_name, "previous"], view_name
        ours, theirs = (statistics.median(times[view_name, code]) * 1e3 for code in ("this", "previous"))
        print(f"{view_name:12} {rows[view_name, 'this']:7} {ours:8.1f} {theirs:12.1f} {ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
