"""Cost of instrumenting with spanlake's SDK, next to an uninstrumented baseline and the OpenTelemetry SDK.

Measures, in ns per operation (median of --repeats runs of --count operations each):
  sync span   a call of a `@span_fn` function           vs a plain call  vs OTel `start_as_current_span`
  async span  an await of a `@span_fn` coroutine          vs a plain await vs OTel inside the coroutine
  log         `tracing.info(msg)`                       vs a no-op call  vs stdlib `logging` (NullHandler)
"recorded" is the time on the instrumented thread only; "with flush" adds the time to encode and hand
every recorded event to the sink (spanlake: `tracing.flush()`; OTel: `force_flush()` of a
BatchSpanProcessor with an exporter that drops everything), divided by the count.

Clocks: `wall`; `cpu`, the process's CPU time (all threads, so "recorded" also counts the blocks the
flush thread encodes meanwhile); `thread`, CPU time per thread: "recorded" is the calling thread's
alone and "with flush" adds the CPU time spanlake's flush thread spends on the blocks (the OpenTelemetry
worker thread is not counted). On a shared machine `thread` is the least noisy: other processes and
descheduling never count.

    python benchmarks/sdk_overhead.py [--count 200000] [--repeats 7] [--clock wall|cpu]
        [--operations sync,async,log] [--without-otel]

To compare checkouts on a busy machine, `--compare LABEL=DIR` (repeatable; DIR holds a `spanlake/tracing`
to import, e.g. a folder with a `spanlake/tracing` symlink into a worktree; `LABEL=.` is this
checkout) runs this script once per checkout and round, `--rounds` times, in an order rotating each
round, with the other options given (use `--clock cpu`: the process's CPU time, all its threads, so time
spent descheduled does not count). It prints, per checkout and operation, the median over the rounds
of each round's median, the spread (lowest-highest round) and the ratio to the first checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from spanlake import tracing
from spanlake.tracing import dispatch

clock = time.perf_counter_ns  # set by --clock
background_ns = 0  # with --clock thread: CPU time of spanlake's flush thread on blocks so far


def count_flush_thread_time() -> None:
    """Adds the thread CPU time of each block the flush thread encodes and hands over to `background_ns`
    (wraps `Session._send`, a private method: this is a benchmark, and every checkout compared has it)."""
    send = dispatch.Session._send

    def timed_send(self: dispatch.Session, block: object) -> None:
        global background_ns
        start = time.thread_time_ns()
        try:
            send(self, block)
        finally:
            background_ns += time.thread_time_ns() - start

    dispatch.Session._send = timed_send  # type: ignore[method-assign]


class DropExporter(SpanExporter):
    def export(self, spans: Sequence) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def plain() -> None:
    return None


@tracing.span_fn
def instrumented() -> None:
    return None


async def plain_async() -> None:
    return None


@tracing.span_fn
async def instrumented_async() -> None:
    return None


def make_otel() -> tuple[TracerProvider, Callable[[], None], Callable]:
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(DropExporter(), max_queue_size=1 << 20, max_export_batch_size=1 << 12)
    )
    tracer = provider.get_tracer("bench")

    def otel_sync() -> None:
        with tracer.start_as_current_span("otel_sync"):
            return None

    async def otel_async() -> None:
        with tracer.start_as_current_span("otel_async"):
            return None

    return provider, otel_sync, otel_async


def run_sync(fn: Callable[[], None], count: int) -> float:
    start = clock()
    for _ in range(count):
        fn()
    return clock() - start


def run_async(fn: Callable, count: int) -> float:
    async def loop() -> float:
        start = clock()
        for _ in range(count):
            await fn()
        return clock() - start

    return asyncio.run(loop())


def run_log(fn: Callable[[str], None], count: int) -> float:
    start = clock()
    for _ in range(count):
        fn("request handled")
    return clock() - start


def measure(
    label: str, run: Callable[[], float], flush: Callable[[], None], count: int, repeats: int
) -> tuple[float, float]:
    """(median recorded ns/op, median ns/op with flush) over `repeats` runs."""
    recorded, total = [], []
    for _ in range(repeats):
        flush()
        background_start = background_ns
        elapsed = run()
        flush_start = clock()
        flush()
        recorded.append(elapsed / count)
        total.append((elapsed + clock() - flush_start + background_ns - background_start) / count)
    return statistics.median(recorded), statistics.median(total)


def _without_compare(argv: list[str]) -> list[str]:
    """The command line but its --compare and --rounds options (what each checkout's run is given)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--compare", "--rounds"):
            skip = True
        elif not arg.startswith(("--compare=", "--rounds=")):
            kept.append(arg)
    return kept


def compare(args: argparse.Namespace, forwarded: list[str]) -> None:
    """Runs this script per checkout and round (rotating order) and prints medians, spreads and ratios."""
    checkouts = [entry.split("=", 1) for entry in args.compare]
    results: dict[str, list[dict]] = {label: [] for label, _ in checkouts}
    for round_index in range(args.rounds):
        shift = round_index % len(checkouts)
        for label, folder in checkouts[shift:] + checkouts[:shift]:
            env = dict(os.environ)
            if folder != ".":
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--json"], env=env, capture_output=True, text=True, check=True
            )
            results[label].append(json.loads(done.stdout.splitlines()[-1]))
    load = os.getloadavg()
    print(f"{args.rounds} rounds, rotating order; ns per operation: median of the rounds' medians [lowest-highest]")
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    first = checkouts[0][0]
    for operation in results[first][0]:
        for column, name in ((0, "recorded"), (1, "with flush")):
            reference = statistics.median(r[operation][column] for r in results[first])
            cells = []
            for label, _ in checkouts:
                values = [r[operation][column] for r in results[label]]
                middle = statistics.median(values)
                cells.append(f"{label} {middle:.0f} [{min(values):.0f}-{max(values):.0f}] x{middle / reference:.3f}")
            print(f"{operation:<11} {name:<10} " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=("wall", "cpu", "thread"), default="wall")
    parser.add_argument("--operations", default="sync,async,log", help="comma-separated: sync, async, log")
    parser.add_argument("--without-otel", action="store_true", help="skip the OpenTelemetry rows (slow)")
    parser.add_argument("--compare", action="append", metavar="LABEL=DIR", help="checkouts to compare (above)")
    parser.add_argument("--rounds", type=int, default=10, help="with --compare: runs of each checkout")
    parser.add_argument("--json", action="store_true", help="print spanlake's medians as one JSON line")
    args = parser.parse_args()
    if args.compare:
        compare(args, _without_compare(sys.argv[1:]))
        return
    count, repeats = args.count, args.repeats
    global clock
    clock = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns, "thread": time.thread_time_ns}[args.clock]
    if args.clock == "thread":
        count_flush_thread_time()
    wanted = {f"{name} span" if name != "log" else "log call" for name in args.operations.split(",")}

    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=3600)

    def spanlake_flush() -> None:
        tracing.flush(60)
        sink.items.clear()  # the encoded bodies are not needed: bound memory

    provider, otel_sync, otel_async = make_otel()

    def otel_flush() -> None:
        provider.force_flush(60_000)

    def nothing() -> None:
        return None

    std_logger = logging.getLogger("bench.stdlib")
    std_logger.addHandler(logging.NullHandler())
    std_logger.setLevel(logging.INFO)
    std_logger.propagate = False

    rows = [
        (
            "sync span",
            [
                ("baseline (plain call)", lambda: run_sync(plain, count), nothing),
                ("spanlake @span_fn", lambda: run_sync(instrumented, count), spanlake_flush),
                ("OpenTelemetry span", lambda: run_sync(otel_sync, count), otel_flush),
            ],
        ),
        (
            "async span",
            [
                ("baseline (plain await)", lambda: run_async(plain_async, count), nothing),
                ("spanlake @span_fn async", lambda: run_async(instrumented_async, count), spanlake_flush),
                ("OpenTelemetry span", lambda: run_async(otel_async, count), otel_flush),
            ],
        ),
        (
            "log call",
            [
                ("baseline (no-op call)", lambda: run_log(lambda message: None, count), nothing),
                ("spanlake tracing.info", lambda: run_log(tracing.info, count), spanlake_flush),
                ("stdlib logging (NullHandler)", lambda: run_log(std_logger.info, count), nothing),
            ],
        ),
    ]
    rows = [
        (operation, variants[: 2 if args.without_otel else 3]) for operation, variants in rows if operation in wanted
    ]
    print(f"count={count} repeats={repeats} clock={args.clock}; ns per operation, medians")
    print(f"{'operation':<12} {'variant':<32} {'recorded':>10} {'with flush':>11} {'overhead':>10}")
    spanlake_medians: dict[str, tuple[float, float]] = {}
    for operation, variants in rows:
        results = [(name, *measure(name, run, flush, count, repeats)) for name, run, flush in variants]
        spanlake_medians[operation] = results[1][1:]
        baseline = results[0][1]
        for name, recorded, total in results:
            print(f"{operation:<12} {name:<32} {recorded:>10.0f} {total:>11.0f} {recorded - baseline:>10.0f}")
        if operation != "log call" and not args.without_otel:
            spanlake, otel = results[1], results[2]
            ratio_recorded = (otel[1] - baseline) / max(spanlake[1] - baseline, 1e-9)
            ratio_total = (otel[2] - baseline) / max(spanlake[2] - baseline, 1e-9)
            print(
                f"{'':<12} OpenTelemetry / spanlake overhead: {ratio_recorded:.1f}x recorded, "
                f"{ratio_total:.1f}x with flush"
            )
    provider.shutdown()
    tracing.shutdown()
    if args.json:
        print(json.dumps(spanlake_medians))


if __name__ == "__main__":
    main()
