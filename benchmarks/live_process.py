"""Querying a live process: one process receives blocks at a steady rate while a client queries it.

Against a running `spanlake serve`, a synthetic process posts B blocks at R blocks/s; every half second
a micromegas client runs `SELECT count(*) FROM view_instance('async_events', pid)` and checks the
count against the blocks acknowledged before it. Printed: query p50/p99 early (first fifth of the
blocks) and late (last fifth), next to the same query on the same blocks once posting has stopped
(quiescent), and the first query of a twin process that received the same blocks unqueried (cold).

    python benchmarks/live_process.py [--blocks 3000] [--rate 20] [--spans 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import micromegas
from _servers import spanlake_server
from live_process import LiveProcess

COUNT_SQL = "SELECT count(*) AS n FROM view_instance('async_events', '{process}')"


def timed_count(client: micromegas.flightsql.client.FlightSQLClient, process_id: str) -> tuple[float, int]:
    start = time.perf_counter()
    frame = client.query(COUNT_SQL.format(process=process_id))
    return time.perf_counter() - start, int(frame.n[0])


def post_steadily(live: LiveProcess, blocks: int, rate: float, done: threading.Event) -> None:
    start = time.perf_counter()
    for number in range(blocks):
        delay = start + number / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        live.post_block(number)
    done.set()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(label: str, latencies: list[float]) -> str:
    if not latencies:
        return f"{label:<34} (no query)"
    p50, p99 = statistics.median(latencies) * 1e3, percentile(latencies, 0.99) * 1e3
    return f"{label:<34} {len(latencies):>7} {p50:>9.0f} {p99:>9.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=20.0, help="blocks per second")
    parser.add_argument("--spans", type=int, default=20, help="async spans (and thread spans) per block")
    parser.add_argument("--quiescent-runs", type=int, default=20)
    args = parser.parse_args()
    with spanlake_server() as server:
        live = LiveProcess(server.http_url, spans_per_block=args.spans)
        live.announce()
        client = micromegas.connect(server.flightsql_url)
        done = threading.Event()
        poster = threading.Thread(target=post_steadily, args=(live, args.blocks, args.rate, done))
        poster.start()
        samples: list[tuple[int, float]] = []  # (blocks acknowledged before the query, latency)
        while not done.is_set():
            next_query = time.perf_counter() + 0.5
            acknowledged = len(live.acknowledged_now())
            latency, count = timed_count(client, live.process_id)
            if count < acknowledged * 2 * args.spans:
                raise SystemExit(f"query saw {count} rows, fewer than the {acknowledged} acknowledged blocks hold")
            samples.append((acknowledged, latency))
            time.sleep(max(0.0, next_query - time.perf_counter()))
        poster.join()
        time.sleep(2)  # let the last merges settle
        timed_count(client, live.process_id)
        time.sleep(2)
        quiescent = [timed_count(client, live.process_id)[0] for _ in range(args.quiescent_runs)]

        twin = LiveProcess(server.http_url, spans_per_block=args.spans)
        twin.announce()
        for number in range(args.blocks):
            twin.post_block(number)
        cold, _ = timed_count(client, twin.process_id)
        time.sleep(2)
        twin_warm = [timed_count(client, twin.process_id)[0] for _ in range(args.quiescent_runs)]

    fifth = args.blocks // 5
    early = [latency for acknowledged, latency in samples if acknowledged < fifth]
    late = [latency for acknowledged, latency in samples if acknowledged >= args.blocks - fifth]
    print(f"{args.blocks} blocks at {args.rate:g}/s, {args.spans} async spans per block, query every 0.5 s")
    print(f"{'':<34} {'queries':>7} {'p50 ms':>9} {'p99 ms':>9}")
    print(summary(f"live, early (< {fifth} blocks)", early))
    print(summary(f"live, late (>= {args.blocks - fifth} blocks)", late))
    print(summary("quiescent, same blocks", quiescent))
    print(summary("twin built at once, first query", [cold]))
    print(summary("twin built at once, warm", twin_warm))
    if late and quiescent:
        print(f"late p50 / quiescent p50: {statistics.median(late) / statistics.median(quiescent):.2f}")


if __name__ == "__main__":
    main()
