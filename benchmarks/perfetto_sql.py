"""The whole `perfetto_trace_chunks(...)` SQL call: spans/s and peak memory, in process and end to end.

A process with S thread spans and S async spans (transit blocks built like the Rust producer's) is
materialized once; then the trace is read in full R times:

* in process: through a DataFusion session of this process (peak RSS of a fresh child per size);
* end to end, against a running `spanlake serve`: with the micromegas client
  (`micromegas.perfetto.write_process_trace`) and with `spanlake perfetto`, printing the server's
  peak RSS during the pulls above its idle RSS before them (views already materialized), and its RSS
  once they are over.

    python benchmarks/perfetto_sql.py [--spans S] [--runs R] [--in-process-only]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import PostgresServer
from transit_builder import ThreadBlockWriter, thread_stream_metadata

from spanlake.lakehouse.ingest import store_block
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.session import make_session_context
from spanlake.lakehouse.records import BlockRecord, ProcessRecord, StreamRecord
from spanlake.lakehouse.settings import Settings
from spanlake.lakehouse.timestamps import format_rfc3339_ns

BLOCK_SPANS = 50_000


def thread_block(spans: int, first_tick: int) -> bytes:
    """Spans nested 3 deep, closed in order."""
    writer = ThreadBlockWriter()
    descs = [writer.span_desc(f"app::function_{i}", line=i) for i in range(30)]
    tick = first_tick
    for i in range(0, spans, 3):
        for depth in range(3):
            writer.thread(True, descs[(i + depth) % 30], tick)
            tick += 5
        for depth in reversed(range(3)):
            writer.thread(False, descs[(i + depth) % 30], tick)
            tick += 5
    return writer.payload()


def async_block(spans: int, first_id: int, first_tick: int) -> bytes:
    """Async spans with unique ids: trees of 4 (a root and its nested children), overlapping in time."""
    writer = ThreadBlockWriter()
    descs = [writer.span_desc(f"app::task_{i}", line=i) for i in range(20)]
    tick = first_tick
    for i in range(0, spans, 4):
        root = first_id + i
        ids = [root, root + 1, root + 2, root + 3]
        parents = [0, root, root + 1, root]
        for depth, (span_id, parent) in enumerate(zip(ids, parents, strict=True)):
            writer.async_event(True, descs[(i + depth) % 20], span_id, parent, tick + depth * 3, min(depth, 2))
        for depth, (span_id, parent) in reversed(list(enumerate(zip(ids, parents, strict=True)))):
            writer.async_event(False, descs[(i + depth) % 20], span_id, parent, tick + 40 - depth * 3, min(depth, 2))
        tick += 25  # the next tree starts while this one is still open
    return writer.payload()


def load(lake: Lake, spans: int) -> tuple[str, int, int]:
    process_id, stream_id = uuid.uuid4(), uuid.uuid4()
    start = time.time_ns() - 600_000_000_000
    dependencies, objects = thread_stream_metadata()
    lake.loop.run(
        lake.catalog.insert_process(
            ProcessRecord(
                process_id, "bench", "user", "user", "host", "linux", "cpu", 1_000_000_000, start, 0, None, {}
            )
        )
    )
    lake.loop.run(
        lake.catalog.insert_stream(
            StreamRecord(
                stream_id, process_id, dependencies, objects, ["cpu"], {"thread-name": "main", "thread-id": "1"}
            )
        )
    )
    offset = ticks = 0
    for index in range(-(-spans // BLOCK_SPANS)):
        for payload, nb_objects in (
            (thread_block(BLOCK_SPANS, ticks), BLOCK_SPANS // 3 * 6),
            (async_block(BLOCK_SPANS, 1 + index * BLOCK_SPANS, ticks), 2 * BLOCK_SPANS),
        ):
            end_ticks = ticks + nb_objects * 13
            record = BlockRecord(
                uuid.uuid4(),
                stream_id,
                process_id,
                start + ticks,
                ticks,
                start + end_ticks,
                end_ticks,
                nb_objects,
                offset,
                len(payload),
            )
            lake.loop.run(store_block(lake, record, payload))
            offset += nb_objects
            ticks = end_ticks
    return str(process_id), start, start + ticks


def read_trace(lake: Lake, process_id: str, begin: int, end: int) -> tuple[int, int]:
    sql = (
        f"SELECT chunk_id, chunk_data FROM perfetto_trace_chunks('{process_id}', 'both',"
        f" TIMESTAMP '{format_rfc3339_ns(begin)}', TIMESTAMP '{format_rfc3339_ns(end + 1)}')"
    )
    chunks = size = 0
    for batch in make_session_context(lake).sql(sql).execute_stream():
        column = batch.to_pyarrow().column("chunk_data")
        chunks += len(column)
        size += sum(len(c) for c in column.to_pylist())
    return chunks, size


def measure(spans: int, runs: int) -> dict:
    postgres = PostgresServer()  # kept referenced: the embedded server lives as long as the object
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        lake = Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=Path(tmp).as_uri()))
        try:
            process_id, begin, end = load(lake, spans)
            start = time.perf_counter()
            read_trace(lake, process_id, begin, end)  # materializes the views just in time
            cold = time.perf_counter() - start
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                chunks, size = read_trace(lake, process_id, begin, end)
                times.append(time.perf_counter() - start)
            return {
                "spans": 2 * spans,
                "cold_s": cold,
                "warm_s": statistics.median(times),
                "chunks": chunks,
                "bytes": size,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        finally:
            lake.close()


def server_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class PeakSampler:
    """Samples a process's RSS every 20 ms on a thread, keeping the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, server_rss_kb(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def end_to_end(spans: int, runs: int) -> dict:
    """Pulls through a running server: the micromegas client and `spanlake perfetto`."""
    import micromegas
    from _servers import spanlake_server

    with spanlake_server() as server:
        lake = Lake.open(Settings(database_url=server.database_url, object_store_uri=server.object_store_uri))
        try:
            process_id, begin, end = load(lake, spans)
        finally:
            lake.close()
        client = micromegas.connect(server.flightsql_url)
        window = (
            dt.datetime.fromtimestamp(begin / 1e9, dt.UTC),
            dt.datetime.fromtimestamp(end / 1e9 + 1, dt.UTC),
        )
        with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
            trace = Path(tmp) / "trace.pftrace"
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                micromegas.perfetto.write_process_trace(client, process_id, *window, str(trace))
            cold = time.perf_counter() - start  # materializes the views just in time
            idle_kb = server_rss_kb(server.process.pid)
            client_times, cli_times = [], []
            with PeakSampler(server.process.pid) as sampler:
                for _ in range(runs):
                    start = time.perf_counter()
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        micromegas.perfetto.write_process_trace(client, process_id, *window, str(trace))
                    client_times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--process-id", process_id,
                         "--begin", window[0].isoformat(), "--end", window[1].isoformat(), "-o", str(trace),
                         "--uri", server.flightsql_url],
                        check=True, capture_output=True,
                    )  # fmt: skip
                    cli_times.append(time.perf_counter() - start)
            size = trace.stat().st_size
        return {
            "spans": 2 * spans,
            "cold_s": cold,
            "client_s": statistics.median(client_times),
            "cli_s": statistics.median(cli_times),
            "bytes": size,
            "idle_mb": idle_kb / 1024,
            "peak_above_idle_mb": (sampler.peak_kb - idle_kb) / 1024,
            "after_mb": server_rss_kb(server.process.pid) / 1024,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=500_000, help="thread spans (as many async spans)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-process-only", action="store_true", help="skip the end-to-end pulls")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.spans, args.runs)))
        return
    print("in process (a DataFusion session of this process):")
    print(
        f"{'spans':>10} {'cold (JIT) s':>13} {'warm s':>8} {'spans/s warm':>13} {'chunks':>8} {'MB':>7}"
        f" {'peak RSS MB':>12}"
    )
    for spans in (args.spans // 10, args.spans):
        out = (
            subprocess.run(
                [sys.executable, __file__, "--child", "--spans", str(spans), "--runs", str(args.runs)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        print(
            f"{r['spans']:>10,} {r['cold_s']:>13.2f} {r['warm_s']:>8.2f} {r['spans'] / r['warm_s']:>13,.0f}"
            f" {r['chunks']:>8,} {r['bytes'] / 1e6:>7.1f} {r['peak_rss_mb']:>12.0f}"
        )

    if args.in_process_only:
        return
    print("end to end (a running spanlake serve):")
    print(
        f"{'spans':>10} {'cold (JIT) s':>13} {'client s':>9} {'spans/s':>10} {'cli s':>7} {'spans/s':>10}"
        f" {'MB':>6} {'idle RSS':>9} {'peak above idle':>16} {'RSS after':>10}"
    )
    for spans in (args.spans // 10, args.spans):
        r = end_to_end(spans, args.runs)
        print(
            f"{r['spans']:>10,} {r['cold_s']:>13.2f} {r['client_s']:>9.2f} {r['spans'] / r['client_s']:>10,.0f}"
            f" {r['cli_s']:>7.2f} {r['spans'] / r['cli_s']:>10,.0f} {r['bytes'] / 1e6:>6.1f}"
            f" {r['idle_mb']:>9.0f} {r['peak_above_idle_mb']:>16.0f} {r['after_mb']:>10.0f}"
        )


if __name__ == "__main__":
    main()
