"""Querying a live process: one process receives blocks at a steady rate while a client queries it.

Against a running `spanlake serve`, a synthetic process posts B blocks at R blocks/s; every half second
a micromegas client counts the rows of its `async_events` instance (and of its thread's `thread_spans`
instance), checking each count against the blocks acknowledged before it. Per view: query p50 late
(while the second half of the blocks arrive: each query finds blocks no partition holds yet) next to
the same query on the same blocks once posting has stopped (quiescent), and their ratio.

The machine is shared, so rounds alternate between this checkout, this checkout without decoding ahead
(`SPANLAKE_DECODE_AHEAD_OBJECTS=0`: a late query decodes its tail), this checkout with every tail written
before it is read (`SPANLAKE_MEMORY_TAIL_OBJECTS=0`; `--without-tail-written` leaves it out), optionally
with live refresh (`--live-refresh`: `SPANLAKE_LIVE_REFRESH_SECONDS`), and a baseline revision, each round on a fresh
server; the ratios printed are medians over rounds, with the load average seen meanwhile (1 minute).
Besides the client's wall time, each query's CPU time in the server (all its threads, from
/proc/PID/task/*/schedstat, read around the query) is printed: at a high load the wall time is mostly
waiting for a core. A late query's CPU may include a block's ingestion that overlapped it. CPU/blk is
the server's CPU while the blocks arrived (their ingestion, decoding ahead, the queries and the partitions
written meanwhile) per block posted.

    python benchmarks/live_process.py [--rounds 3] [--baseline bd56ccb] [--blocks 400] [--rate 20]
        [--without-tail-written]

To run a snapshot of this checkout while editing it, name a directory holding it as `spanlake` in
PYTHONPATH (the servers inherit it; a baseline's own PYTHONPATH replaces it).
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


@dataclass(frozen=True)
class Timed:
    """One query: its latency and the server's CPU time meanwhile (s), and the count."""

    wall: float
    cpu: float
    count: int


def server_cpu_seconds(pid: int) -> float:
    """CPU time the server's threads have run so far (ns-precise, unlike /proc/PID/stat's ticks)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def timed_count(client: micromegas.flightsql.client.FlightSQLClient, view: str, live: LiveProcess, pid: int) -> Timed:
    """One count query of the view's instance: its latency, the server's CPU time, the count."""
    cpu = server_cpu_seconds(pid)
    start = time.perf_counter()
    frame = client.query(COUNTS[view].format(process=live.process_id, stream=live.stream_id))
    wall = time.perf_counter() - start
    return Timed(wall, server_cpu_seconds(pid) - cpu, int(frame.n[0]))


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
    """One round's p50 latencies and server CPU times (s) per view: late while posting, quiescent after."""

    late: dict[str, float]
    quiescent: dict[str, float]
    late_cpu: dict[str, float]
    quiescent_cpu: dict[str, float]
    queries: int
    load: float
    cpu_per_block: float  # the server's CPU while the blocks arrived (their ingestion and the queries), per block


def one_round(revision: str | None, settings: dict[str, str], args: argparse.Namespace) -> Round:
    """A fresh server running `revision` (None: this checkout) with `settings`, a live process, its queries."""
    with source_env(revision) as env, spanlake_server(extra_env={**env, **settings}) as server:
        assert server.process is not None
        pid = server.process.pid
        live = LiveProcess(server.http_url, spans_per_block=args.spans)
        live.announce()
        client = micromegas.connect(server.flightsql_url)
        done = threading.Event()
        poster = threading.Thread(target=post_steadily, args=(live, args.blocks, args.rate, done))
        posting_cpu = server_cpu_seconds(pid)
        poster.start()
        late: dict[str, list[Timed]] = {view: [] for view in COUNTS}
        queries = 0
        while not done.is_set():
            next_query = time.perf_counter() + 0.5
            acknowledged = len(live.acknowledged_now())
            for view in COUNTS:
                timed = timed_count(client, view, live, pid)
                if timed.count < acknowledged * ROWS_PER_SPAN[view] * args.spans:
                    raise SystemExit(
                        f"{view}: {timed.count} rows, fewer than the {acknowledged} acknowledged blocks hold"
                    )
                if acknowledged >= args.blocks * (1 - args.late_share):
                    late[view].append(timed)
                queries += 1
            time.sleep(max(0.0, next_query - time.perf_counter()))
        poster.join()
        posting_cpu = server_cpu_seconds(pid) - posting_cpu
        load = os.getloadavg()[0]
        for view in COUNTS:
            timed_count(client, view, live, pid)  # brings the last blocks in and queues their merges
        time.sleep(3)  # let the merges settle
        quiescent = {
            view: [timed_count(client, view, live, pid) for _ in range(args.quiescent_runs)] for view in COUNTS
        }
    return Round(
        {view: statistics.median(t.wall for t in values) for view, values in late.items()},
        {view: statistics.median(t.wall for t in values) for view, values in quiescent.items()},
        {view: statistics.median(t.cpu for t in values) for view, values in late.items()},
        {view: statistics.median(t.cpu for t in values) for view, values in quiescent.items()},
        queries,
        load,
        posting_cpu / args.blocks,
    )


def _line(label: str, view: str, rounds: list[Round]) -> str:
    """A row of the table: medians over `rounds` of the late and quiescent wall and CPU times, and ratios."""
    late = statistics.median(r.late[view] for r in rounds)
    quiet = statistics.median(r.quiescent[view] for r in rounds)
    ratio = statistics.median(r.late[view] / r.quiescent[view] for r in rounds)
    late_cpu = statistics.median(r.late_cpu[view] for r in rounds)
    quiet_cpu = statistics.median(r.quiescent_cpu[view] for r in rounds)
    cpu_ratio = statistics.median(r.late_cpu[view] / r.quiescent_cpu[view] for r in rounds)
    load = statistics.median(r.load for r in rounds)
    per_block = statistics.median(r.cpu_per_block for r in rounds)
    return (
        f"{label:<32} {view:<13} {late * 1e3:>8.1f} {quiet * 1e3:>8.1f} {ratio:>6.2f}"
        f" {late_cpu * 1e3:>8.1f} {quiet_cpu * 1e3:>8.1f} {cpu_ratio:>6.2f} {per_block * 1e3:>7.2f} {load:>5.1f}"
    )


def main() -> None:
    """Alternating rounds of this checkout and the baseline; prints each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side")
    parser.add_argument("--baseline", default="bd56ccb", help="git revision to compare with ('' for none)")
    parser.add_argument("--blocks", type=int, default=400)
    parser.add_argument("--late-share", type=float, default=0.5, help="share of the blocks whose queries are late")
    parser.add_argument("--live-refresh", action="store_true", help="also a side with live refresh on")
    parser.add_argument("--without-tail-written", action="store_true", help="no side writing tails first")
    parser.add_argument("--rate", type=float, default=20.0, help="blocks per second")
    parser.add_argument("--spans", type=int, default=20, help="async spans (and thread spans) per block")
    parser.add_argument("--quiescent-runs", type=int, default=20)
    args = parser.parse_args()
    sides = {
        "this checkout": (None, {}),
        "this checkout, no decode ahead": (None, {"SPANLAKE_DECODE_AHEAD_OBJECTS": "0"}),
    }
    if not args.without_tail_written:
        sides["this checkout, tail written"] = (None, {"SPANLAKE_MEMORY_TAIL_OBJECTS": "0"})
    if args.live_refresh:
        sides["this checkout, live refresh"] = (None, {"SPANLAKE_LIVE_REFRESH_SECONDS": "60"})
    if args.baseline:
        sides[f"baseline {args.baseline}"] = (args.baseline, {})
    rounds: dict[str, list[Round]] = {side: [] for side in sides}
    print(f"{args.blocks} blocks at {args.rate:g}/s, {args.spans} spans per block, queries every 0.5 s")
    print(f"{'':<46} {'wall ms (p50)':^23} {'server CPU ms (p50)':^23}")
    print(
        f"{'round':<32} {'view':<13} {'late':>8} {'quiet':>8} {'ratio':>6} {'late':>8} {'quiet':>8} {'ratio':>6}"
        f" {'CPU/blk':>7} {'load':>5}"
    )
    for number in range(args.rounds):
        for side, (revision, settings) in sides.items():
            result = one_round(revision, settings, args)
            rounds[side].append(result)
            for view in COUNTS:
                print(_line(f"{side} #{number + 1}", view, [result]), flush=True)
    print("medians over rounds:")
    for side, results in rounds.items():
        for view in COUNTS:
            print(_line(side, view, results))


if __name__ == "__main__":
    main()
