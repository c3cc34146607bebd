"""Querying a live process: one process receives blocks at a steady rate while a client queries it.

Against a running `spanlake serve`, a synthetic process posts B blocks at R blocks/s; every half second
a micromegas client counts the rows of its `async_events` instance (and of its thread's `thread_spans`
instance), checking each count against the blocks acknowledged before it. Per view: query p50 late
(while the second half of the blocks arrive: each query finds blocks no partition holds yet) next to
the same query on the same blocks once posting has stopped (quiescent), and their ratio.

The machine is shared, so rounds alternate between this checkout, this checkout with every tail written
before it is read (`SPANLAKE_MEMORY_TAIL_OBJECTS=0`), optionally with live refresh
(`--live-refresh`: `SPANLAKE_LIVE_REFRESH_SECONDS`), and a baseline revision, each round on a fresh
server; the ratios printed are medians over rounds, with the load average seen meanwhile (1 minute).

    python benchmarks/live_process.py [--rounds 3] [--baseline bd56ccb] [--blocks 400] [--rate 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import micromegas
from _servers import source_env, spanlake_server
from live_process import LiveProcess

COUNTS = {
    "async_events": "SELECT count(*) AS n FROM view_instance('async_events', '{process}')",
    "thread_spans": "SELECT count(*) AS n FROM view_instance('thread_spans', '{stream}')",
}
# Rows a block gives at least: a begin and an end per async span, one row per thread span.
ROWS_PER_SPAN = {"async_events": 2, "thread_spans": 1}


def timed_count(client: micromegas.flightsql.client.FlightSQLClient, view: str, live: LiveProcess) -> tuple[float, int]:
    """The latency of one count query of the view's instance, and the count."""
    start = time.perf_counter()
    frame = client.query(COUNTS[view].format(process=live.process_id, stream=live.stream_id))
    return time.perf_counter() - start, int(frame.n[0])


def post_steadily(live: LiveProcess, blocks: int, rate: float, done: threading.Event) -> None:
    """Posts the blocks at `rate` per second."""
    start = time.perf_counter()
    for number in range(blocks):
        delay = start + number / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        live.post_block(number)
    done.set()


@dataclass(frozen=True)
class Round:
    """One round's p50 latencies (s) per view: late while posting, quiescent after."""

    late: dict[str, float]
    quiescent: dict[str, float]
    queries: int
    load: float


def one_round(revision: str | None, settings: dict[str, str], args: argparse.Namespace) -> Round:
    """A fresh server running `revision` (None: this checkout) with `settings`, a live process, its queries."""
    with source_env(revision) as env, spanlake_server(extra_env={**env, **settings}) as server:
        live = LiveProcess(server.http_url, spans_per_block=args.spans)
        live.announce()
        client = micromegas.connect(server.flightsql_url)
        done = threading.Event()
        poster = threading.Thread(target=post_steadily, args=(live, args.blocks, args.rate, done))
        poster.start()
        late: dict[str, list[float]] = {view: [] for view in COUNTS}
        queries = 0
        while not done.is_set():
            next_query = time.perf_counter() + 0.5
            acknowledged = len(live.acknowledged_now())
            for view in COUNTS:
                latency, count = timed_count(client, view, live)
                if count < acknowledged * ROWS_PER_SPAN[view] * args.spans:
                    raise SystemExit(f"{view}: {count} rows, fewer than the {acknowledged} acknowledged blocks hold")
                if acknowledged >= args.blocks * (1 - args.late_share):
                    late[view].append(latency)
                queries += 1
            time.sleep(max(0.0, next_query - time.perf_counter()))
        poster.join()
        load = os.getloadavg()[0]
        for view in COUNTS:
            timed_count(client, view, live)  # brings the last blocks in and queues their merges
        time.sleep(3)  # let the merges settle
        quiescent = {
            view: statistics.median(timed_count(client, view, live)[0] for _ in range(args.quiescent_runs))
            for view in COUNTS
        }
    return Round({view: statistics.median(values) for view, values in late.items()}, quiescent, queries, load)


def main() -> None:
    """Alternating rounds of this checkout and the baseline; prints each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side")
    parser.add_argument("--baseline", default="bd56ccb", help="git revision to compare with ('' for none)")
    parser.add_argument("--blocks", type=int, default=400)
    parser.add_argument("--late-share", type=float, default=0.5, help="share of the blocks whose queries are late")
    parser.add_argument("--live-refresh", action="store_true", help="also a side with live refresh on")
    parser.add_argument("--rate", type=float, default=20.0, help="blocks per second")
    parser.add_argument("--spans", type=int, default=20, help="async spans (and thread spans) per block")
    parser.add_argument("--quiescent-runs", type=int, default=20)
    args = parser.parse_args()
    sides = {"this checkout": (None, {}), "this checkout, tail written": (None, {"SPANLAKE_MEMORY_TAIL_OBJECTS": "0"})}
    if args.live_refresh:
        sides["this checkout, live refresh"] = (None, {"SPANLAKE_LIVE_REFRESH_SECONDS": "60"})
    if args.baseline:
        sides[f"baseline {args.baseline}"] = (args.baseline, {})
    rounds: dict[str, list[Round]] = {side: [] for side in sides}
    print(f"{args.blocks} blocks at {args.rate:g}/s, {args.spans} spans per block, queries every 0.5 s")
    print(f"{'round':<32} {'view':<13} {'late p50 ms':>11} {'quiet p50 ms':>12} {'ratio':>6} {'load':>5}")
    for number in range(args.rounds):
        for side, (revision, settings) in sides.items():
            result = one_round(revision, settings, args)
            rounds[side].append(result)
            for view in COUNTS:
                late, quiet = result.late[view], result.quiescent[view]
                label = f"{side} #{number + 1}"
                print(
                    f"{label:<32} {view:<13} {late * 1e3:>11.1f} {quiet * 1e3:>12.1f}"
                    f" {late / quiet:>6.2f} {result.load:>5.1f}",
                    flush=True,
                )
    print("medians over rounds:")
    for side, results in rounds.items():
        for view in COUNTS:
            late = statistics.median(r.late[view] for r in results)
            quiet = statistics.median(r.quiescent[view] for r in results)
            ratio = statistics.median(r.late[view] / r.quiescent[view] for r in results)
            print(
                f"{side:<32} {view:<13} {late * 1e3:>11.1f} {quiet * 1e3:>12.1f} {ratio:>6.2f}"
                f" {statistics.median(r.load for r in results):>5.1f}"
            )


if __name__ == "__main__":
    main()
