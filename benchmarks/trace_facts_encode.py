"""Flush-side cost of SDK traces: encoding one cpu block of async spans, and the trace facts part of it.

    python benchmarks/trace_facts_encode.py [--spans 30000] [--repeats 21]

Records `--spans` awaits of a `@span_fn` coroutine (every span a trace root, the worst case: each is a
record of the trace facts), then times `encode_thread_events` on that block, the LZ4 of its buffers and
`_block_trace_facts` alone (if the checkout has it), in CPU time; prints the medians in ns per span and
the block's compressed buffer sizes. Then the
same for a block of thread spans (`@span_fn` on a plain function) run outside any async span and under
one (the trace facts' threads part: one run). On a shared machine, run two checkouts' interpreters on
this script alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np

from spanlake import tracing
from spanlake.tracing import dispatch, transit_encode
from spanlake.tracing.event_records import ASYNC_SLOTS
from spanlake.tracing.registry import REGISTRY


@tracing.span_fn
async def root_span() -> None:
    return None


@tracing.span_fn
def thread_span() -> None:
    return None


def recorded_block(spans: int) -> list:
    """The flat async event list of `spans` root spans, as the thread's cpu stream holds it."""
    tracing.init(sink=tracing.MemorySink(), flush_period=3600)

    async def run() -> None:
        for _ in range(spans):
            await root_span()

    asyncio.run(run())
    events = list(dispatch.local.stream.async_events)
    tracing.shutdown()
    return events


def recorded_thread_block(spans: int, in_trace: bool) -> list:
    """The flat thread event list of `spans` thread spans, run under an async span if `in_trace`."""
    tracing.init(sink=tracing.MemorySink(), flush_period=3600)
    with tracing.async_span("request") if in_trace else contextlib.nullcontext():
        for _ in range(spans):
            thread_span()
    events = list(dispatch.local.stream.thread_events)
    tracing.shutdown()
    return events


def median_ns(work: Callable[[], object], repeats: int) -> float:
    """The median CPU time of `repeats` calls of `work`, in ns."""
    runs = []
    for _ in range(repeats):
        start = time.process_time_ns()
        work()
        runs.append(time.process_time_ns() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=30_000, help="at most 32 768 (one block)")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    events = recorded_block(args.spans)
    spans = len(events) // (2 * ASYNC_SLOTS)
    types = np.array(events[0::ASYNC_SLOTS], np.int64) & 0xFF
    span_ids, parent_ids = (np.array(events[i::ASYNC_SLOTS], np.uint64) for i in (2, 3))
    times = np.array(events[1::ASYNC_SLOTS], np.int64)
    block = median_ns(lambda: transit_encode.encode_thread_events([], events, REGISTRY), args.repeats)
    buffers = transit_encode.encode_thread_events([], events, REGISTRY)
    lz4 = median_ns(lambda: [transit_encode.compress(b) for b in (buffers.dependencies, buffers.objects)], args.repeats)
    print(f"{spans} root spans, medians of {args.repeats}: block encoding {block / spans:.0f} ns a span,")
    print(f"LZ4 of its buffers {lz4 / spans:.0f} ns a span")
    dependencies, objects = (len(transit_encode.compress(b)) for b in (buffers.dependencies, buffers.objects))
    print(f"LZ4: dependencies {dependencies} bytes, {dependencies / objects:.0%} of the objects' {objects}")
    if hasattr(transit_encode, "_block_trace_facts"):  # a checkout before traces has none
        facts = median_ns(
            lambda: transit_encode._block_trace_facts(events, types, span_ids, parent_ids, times, ()), args.repeats
        )
        print(f"of the encoding, trace facts {facts / spans:.0f} ns a span")
    for in_trace in (False, True):
        thread_events = recorded_thread_block(args.spans, in_trace)
        encode = functools.partial(transit_encode.encode_thread_events, thread_events, [], REGISTRY)
        block = median_ns(encode, args.repeats)
        where = "under one async span" if in_trace else "outside async spans"
        print(f"{args.spans} thread spans {where}: block encoding {block / args.spans:.0f} ns a span")


if __name__ == "__main__":
    main()
