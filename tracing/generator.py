"""`spanlake generate`: an instrumented program that sends a realistic mix of telemetry to a server.

Like micromegas's `telemetry-generator`: worker threads with nested sync spans, named thread spans,
logs and metrics; asyncio tasks with nested async spans, tasks spawned inside spans, named async
spans (`process_user_123`, `database_migration`, …) and one asyncio loop per worker thread, so
async events land in several cpu streams. Everything is deterministic for a given --seed except
timings. Prints the process id, then waits for the upload before exiting (0 if nothing was lost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import threading
import time

from spanlake import tracing
from spanlake.tracing.dispatch import API_KEY_ENV

OPERATIONS = ("database_query", "api_call", "file_processing", "cache_lookup", "network_request", "disk_io")
QUICK_WORK = ("quick_processing", "cache_check", "validation", "computation")
QUICK_NAMED = ("quick_lookup", "fast_computation", "micro_processing")
ADVANCED = {
    "batch": "batch_processing_operation",
    "stream": "stream_processing_operation",
    "real_time": "real_time_processing_operation",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `spanlake generate` options to `parser`."""
    parser.add_argument("--url", default="http://127.0.0.1:9000", help="ingestion server (default %(default)s)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"bearer key for the ingestion API (default ${API_KEY_ENV})",
    )
    parser.add_argument("--threads", type=int, default=4, help="worker threads (default %(default)s)")
    parser.add_argument("--tasks", type=int, default=5000, help="tasks in the main loop (default %(default)s)")
    parser.add_argument(
        "--async-tasks", type=int, default=10, help="concurrent asyncio tasks spawned in spans (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload's random choices")
    parser.add_argument("--exe", default="spanlake-telemetry-generator", help="process exe name to report")
    parser.add_argument("--flush-period", type=float, default=5.0, help="seconds between flushes")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the upload at exit (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Runs the generator; exit status 0 if every event was delivered."""
    process = tracing.init(
        args.url,
        api_key=args.api_key,
        exe=args.exe,
        flush_period=args.flush_period,
        properties={"generator.seed": str(args.seed)},
    )
    print(process.process_id, flush=True)
    rng = random.Random(args.seed)
    tracing.info(
        f"hello from generator - creating {args.tasks} tasks (async_tasks={args.async_tasks}, threads={args.threads})"
    )
    emit_startup_metrics()
    workers = [
        threading.Thread(
            target=worker, args=(i, random.Random(rng.random()), args.tasks // 10), name=f"generator-worker-{i}"
        )
        for i in range(args.threads)
    ]
    for thread in workers:
        thread.start()
    asyncio.run(main_async(args, rng))
    for thread in workers:
        thread.join()
    tracing.info("generator completed successfully")
    delivered = tracing.shutdown(args.shutdown_timeout)
    stats = tracing.sink_stats()
    if not delivered:
        print("generator: some telemetry could not be delivered before the timeout", file=sys.stderr)
    return 0 if delivered and (stats is None or stats.lost() == 0) else 1


def emit_startup_metrics() -> None:
    """One value of each metric kind, sent once at startup."""
    tracing.imetric("Frame Time", "ticks", 1000)
    tracing.fmetric("Frame Time", "ticks", 1.0)
    tracing.imetric("Memory Usage", "bytes", 2048)
    tracing.fmetric("CPU Usage", "percent", 75.5)


# -- synchronous work (worker threads and the main thread) ------------------------------------------


@tracing.span_fn
def sync_operation(value: int) -> int:
    """A short sync span."""
    time.sleep(0.0001)
    return value * 2


@tracing.span_fn
def nested_sync_operation(depth: int) -> int:
    """Sync spans nested `depth` levels deep."""
    if depth == 0:
        return sync_operation(depth)
    with tracing.span_scope("nested_sync_step"):
        return nested_sync_operation(depth - 1) + 1


def worker(index: int, rng: random.Random, iterations: int) -> None:
    """A worker thread: nested sync spans, named thread spans, logs, metrics, and its own asyncio loop."""
    tracing.info(f"worker {index} starting", {"worker": str(index)})
    for i in range(iterations):
        nested_sync_operation(rng.randint(0, 3))
        with tracing.span_scope_named(f"work_item_{index}_{i % 7}"):
            sync_operation(i)
        tracing.imetric("Worker Progress", "count", i, {"worker": str(index)})
        if i % 50 == 0:
            tracing.debug(f"worker {index} at {i}/{iterations}")
    asyncio.run(concurrent_async_task(OPERATIONS[index % len(OPERATIONS)], 60 + index * 20))
    tracing.info(f"worker {index} done")


# -- asynchronous work ----------------------------------------------------------------------------------


@tracing.span_fn
async def async_operation(delay_us: int) -> str:
    """An async span that logs and sleeps `delay_us` µs."""
    tracing.info(f"starting async operation with {delay_us}us delay")
    await asyncio.sleep(delay_us / 1e6)
    return f"completed after {delay_us}us"


@tracing.span_fn
async def nested_async_operation() -> None:
    """An async span around two awaited async spans."""
    tracing.info(f"first async result: {await async_operation(150)}")
    tracing.info(f"second async result: {await async_operation(150)}")


async def manual_async_work() -> None:
    """A coroutine instrumented by hand with `tracing.instrument`."""

    async def work() -> None:
        tracing.info("doing manual async work")
        await asyncio.sleep(0.00015)

    await tracing.instrument(work(), "manual_work")


async def named_async_work_examples(task_id: int) -> None:
    """Named async spans, on their own and nested in a named workflow."""
    for name, delay in (("database_migration", 150), ("cache_warmup", 90), ("data_processing", 150)):
        await tracing.span_async_named(name, sleep_and_log(f"{name} for task {task_id}", delay))

    async def user_workflow() -> None:
        await tracing.span_async_named("user_validation", sleep_and_log(f"validating task {task_id}", 45))
        await tracing.span_async_named("user_processing", sleep_and_log(f"processing task {task_id}", 60))

    await tracing.span_async_named("user_workflow", user_workflow())


async def sleep_and_log(message: str, delay_us: int) -> None:
    """Logs `message`, then sleeps `delay_us` µs."""
    tracing.info(message)
    await asyncio.sleep(delay_us / 1e6)


@tracing.span_fn
async def async_subtask(task_id: int, operation: str) -> str:
    """A short async span that logs."""
    tracing.info(f"executing subtask {operation} for task {task_id}")
    await asyncio.sleep((30 + task_id * 3) / 1e6)
    return f"{operation}_{task_id}"


@tracing.span_fn
async def multi_threaded_async_work(task_id: int) -> str:
    """An async span whose second subtask runs in a task spawned inside it."""
    first = await async_subtask(task_id, "validation")
    # Spawned inside this span: the child task's spans are children of this one.
    second = await asyncio.create_task(async_subtask(task_id, "computation"))
    return f"task_{task_id}_result: {first} + {second}"


@tracing.span_fn
async def prepare_async_operation(operation: str) -> str:
    """The first step of a concurrent operation."""
    await asyncio.sleep(0.000015)
    return f"prepared_{operation}"


@tracing.span_fn
async def execute_async_operation(operation: str, delay_us: int) -> str:
    """The second step of a concurrent operation: logs and sleeps `delay_us` µs."""
    tracing.info(f"executing {operation} with {delay_us}us delay")
    await asyncio.sleep(delay_us / 1e6)
    return f"executed_{operation}"


@tracing.span_fn
async def cleanup_async_operation(operation: str) -> str:
    """The last step of a concurrent operation."""
    await asyncio.sleep(0.00003)
    return f"cleaned_{operation}"


@tracing.span_fn
async def concurrent_async_task(operation: str, delay_us: int) -> str:
    """Two steps of an operation run concurrently, then its cleanup."""
    tracing.info(f"starting concurrent operation: {operation}")
    steps = await asyncio.gather(prepare_async_operation(operation), execute_async_operation(operation, delay_us))
    cleanup = await cleanup_async_operation(operation)
    return f"{operation}: {' -> '.join(steps)} -> {cleanup}"


@tracing.span_fn
async def process_users(user_ids: list[int]) -> None:
    """One named async span per user, run concurrently."""
    await asyncio.gather(*(tracing.span_async_named(f"process_user_{uid}", async_operation(20)) for uid in user_ids))


async def main_async(args: argparse.Namespace, rng: random.Random) -> None:
    """The asyncio part of the run: each kind of async span, spawned tasks, then the task loop."""
    tracing.info(f"sync operation result: {sync_operation(42)}")
    tracing.info(f"async operation result: {await async_operation(200)}")
    await nested_async_operation()
    await manual_async_work()
    await named_async_work_examples(0)
    for i, (kind, name) in enumerate(ADVANCED.items()):
        await tracing.span_async_named(name, sleep_and_log(f"{kind} processing operation for task {i}", 60))
    await process_users(sorted(rng.sample(range(1000), 5)))
    spawned = [asyncio.create_task(multi_threaded_async_work(i)) for i in range(args.async_tasks)]
    concurrent = [
        asyncio.create_task(concurrent_async_task(OPERATIONS[i % len(OPERATIONS)], 60 + i * 20))
        for i in range(args.async_tasks)
    ]
    for result in await asyncio.gather(*spawned, *concurrent):
        tracing.info(f"task result: {result}")
    await task_loop(args.tasks)


async def task_loop(tasks: int) -> None:
    """`tasks` quick events cycling through sync spans, named async spans and metrics, with progress logs."""
    start = time.monotonic()
    for task_id in range(tasks):
        kind = task_id % 5
        if kind == 0:
            sync_operation(task_id % 1000)
        elif kind == 1:
            await tracing.span_async_named(QUICK_WORK[task_id % 4], asyncio.sleep(0))
        elif kind == 2:
            tracing.imetric("Task Progress", "count", task_id)
            tracing.imetric("Tasks Remaining", "count", tasks - task_id)
            tracing.fmetric("Completion Percentage", "percent", task_id / tasks * 100.0)
        elif kind == 3:
            await named_quick_operation(task_id)
        if task_id % 1000 == 0 and task_id:
            elapsed = time.monotonic() - start
            tracing.info(f"completed {task_id}/{tasks} tasks in {elapsed:.2f}s ({task_id / elapsed:.0f} tasks/sec)")


@tracing.span_fn
async def named_quick_operation(task_id: int) -> None:
    """An async span around a named async span."""
    await tracing.span_async_named(QUICK_NAMED[task_id % 3], asyncio.sleep(0))


def main() -> int:
    """Entry point of `python -m spanlake.tracing.generator`."""
    parser = argparse.ArgumentParser(prog="spanlake generate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
