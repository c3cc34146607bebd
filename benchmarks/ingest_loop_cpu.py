"""The ingestion loop's own CPU per block: the HTTP ingestion API served in process (its lake's loop
thread, with the authenticator `spanlake serve` makes) and fed by `benchmarks/ingest.py`'s client from
the same process; the CPU time of the loop thread alone is counted (`time.thread_time`), so neither the
client, nor PostgreSQL, nor the other roles of a served process blur it. On a shared machine it is far
steadier than blocks/s (which is printed too).

With `--http-only`, the native route's HTTP layer alone (the block's store replaced by nothing) is
compared in this checkout: the lean path (`server.native_http`) against aiohttp serving the same
route, alternating, as loop CPU per request (reading the body included).

With `--baseline REV`, runs alternate between this checkout and the code of git revision REV (each
run a new process, on a new database), the order reversed every other round; medians are printed with
the ratio to the baseline, and the machine's load.

    python benchmarks/ingest_loop_cpu.py [--senders 1,8,16] [--blocks N] [--size BYTES] [--rounds R]
                                         [--baseline REV | --http-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from _servers import source_env
from ingest import load, make_bodies, post_all

WARM_UP_BLOCKS = 50


def run_child(senders: int, blocks: int, size: int) -> dict[str, float]:
    """Serves ingestion in this process, posts `blocks` blocks from `senders` senders; blocks/s and
    the loop thread's CPU ms a block."""
    from harness import PostgresServer, free_port

    from spanlake.lakehouse.lake import Lake
    from spanlake.lakehouse.settings import Settings
    from spanlake.server.auth import make_authenticator
    from spanlake.server.ingestion import start_ingestion

    postgres = PostgresServer()  # kept: its directory (and the server) goes with it
    with tempfile.TemporaryDirectory(prefix="spanlake-loop-cpu-") as tmp:
        settings = Settings(
            database_url=postgres.new_database(),
            object_store_uri=(Path(tmp) / "lake").as_uri(),
            data_dir=Path(tmp),
        )
        with Lake.open(settings) as lake:
            port = free_port()
            server = lake.loop.run(start_ingestion(lake, make_authenticator(settings, lake), "127.0.0.1", port))
            url = f"http://127.0.0.1:{port}/ingestion/"
            _, bodies, setup = make_bodies(blocks + WARM_UP_BLOCKS, size)
            for endpoint, body in setup:
                assert urllib.request.urlopen(url + endpoint, body).status == 200
            asyncio.run(post_all(url + "insert_block", bodies[:WARM_UP_BLOCKS], senders))
            cpu_start = loop_thread_time(lake.loop.loop)
            elapsed, failures = asyncio.run(post_all(url + "insert_block", bodies[WARM_UP_BLOCKS:], senders))
            cpu = loop_thread_time(lake.loop.loop) - cpu_start
            lake.loop.run(server.cleanup())
    assert failures == 0, failures
    return {"rate": blocks / elapsed, "cpu_ms": cpu / blocks * 1e3}


def compare_http_layers(senders: int, blocks: int, size: int, rounds: int) -> dict[str, list[float]]:
    """Loop CPU µs per request of the lean path and of aiohttp, serving `insert_block` with a store that
    does nothing, `rounds` runs each, alternating."""
    from aiohttp import web
    from harness import PostgresServer, free_port

    from spanlake.lakehouse.lake import Lake
    from spanlake.lakehouse.settings import Settings
    from spanlake.server.auth import make_authenticator
    from spanlake.server.ingestion import IngestionService, make_app_runner, native_routes
    from spanlake.server.native_http import NativeHttpServer

    async def store_nothing(body: bytearray, principal: object) -> None:
        """The route's work left out: only HTTP and the body's reading remain."""

    async def serve(service: IngestionService, lean: bool, port: int) -> NativeHttpServer | web.AppRunner:
        runner = await make_app_runner(service)
        if not lean:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner
        server = NativeHttpServer(runner, native_routes(service, runner))
        await server.start("127.0.0.1", port)
        return server

    postgres = PostgresServer()
    per_request: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="spanlake-loop-cpu-") as tmp:
        settings = Settings(
            database_url=postgres.new_database(), object_store_uri=(Path(tmp) / "lake").as_uri(), data_dir=Path(tmp)
        )
        with Lake.open(settings) as lake:
            service = IngestionService(lake, make_authenticator(settings, lake))
            service.store_block = store_nothing  # type: ignore[method-assign]
            _, bodies, _ = make_bodies(blocks + senders, size)
            for round_number in range(rounds):
                for lean in (True, False) if round_number % 2 == 0 else (False, True):
                    port = free_port()
                    server = lake.loop.run(serve(service, lean, port))
                    url = f"http://127.0.0.1:{port}/ingestion/insert_block"
                    asyncio.run(post_all(url, bodies[:senders], senders))  # the connections
                    cpu_start = loop_thread_time(lake.loop.loop)
                    _, failures = asyncio.run(post_all(url, bodies[senders:], senders))
                    cpu = loop_thread_time(lake.loop.loop) - cpu_start
                    lake.loop.run(server.cleanup())
                    assert failures == 0, failures
                    per_request["lean" if lean else "aiohttp"].append(cpu / blocks * 1e6)
    return per_request


def loop_thread_time(loop: asyncio.AbstractEventLoop) -> float:
    """The CPU seconds the thread running `loop` has spent so far."""
    seen: list[float] = []
    done = threading.Event()
    loop.call_soon_threadsafe(lambda: (seen.append(time.thread_time()), done.set()))
    done.wait()
    return seen[0]


def measure(revision: str | None, senders: int, blocks: int, size: int) -> dict[str, float]:
    """One run in a new process on the code of `revision` (None: this checkout)."""
    with source_env(revision) as env:
        command = [sys.executable, __file__, "--child", f"--senders={senders}", f"--blocks={blocks}", f"--size={size}"]
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Runs the rounds and prints the medians, and the ratios to the baseline."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--senders", default="1,8,16")
    parser.add_argument("--blocks", type=int, default=3000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="git revision to alternate with (the previous code)")
    parser.add_argument("--http-only", action="store_true", help="the lean path against aiohttp, store left out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = [int(n) for n in args.senders.split(",")]
    if args.child:
        print(json.dumps(run_child(counts[0], args.blocks, args.size)))
        return
    if args.http_only:
        print(f"start: {load()}", flush=True)
        for senders in counts:
            runs = compare_http_layers(senders, args.blocks, args.size, args.rounds)
            medians = {name: statistics.median(cpu) for name, cpu in runs.items()}
            each = "  ".join(f"{name} {', '.join(f'{us:,.0f}' for us in cpu)}" for name, cpu in runs.items())
            print(f"{args.size} B x{senders}: loop CPU a request, lean {medians['lean']:,.1f} µs, aiohttp", end="")
            print(f" {medians['aiohttp']:,.1f} µs ({medians['lean'] / medians['aiohttp']:.2f}x)  runs: {each}")
        print(f"end: {load()}")
        return
    codes = [None, args.baseline] if args.baseline else [None]
    runs: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    print(f"start: {load()}", flush=True)
    for round_number in range(args.rounds):
        for revision in codes if round_number % 2 == 0 else reversed(codes):
            for senders in counts:
                figures = measure(revision, senders, args.blocks, args.size)
                runs[revision or "this", senders].append(figures)
                print(
                    f"  {revision or 'this'} x{senders}: {figures['rate']:,.0f}/s {figures['cpu_ms']:.3f} ms",
                    flush=True,
                )
        print(f"round {round_number + 1} done: {load()}", flush=True)
    for senders in counts:
        line = f"{args.size} B x{senders}:"
        medians = {}
        for name in [code or "this" for code in codes]:
            rate = statistics.median(r["rate"] for r in runs[name, senders])
            medians[name] = statistics.median(r["cpu_ms"] for r in runs[name, senders])
            line += f"  {name} {rate:,.0f} blocks/s, loop CPU {medians[name]:.3f} ms a block"
        if args.baseline:
            line += f"  (CPU ratio {medians['this'] / medians[args.baseline]:.2f}x)"
        print(line)
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
