"""Ingestion throughput: blocks/s and MB/s through `POST /ingestion/insert_block` with 8 concurrent
clients, for small (4 KiB) and large (4 MiB) payloads, side by side with the payload write alone
(the object store's create-only put from 8 threads) as the baseline. Counts lost blocks.

    python benchmarks/ingest.py [--small N] [--large N] [--runs R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import cbor2
import lz4.frame
from _servers import spanlake_server

from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.timestamps import format_rfc3339_ns

CLIENTS = 8


def make_bodies(count: int, payload_size: int) -> tuple[uuid.UUID, list[bytes], list[tuple[str, bytes]]]:
    """The blocks of one new stream, and the process and stream messages a client sends first."""
    process_id, stream_id = uuid.uuid4(), uuid.uuid4()
    now = time.time_ns()
    setup = [("insert_process", process_body(process_id, now)), ("insert_stream", stream_body(stream_id, process_id))]
    bodies = []
    for i in range(count):
        # LZ4 frames of random bytes (stored, not compressed): ingestion checks that they inflate.
        payload = {
            "dependencies": lz4.frame.compress(os.urandom(64)),
            "objects": lz4.frame.compress(os.urandom(payload_size)),
        }
        bodies.append(
            cbor2.dumps(
                {
                    "block_id": str(uuid.uuid4()),
                    "stream_id": str(stream_id),
                    "process_id": str(process_id),
                    "begin_time": format_rfc3339_ns(now + i),
                    "begin_ticks": i,
                    "end_time": format_rfc3339_ns(now + i + 1),
                    "end_ticks": i + 1,
                    "payload": payload,
                    "object_offset": i * 10,
                    "nb_objects": 10,
                }
            )
        )
    return process_id, bodies, setup


def process_body(process_id: uuid.UUID, start_ns: int) -> bytes:
    """A process whose clock counts nanoseconds from `start_ns` (the blocks' ticks agree with their times)."""
    texts = dict.fromkeys(("exe", "username", "realname", "computer", "distro", "cpu_brand"), "bench")
    return cbor2.dumps(
        {"process_id": str(process_id), "tsc_frequency": 1_000_000_000, "start_time": format_rfc3339_ns(start_ns)}
        | {"start_ticks": 0, "parent_process_id": "", "properties": {}}
        | texts
    )


def stream_body(stream_id: uuid.UUID, process_id: uuid.UUID) -> bytes:
    return cbor2.dumps(
        {
            "stream_id": str(stream_id),
            "process_id": str(process_id),
            "dependencies_metadata": [],
            "objects_metadata": [],
        }
        | {"tags": [], "properties": {}}
    )


async def post_all(url: str, bodies: list[bytes]) -> tuple[float, int]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    failures = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body) as response:
                await response.read()
                failures += response.status != 200

    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
        return time.perf_counter() - start, failures


def baseline_put(bodies: list[bytes]) -> float:
    """The same payload bytes written create-only to a local store from 8 threads."""
    payloads = [cbor2.dumps(cbor2.loads(b)["payload"]) for b in bodies]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(CLIENTS) as pool:
        store = ObjectStore(f"file://{tmp}")
        process_id, stream_id = uuid.uuid4(), uuid.uuid4()
        start = time.perf_counter()
        keys = (blob_key(process_id, stream_id, uuid.uuid4()) for _ in payloads)
        list(pool.map(store.put_if_absent, keys, payloads))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4000, help="4 KiB blocks per run")
    parser.add_argument("--large", type=int, default=100, help="4 MiB blocks per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with spanlake_server() as server:
        url = server.http_url + "/ingestion/insert_block"
        print(
            f"{'payload':>8} {'blocks':>7} {'spanlake blocks/s':>18} {'MB/s':>8} {'baseline blocks/s':>18}"
            f" {'MB/s':>8} {'ratio':>6} {'lost':>5}"
        )
        for label, count, size in (("4 KiB", args.small, 4096), ("4 MiB", args.large, 4 * 1024 * 1024)):
            served, base, lost = [], [], 0
            for _ in range(args.runs):
                process_id, bodies, setup = make_bodies(count, size)
                for endpoint, body in setup:
                    assert urllib.request.urlopen(f"{server.http_url}/ingestion/{endpoint}", body).status == 200
                elapsed, failures = asyncio.run(post_all(url, bodies))
                stored = server.sql("SELECT count(*) AS n FROM blocks WHERE process_id = $1", process_id)[0]["n"]
                lost += count - stored + failures
                served.append(elapsed)
                base.append(baseline_put(bodies))
            t, b = statistics.median(served), statistics.median(base)
            mb = count * size / 1e6
            print(
                f"{label:>8} {count:>7} {count / t:>18,.0f} {mb / t:>8,.1f} {count / b:>18,.0f} {mb / b:>8,.1f}"
                f" {b / t:>6.2f} {lost:>5}"
            )


if __name__ == "__main__":
    main()
