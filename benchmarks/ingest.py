"""Ingestion throughput: blocks/s and MB/s through `POST /ingestion/insert_block` from 1 to 16 concurrent
senders with small (4 KiB) payloads and from 8 senders with large (4 MiB) ones, each beside the payload
write alone as the baseline: `ObjectStore.put_if_absent` of the same stored payloads (each block's CBOR
payload map) into a new local store, from as many threads as senders, in the same directory as the
servers' stores (`--dir`, default the temporary directory; its filesystem is printed). Neither syncs:
both write into the page cache, whose cost on a shared VM swings with the state of its memory, so the
write alone is measured again in every round, and each round's ratio is printed with the medians.
Counts lost blocks (answered 200 but not stored, or not answered 200). A second figure, steadier than
throughput on a shared machine: the CPU time the server's processes (workers included) spend per block,
beside the CPU time the write alone spends per block, and the CPU time the client (this process's
aiohttp senders, on the same cores) spends per block.

With `--baseline REV`, rounds alternate between this checkout and the code of git revision REV, each
round on a new server, the order of the codes reversed every other round (a drifting load favours
neither); with `--workers 0,2`, this checkout runs once per ingestion worker count given
(SPANLAKE_INGESTION_WORKERS). The medians of each are printed side by side, with the machine's load,
and each aim's ratio (4 KiB x 8 senders >= 0.7x the write alone, 4 MiB >= 0.8x).

    python benchmarks/ingest.py [--small N] [--large N] [--rounds R] [--baseline main] [--workers 0,1,2]
                                [--cases small,large] [--dir DIR]
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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp
import cbor2
import lz4.frame
import psutil
from _servers import source_env, spanlake_server

from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.records import blob_key
from spanlake.lakehouse.timestamps import format_rfc3339_ns

SMALL_SENDERS = (1, 2, 4, 8, 16)
LARGE_SENDERS = 8
# Issue 24's aims: (payload size, senders) -> the least ratio to the payload write alone.
AIMS = {(4096, 8): 0.7, (4 << 20, LARGE_SENDERS): 0.8}


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


async def post_all(url: str, bodies: list[bytes], senders: int) -> tuple[float, int]:
    """Seconds to post every body from `senders` concurrent senders (kept-alive connections), and the
    posts not answered 200."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    failures = 0

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body) as response:
                await response.read()
                failures += response.status != 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=senders)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(sender(session) for _ in range(senders)))
        return time.perf_counter() - start, failures


def baseline_put(bodies: list[bytes], threads: int) -> tuple[float, float]:
    """Seconds and CPU seconds (this process's) to write the same payload bytes create-only to a local
    store from `threads` threads."""
    payloads = [cbor2.dumps(cbor2.loads(b)["payload"]) for b in bodies]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(threads) as pool:
        store = ObjectStore(f"file://{tmp}")
        process_id, stream_id = uuid.uuid4(), uuid.uuid4()
        keys = [blob_key(process_id, stream_id, uuid.uuid4()) for _ in payloads]
        start, cpu_start = time.perf_counter(), time.process_time()
        list(pool.map(store.put_if_absent, keys, payloads))
        return time.perf_counter() - start, time.process_time() - cpu_start


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds spent so far by a server process and its children (ingestion workers)."""
    process = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


@dataclass(frozen=True)
class Case:
    """One measurement: a payload size and a number of concurrent senders."""

    label: str
    payload_size: int
    senders: int


@dataclass
class Figures:
    """Blocks/s and CPU ms per block of each run per case (of one code), and the blocks lost."""

    served: dict[Case, list[float]] = field(default_factory=lambda: defaultdict(list))
    cpu_ms: dict[Case, list[float]] = field(default_factory=lambda: defaultdict(list))
    client_cpu_ms: dict[Case, list[float]] = field(default_factory=lambda: defaultdict(list))
    lost: dict[Case, int] = field(default_factory=lambda: defaultdict(int))

    def median(self, case: Case) -> tuple[float, float]:
        """Median blocks/s and median CPU ms per block of `case`."""
        return statistics.median(self.served[case]), statistics.median(self.cpu_ms[case])


@dataclass(frozen=True)
class Code:
    """What serves a round: a git revision (None: this checkout) and its ingestion workers (None: default)."""

    revision: str | None
    workers: int | None

    @property
    def name(self) -> str:
        """The code's column title."""
        name = self.revision or "this"
        return name if self.workers is None else f"{name} w={self.workers}"

    def env(self, source: dict[str, str]) -> dict[str, str]:
        """The server's environment: the revision's source, the worker count."""
        return source if self.workers is None else source | {"SPANLAKE_INGESTION_WORKERS": str(self.workers)}


def measure_round(code: Code, cases: list[Case], counts: dict[int, int], figures: Figures) -> None:
    """One run of every case on a new server running `code`."""
    with source_env(code.revision) as source, spanlake_server(extra_env=code.env(source)) as server:
        for case in cases:
            count = counts[case.payload_size]
            process_id, bodies, setup = make_bodies(count, case.payload_size)
            for endpoint, body in setup:
                assert urllib.request.urlopen(f"{server.http_url}/ingestion/{endpoint}", body).status == 200
            cpu_start, client_cpu_start = server_cpu_seconds(server.process.pid), time.process_time()
            elapsed, failures = asyncio.run(post_all(server.http_url + "/ingestion/insert_block", bodies, case.senders))
            cpu = server_cpu_seconds(server.process.pid) - cpu_start
            figures.client_cpu_ms[case].append((time.process_time() - client_cpu_start) / count * 1e3)
            stored = server.sql("SELECT count(*) AS n FROM blocks WHERE process_id = $1", process_id)[0]["n"]
            figures.served[case].append(count / elapsed)
            figures.cpu_ms[case].append(cpu / count * 1e3)
            figures.lost[case] += count - stored + failures


def measure_baseline(cases: list[Case], counts: dict[int, int], figures: Figures) -> None:
    """One run of the payload write alone for every case."""
    for case in cases:
        count = counts[case.payload_size]
        _, bodies, _ = make_bodies(count, case.payload_size)
        elapsed, cpu = baseline_put(bodies, case.senders)
        figures.served[case].append(count / elapsed)
        figures.cpu_ms[case].append(cpu / count * 1e3)


def filesystem(path: str) -> str:
    """The filesystem holding `path`: its type, device and mount point (from /proc/mounts)."""
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as mounts:
            entries = [line.split()[:3] for line in mounts]
    except FileNotFoundError:
        return "unknown filesystem"
    inside = [(point, device, kind) for device, point, kind in entries if os.path.commonpath((real, point)) == point]
    point, device, kind = max(inside, key=lambda entry: len(entry[0]), default=("?", "?", "?"))
    return f"{kind} on {device} mounted at {point}"


def per_round_ratios(case: Case, served: Figures, payload_write: Figures) -> list[float]:
    """Each round's rate over the same round's write alone."""
    return [rate / alone for rate, alone in zip(served.served[case], payload_write.served[case], strict=True)]


def round_figures(case: Case, figures: Figures) -> str:
    """The last round's rate, server CPU and client CPU per block of `case`."""
    rate, cpu, client = figures.served[case][-1], figures.cpu_ms[case][-1], figures.client_cpu_ms[case][-1]
    return f"{rate:,.0f} ({cpu:.2f} ms, client {client:.2f} ms)"


def load() -> str:
    """The machine's load averages (1, 5, 15 min) and its cores."""
    return f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"


def print_medians(cases: list[Case], payload_write: Figures, figures: dict[str, Figures]) -> None:
    """The medians of every case: the write alone, then each code's rate, CPU per block, ratio and losses."""
    header = f"{'payload':>8} {'senders':>7} {'write alone/s':>13} {'cpu ms':>6}"
    for name in figures:
        header += f" | {name + ' blocks/s':>18} {'MB/s':>7} {'cpu ms':>6} {'client':>6} {'ratio':>5} {'lost':>4}"
    print(header)
    for case in cases:
        base, base_cpu = payload_write.median(case)
        line = f"{case.label:>8} {case.senders:>7} {base:>13,.0f} {base_cpu:>6.2f}"
        for code_figures in figures.values():
            rate, cpu = code_figures.median(case)
            mb = rate * case.payload_size / 1e6
            client = statistics.median(code_figures.client_cpu_ms[case])
            line += f" | {rate:>18,.0f} {mb:>7,.1f} {cpu:>6.2f} {client:>6.2f} {rate / base:>5.2f}"
            line += f" {code_figures.lost[case]:>4}"
        print(line)


def print_aims(cases: list[Case], payload_write: Figures, figures: dict[str, Figures]) -> None:
    """Each aim of issue 24 item 4: the ratio of each code's median rate to the write alone's."""
    for case in cases:
        aim = AIMS.get((case.payload_size, case.senders))
        if aim is None:
            continue
        base = payload_write.median(case)[0]
        ratios = "  ".join(f"{name} {f.median(case)[0] / base:.2f}x" for name, f in figures.items())
        print(f"aim {case.label} x{case.senders} >= {aim}x the write alone: {ratios}")
        for name, code_figures in figures.items():
            rounds = per_round_ratios(case, code_figures, payload_write)
            listed = ", ".join(f"{ratio:.2f}" for ratio in rounds)
            print(f"  {name}: each round's ratio {listed} (median {statistics.median(rounds):.2f}x)")


def main() -> None:
    """Runs the rounds (alternating with the baseline revision's) and prints the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4000, help="4 KiB blocks per run")
    parser.add_argument("--large", type=int, default=60, help="4 MiB blocks per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", help="git revision to alternate with (the previous code)")
    parser.add_argument("--workers", help="comma-separated ingestion worker counts to run this checkout with")
    parser.add_argument("--cases", default="small,large", help="which of small,large to run")
    parser.add_argument("--dir", help="directory of the servers' data and of the write alone (default: the temp dir)")
    args = parser.parse_args()
    tempfile.tempdir = args.dir  # the servers' temporary directories and the write alone's store go there
    kinds = args.cases.split(",")
    cases = [Case("4 KiB", 4096, senders) for senders in SMALL_SENDERS if "small" in kinds]
    cases += [Case("4 MiB", 4 << 20, LARGE_SENDERS)] if "large" in kinds else []
    counts = {4096: args.small, 4 << 20: args.large}
    worker_counts = [int(n) for n in args.workers.split(",")] if args.workers else [None]
    codes = {code.name: code for code in (Code(None, n) for n in worker_counts)}
    if args.baseline:
        codes[args.baseline] = Code(args.baseline, None)
    figures = {name: Figures() for name in codes}
    payload_write = Figures()
    place = tempfile.gettempdir()
    print(f"servers' stores and the write alone under {place}: {filesystem(place)}; no fsync (page cache)")
    print(f"start: {load()}", flush=True)
    for round_number in range(args.rounds):
        order = list(codes.items())
        for name, code in order if round_number % 2 == 0 else reversed(order):
            measure_round(code, cases, counts, figures[name])
        measure_baseline(cases, counts, payload_write)
        print(f"round {round_number + 1} done: {load()}", flush=True)
        for case in cases:  # this round's figures: the medians hide how much the shared machine varies
            rates = "  ".join(f"{name} {round_figures(case, f)}" for name, f in figures.items())
            alone = f"{payload_write.served[case][-1]:,.0f} ({payload_write.cpu_ms[case][-1]:.2f} ms)"
            print(f"  {case.label} x{case.senders}: write alone {alone}  {rates}", flush=True)
    print_medians(cases, payload_write, figures)
    print_aims(cases, payload_write, figures)
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
