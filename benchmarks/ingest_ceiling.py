"""What the machine allows for ingestion bodies over loopback with no HTTP framework: a bare asyncio
(uvloop) `BufferedProtocol` server, in its own process, receiving each request's body straight into a
preallocated buffer of its Content-Length (`recv_into`) and answering 200, fed by the same client and
the same bodies as `benchmarks/ingest.py` (aiohttp, kept-alive connections). Beside it: the same server
also writing each body create-only to a local store ("bare+store"), and the payload write alone.

With `--native`, the same senders also post to a receiver that is not Python (`bare_receiver.c`, built
with the system's `cc`; one thread per connection): "C" receives each body into a buffer and stores
nothing, "C+write" also writes it as `ObjectStore.put_if_absent` does (64 KiB writes to a temporary
file, hard-linked to its name), "C+splice" moves it socket -> pipe -> file with splice(2), never copied
through user space. So the figures say what this machine allows at all, the client included.

With `--served`, `spanlake serve` of this checkout is measured in the same rounds (as `ingest.py` measures
it: a new server each time), so its figures sit beside the ceilings it is judged against.

Prints blocks/s, the ratio to the write alone and each receiver's CPU per block, medians of `--rounds`
rounds (the write alone measured in each round, alternating with the receivers), with the machine's load.

    python benchmarks/ingest_ceiling.py [--small N] [--large N] [--rounds R] [--native] [--served]
                                        [--cases small,large]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import psutil
import uvloop
from ingest import (
    LARGE_SENDERS,
    SMALL_SENDERS,
    Case,
    Code,
    Figures,
    baseline_put,
    load,
    make_bodies,
    measure_round,
    post_all,
)

from spanlake.lakehouse.object_store import ObjectStore

_HEAD_BUFFER = 64 * 1024
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
# The native receiver's rows: the name's suffix after "C", and `bare_receiver.c`'s mode.
_NATIVE_MODES = (("", "none"), ("+write", "write"), ("+splice", "splice"))


class BareBodyReader(asyncio.BufferedProtocol):
    """HTTP/1.1 requests with a Content-Length, each body received into one buffer of that length;
    answered 200 once received (and, with a store, once its payload is written)."""

    def __init__(self, store: ObjectStore | None) -> None:
        self.store = store
        self.head = bytearray(_HEAD_BUFFER)
        self.head_filled = 0
        self.body: bytearray | None = None
        self.body_filled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keeps the transport to answer on."""
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        """The body's unfilled part while a body is read, else the head buffer's."""
        if self.body is not None:
            return memoryview(self.body)[self.body_filled :]
        return memoryview(self.head)[self.head_filled :]

    def buffer_updated(self, nbytes: int) -> None:
        """Counts what arrived; answers each request whose body is complete."""
        if self.body is not None:
            self.body_filled += nbytes
        else:
            self.head_filled += nbytes
            self._start_bodies()
        if self.body is not None and self.body_filled == len(self.body):
            self._answer(self.body)

    def _start_bodies(self) -> None:
        end = self.head.find(b"\r\n\r\n", 0, self.head_filled)
        if end < 0:
            return
        marker = self.head.find(b"Content-Length:", 0, end)
        length = int(self.head[marker + 15 : self.head.find(b"\r\n", marker, end + 2)])
        start = end + 4
        self.body = bytearray(length)
        arrived = min(self.head_filled - start, length)
        self.body[:arrived] = self.head[start : start + arrived]
        self.body_filled = arrived
        # The sender waits for each answer: nothing follows the body in the head buffer.
        self.head_filled = 0

    def _answer(self, body: bytearray) -> None:
        self.body = None
        if self.store is None:
            self.transport.write(_OK)
            return
        # The whole body: a few hundred bytes more than the payload the write alone writes.
        key = f"{uuid.uuid4()}.block"
        task = asyncio.get_running_loop().run_in_executor(None, self.store.put_if_absent, key, body)
        task.add_done_callback(lambda _: self.transport.write(_OK))

    def eof_received(self) -> bool:
        """Closes on the client's end."""
        return False


def serve(listener: socket.socket, store_uri: str | None) -> None:
    """Serves `listener` with `BareBodyReader` on a uvloop loop until killed."""
    store = ObjectStore(store_uri) if store_uri else None

    async def run() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: BareBodyReader(store), sock=listener)
        await server.serve_forever()

    uvloop.run(run())


# A receiver: started on a listening socket and a store directory, it gives what `stop_receiver` stops.
Receiver = Callable[[socket.socket, str], "multiprocessing.Process | subprocess.Popen[bytes]"]


def python_receiver(store: bool) -> Receiver:
    """`BareBodyReader` in a process of its own, writing each body to the store directory if `store`."""

    def start(listener: socket.socket, store_dir: str) -> multiprocessing.Process:
        store_uri = f"file://{store_dir}" if store else None
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(listener, store_uri), daemon=True)
        server.start()
        return server

    return start


def build_native_receiver(into: str) -> str:
    """The path of `bare_receiver.c` compiled with the system's `cc` into the directory `into`."""
    compiler = shutil.which("cc")
    if compiler is None:
        raise SystemExit("--native needs a C compiler named cc")
    program = os.path.join(into, "bare_receiver")
    source = Path(__file__).with_name("bare_receiver.c")
    subprocess.run([compiler, "-O2", "-o", program, str(source), "-lpthread"], check=True)
    return program


def native_receiver(program: str, mode: str) -> Receiver:
    """The compiled `bare_receiver` in `mode` (none, write, splice) on the listening socket."""

    def start(listener: socket.socket, store_dir: str) -> subprocess.Popen[bytes]:
        fd = listener.fileno()
        return subprocess.Popen([program, str(fd), mode, store_dir], pass_fds=(fd,))

    return start


def stop_receiver(server: multiprocessing.Process | subprocess.Popen[bytes]) -> None:
    """Kills a receiver and waits for it."""
    server.kill()
    if isinstance(server, subprocess.Popen):
        server.wait()
    else:
        server.join()


def measure_server(case: Case, bodies: list[bytes], receiver: Receiver, store_dir: str) -> tuple[float, float]:
    """Blocks/s and the receiver's CPU ms per block posting `bodies` from `case.senders` senders."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = receiver(listener, store_dir)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ingestion/insert_block"
        asyncio.run(post_all(url, bodies[:8], case.senders))  # the server's imports and the connections
        process = psutil.Process(server.pid)
        cpu_start = sum(process.cpu_times()[:2])
        elapsed, failures = asyncio.run(post_all(url, bodies, case.senders))
        cpu = sum(process.cpu_times()[:2]) - cpu_start
        assert failures == 0, failures
        return len(bodies) / elapsed, cpu / len(bodies) * 1e3
    finally:
        stop_receiver(server)
        listener.close()


def print_medians(cases: list[Case], rates: dict, cpu_ms: dict, names: list[str]) -> None:
    """Per case, the write alone, then each receiver's median rate, its ratio to the write alone's, its CPU."""
    print(f"{'payload':>8} {'senders':>7} {'receiver':>12} | {'blocks/s':>9} {'ratio':>5} {'cpu ms':>6}")
    for case in cases:
        alone = statistics.median(rates[case, "write alone"])
        for name in ["write alone", *names]:
            rate, cpu = statistics.median(rates[case, name]), statistics.median(cpu_ms[case, name])
            print(f"{case.label:>8} {case.senders:>7} {name:>12} | {rate:>9,.0f} {rate / alone:>5.2f} {cpu:>6.2f}")


def main() -> None:
    """Runs the rounds and prints the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4000, help="4 KiB blocks per run")
    parser.add_argument("--large", type=int, default=60, help="4 MiB blocks per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--native", action="store_true", help="also a receiver in C (needs cc)")
    parser.add_argument("--served", action="store_true", help="also spanlake serve of this checkout")
    parser.add_argument("--cases", default="small,large", help="which of small,large to run")
    args = parser.parse_args()
    kinds = args.cases.split(",")
    cases = [Case("4 KiB", 4096, senders) for senders in (1, 8, SMALL_SENDERS[-1]) if "small" in kinds]
    cases += [Case("4 MiB", 4 << 20, LARGE_SENDERS)] if "large" in kinds else []
    counts = {4096: args.small, 4 << 20: args.large}
    rates: dict[tuple[Case, str], list[float]] = defaultdict(list)
    cpu_ms: dict[tuple[Case, str], list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as build:
        receivers = {"bare": python_receiver(False), "bare+store": python_receiver(True)}
        if args.native:
            program = build_native_receiver(build)
            receivers |= {f"C{suffix}": native_receiver(program, mode) for suffix, mode in _NATIVE_MODES}
        print(f"start: {load()}", flush=True)
        for round_number in range(args.rounds):
            for case in cases:
                _, bodies, _ = make_bodies(counts[case.payload_size], case.payload_size)
                for name, receiver in receivers.items():
                    with tempfile.TemporaryDirectory() as store_dir:
                        rate, cpu = measure_server(case, bodies, receiver, store_dir)
                    rates[case, name].append(rate)
                    cpu_ms[case, name].append(cpu)
                if args.served:
                    served = Figures()
                    measure_round(Code(None, None), [case], counts, served)
                    rates[case, "spanlake"] += served.served[case]
                    cpu_ms[case, "spanlake"] += served.cpu_ms[case]
                elapsed, cpu = baseline_put(bodies, case.senders)
                rates[case, "write alone"].append(len(bodies) / elapsed)
                cpu_ms[case, "write alone"].append(cpu / len(bodies) * 1e3)
            print(f"round {round_number + 1} done: {load()}", flush=True)
    print_medians(cases, rates, cpu_ms, [*receivers, *(["spanlake"] if args.served else [])])
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
