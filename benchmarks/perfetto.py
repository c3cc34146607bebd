"""Perfetto trace encoding: spans/s of spanlake's writer (views/perfetto.py) on 1M thread spans and
1M async spans, side by side with a baseline that builds one perfetto `TracePacket` protobuf message
per packet (prost field order, same chunking, so the same bytes; run on fewer spans and
extrapolated), medians and ratios; the async lane encoder (the lane assignment alone, and the whole
async encoding with lanes) next to the previous span-by-span lane assigner (tests/lane_reference.py;
same lanes, same bytes); and peak memory for 100k vs 1M spans (each in a fresh process, spans
generated lazily, chunks dropped as they come).

    python benchmarks/perfetto.py [--spans N] [--baseline-spans N] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import xxhash

from spanlake.views.perfetto import writer as perfetto_writer
from spanlake.views.perfetto.lanes import AsyncLaneAssigner
from spanlake.views.perfetto.writer import AsyncLayout, PerfettoThread, trace_chunks


def perfetto_protos() -> ModuleType:
    """This script is named like the `perfetto` package: import the package, not the script."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2

    return perfetto_trace_pb2


_PROTOS = perfetto_protos()
# tests/ holds the reference writer and the previous lane assigner (after the path fix above).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from lane_reference import SequentialLaneAssigner  # noqa: E402
from perfetto_check import ReferenceWriter  # noqa: E402

TracePacket, TrackEvent = _PROTOS.TracePacket, _PROTOS.TrackEvent
PROCESS_ID = "34d7c06d-3163-4111-863e-c5fc09d22d51"
THREADS = [PerfettoThread(f"stream-{i}", 1000 + i, f"worker-{i}") for i in range(8)]
BATCH_ROWS = 8192
EPOCH_NS = 1_700_000_000_000_000_000
TIMESTAMP = pa.timestamp("ns", tz="+00:00")
NAMES = pa.array([f"module::function_{i}" for i in range(200)])
TARGETS = pa.array([f"crate::module_{i}" for i in range(20)])
FILES = pa.array([f"src/module_{i}.rs" for i in range(30)])


def span_batches(count: int, seed: int, with_ids: bool) -> Iterator[pa.RecordBatch]:
    """`count` spans in begin order, 1 µs apart, lasting 0.1-20 µs (async: ~10 open at a time), 70%
    of them children of one of the 4 spans before them; dictionary strings like the views."""
    rng = np.random.default_rng(seed)
    for offset in range(0, count, BATCH_ROWS):
        rows = min(BATCH_ROWS, count - offset)
        ids = np.arange(offset + 1, offset + rows + 1)
        begin = EPOCH_NS + ids * 1000
        codes = rng.integers(0, len(NAMES), rows).astype(np.int32)
        columns = {
            "begin": pa.array(begin, TIMESTAMP),
            "end": pa.array(begin + rng.integers(100, 20_000, rows), TIMESTAMP),
            "name": pa.DictionaryArray.from_arrays(codes, NAMES),
            "target": pa.DictionaryArray.from_arrays(codes % len(TARGETS), TARGETS),
            "filename": pa.DictionaryArray.from_arrays(codes % len(FILES), FILES),
            "line": pa.array(codes.astype(np.uint32) * 7 + 1, pa.uint32()),
        }
        if with_ids:
            children = rng.random(rows) < 0.7
            columns["span_id"] = pa.array(ids)
            columns["parent_span_id"] = pa.array(np.where(children, ids - rng.integers(1, 5, rows), 0))
        yield pa.record_batch(columns)


def thread_workload(count: int) -> Callable[[str], list[pa.RecordBatch]]:
    per_thread = count // len(THREADS)
    batches = {t.stream_id: list(span_batches(per_thread, i, False)) for i, t in enumerate(THREADS)}
    return batches.__getitem__


def spanlake_chunks(
    span_types: str, thread_spans: Callable[[str], object], async_spans: Callable[[], object], layout: AsyncLayout
) -> Iterator[bytes]:
    return trace_chunks(PROCESS_ID, "/bin/bench", THREADS, thread_spans, async_spans, span_types, async_layout=layout)


def batch_rows(batches: list[pa.RecordBatch]) -> Iterator[tuple]:
    """(begin, end, name, target, filename, line) of the spans with end > begin."""
    for batch in batches:
        columns = [batch.column(name).cast(pa.int64()).to_pylist() for name in ("begin", "end")]
        columns += [batch.column(name).to_pylist() for name in ("name", "target", "filename", "line")]
        yield from (row for row in zip(*columns, strict=True) if row[1] > row[0])


def baseline_chunks(span_types: str, thread_spans: Callable[[str], list], async_spans: list) -> list[bytes]:
    """One protobuf message per packet (the tests' reference writer): the same bytes as spanlake's
    single track, the slow way."""
    writer = ReferenceWriter(PROCESS_ID)
    writer.descriptors("/bin/bench", THREADS, with_async=span_types == "async")
    if span_types == "thread":
        for thread in THREADS:
            writer.spans(batch_rows(thread_spans(thread.stream_id)), xxhash.xxh64_intdigest(thread.stream_id.encode()))
    else:
        writer.spans(batch_rows(async_spans), writer.async_uuid)
    writer.flush()
    return writer.chunks


def median_seconds(run: Callable[[], object], runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def drain(chunks: Iterator[bytes]) -> None:
    for _ in chunks:
        pass


def throughput(spans: int, baseline_spans: int, runs: int) -> None:
    threads, threads_small = thread_workload(spans), thread_workload(baseline_spans)
    async_batches = list(span_batches(spans, 99, True))
    async_small = list(span_batches(baseline_spans, 99, True))
    for span_types in ("thread", "async"):  # same output, so a fair comparison
        ours = list(spanlake_chunks(span_types, threads_small, lambda: async_small, AsyncLayout.SINGLE_TRACK))
        assert ours == baseline_chunks(span_types, threads_small, async_small), f"{span_types} outputs differ"

    print(f"{'workload':<34}{'spanlake spans/s':>18}{'baseline spans/s':>18}{'ratio':>8}")
    for label, span_types, layout in (
        ("thread spans", "thread", AsyncLayout.SINGLE_TRACK),
        ("async spans, single track", "async", AsyncLayout.SINGLE_TRACK),
        ("async spans, lanes", "async", AsyncLayout.LANES),
    ):
        seconds = median_seconds(
            lambda t=span_types, la=layout: drain(spanlake_chunks(t, threads, lambda: async_batches, la)), runs
        )
        base = median_seconds(lambda t=span_types: baseline_chunks(t, threads_small, async_small), runs)
        ours_rate, base_rate = spans / seconds, baseline_spans / base
        print(f"{label:<34}{ours_rate:>18,.0f}{base_rate:>18,.0f}{ours_rate / base_rate:>7.1f}x")

    print(f"(spanlake on {spans:,} spans, baseline on {baseline_spans:,}; medians of {runs} runs)")
    lane_encoder(async_batches, runs)


class PreviousLaneAssigner:
    """The previous lane assigner behind the current interface, columns turned into lists as the
    writer did for it."""

    def __init__(self) -> None:
        self._assigner = SequentialLaneAssigner()

    def assign(self, span_ids: pa.Array, parent_ids: pa.Array, begins: np.ndarray, ends: np.ndarray) -> np.ndarray:
        parents = parent_ids.to_pylist() if parent_ids.null_count else parent_ids.to_numpy().tolist()
        return self._assigner.assign(span_ids.to_numpy().tolist(), parents, begins.tolist(), ends.tolist())


def lane_encoder(async_batches: list[pa.RecordBatch], runs: int) -> None:
    """The lane assignment alone and the whole async encoding with lanes, with the numpy assigner and
    the previous one (same lanes, same bytes)."""
    spans = sum(batch.num_rows for batch in async_batches)
    columns = [
        (
            batch.column("span_id"),
            batch.column("parent_span_id"),
            batch.column("begin").cast(pa.int64()).to_numpy(),
            batch.column("end").cast(pa.int64()).to_numpy(),
        )
        for batch in async_batches
    ]

    def assign_all(assigner_class: type) -> list[np.ndarray]:
        assigner = assigner_class()
        return [assigner.assign(*batch_columns) for batch_columns in columns]

    def encode_all(assigner_class: type, consume: Callable[[Iterator[bytes]], object] = drain) -> object:
        original = perfetto_writer.AsyncLaneAssigner
        perfetto_writer.AsyncLaneAssigner = assigner_class
        try:
            return consume(spanlake_chunks("async", None, lambda: async_batches, AsyncLayout.LANES))
        finally:
            perfetto_writer.AsyncLaneAssigner = original

    lanes, previous_lanes = assign_all(AsyncLaneAssigner), assign_all(PreviousLaneAssigner)
    assert all(np.array_equal(a, b) for a, b in zip(lanes, previous_lanes, strict=True)), "lanes differ"
    assert encode_all(AsyncLaneAssigner, list) == encode_all(PreviousLaneAssigner, list), "lane bytes differ"
    print(f"\n{'async lane encoder':<34}{'numpy spans/s':>18}{'previous spans/s':>18}{'ratio':>8}")
    for label, run in (
        ("lane assignment alone", assign_all),
        ("async spans, lanes (whole)", encode_all),
    ):
        ours = spans / median_seconds(lambda r=run: r(AsyncLaneAssigner), runs)
        previous = spans / median_seconds(lambda r=run: r(PreviousLaneAssigner), runs)
        print(f"{label:<34}{ours:>18,.0f}{previous:>18,.0f}{ours / previous:>7.1f}x")
    print(f"({spans:,} async spans, {lanes_used(lanes)} lanes; medians of {runs} runs)")


def lanes_used(lanes: list[np.ndarray]) -> int:
    return int(max(batch.max() for batch in lanes)) + 1


def peak_rss() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss, it does not carry over the
    parent's peak across fork + exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def memory_child(spans: int, traced: bool) -> None:
    """Encode a 'both' trace (lanes) of `spans` thread + `spans` async spans generated lazily; print
    the process's max RSS (imports included), or (traced) the tracemalloc peak, which covers Python
    and numpy allocations (tracemalloc inflates the RSS, hence two runs)."""
    if traced:
        tracemalloc.start()
    per_thread = spans // len(THREADS)
    total = 0
    for chunk in spanlake_chunks(
        "both",
        lambda sid: span_batches(per_thread, int(sid.rsplit("-", 1)[1]), False),
        lambda: span_batches(spans, 99, True),
        AsyncLayout.LANES,
    ):
        total += len(chunk)
    figures = {"trace_bytes": total, "arrow_pool_peak": pa.default_memory_pool().max_memory()}
    if traced:
        figures["python_numpy_peak"] = tracemalloc.get_traced_memory()[1]
    else:
        figures["max_rss"] = peak_rss()
    print(json.dumps(figures))


def memory(sizes: list[int]) -> None:
    header = ("trace MB", "py+numpy peak MB", "arrow peak MB", "max RSS MB")
    print(f"\n{'spans (thread + async)':<26}" + "".join(f"{h:>19}" for h in header))
    for spans in sizes:
        figures = {}
        for mode in ("--traced", "--no-traced"):
            command = [sys.executable, __file__, "--memory-child", str(spans), mode]
            figures.update(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout))
        keys = ("trace_bytes", "python_numpy_peak", "arrow_pool_peak", "max_rss")
        print(f"{f'{spans:,} + {spans:,}':<26}" + "".join(f"{figures[k] / 1e6:>19.1f}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--baseline-spans", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action=argparse.BooleanOptionalAction, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.traced)
        return
    throughput(args.spans, args.baseline_spans, args.runs)
    memory([args.spans // 10, args.spans])


if __name__ == "__main__":
    main()
