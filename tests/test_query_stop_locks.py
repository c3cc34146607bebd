"""Stopping a query's thread (an asynchronous exception) while it works in the result buffer leaves no
lock taken and no byte counted (issue 28: the event loop froze giving bytes back to a budget whose lock a
stopped query's thread had left taken). Each round stops a query busy in the buffer code at a different
moment, then another thread must use the budget at once, and closing the stream must give back all."""

from __future__ import annotations

import threading
import time

import pytest

from spanlake.lakehouse.query.query_thread import QueryThread, QueryThreads
from spanlake.lakehouse.query.result_buffer import ByteBudget, StreamBuffer

ROUNDS = {False: 150, True: 30}  # a waiting query takes a wait step (0.1 s) to see its stop
BATCH_BYTES = 1000


class Stopped(Exception):
    """The reason the test stops its queries for."""


def _churn(buffer: StreamBuffer, running: threading.Event, ended: threading.Event) -> None:
    """What a single-partition stream does per batch, as fast as it can: reserve, hand, hand back."""
    running.set()
    try:
        while True:
            reserved = buffer.reserve()
            assert reserved is not None
            buffer.hand(BATCH_BYTES, reserved)
            buffer.hand_back()
    finally:
        ended.set()


def _wait_for_room(buffer: StreamBuffer, running: threading.Event, ended: threading.Event) -> None:
    """A producer waiting for room in a full budget, until stopped."""
    running.set()
    try:
        buffer.reserve()
        raise AssertionError("reserved room in a full budget")
    finally:
        ended.set()


def _budget_answers(budget: ByteBudget) -> bool:
    """Whether another thread can take and give back bytes of the budget (at once; 5 s on a loaded machine)."""
    done = threading.Event()

    def use() -> None:
        budget.take(1)
        budget.give_back(1)
        done.set()

    threading.Thread(target=use, daemon=True).start()
    return done.wait(5.0)


def _stop_during(step: object, full: bool, threads: QueryThreads, delay: float) -> tuple[ByteBudget, float]:
    """Runs `step` on a query thread over a fresh buffer, stops it `delay` seconds after it began;
    the budget and how long the stopped query took to end."""
    total = ByteBudget(10 * BATCH_BYTES)
    if full:
        total.take(total.limit)
    buffer = StreamBuffer(4 * BATCH_BYTES, total)
    query = QueryThread(threads, lambda: None)
    running, ended = threading.Event(), threading.Event()
    stopper = threading.Thread(target=lambda: (running.wait(5), time.sleep(delay), query.stop(Stopped())))
    stopper.start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        query.run(step, buffer, running, ended)
    took = time.monotonic() - started
    stopper.join()
    # The caller returns at the stop; the step ends on its own thread just after.
    assert ended.wait(5), "the stopped step never ended"
    query.close()
    buffer.close()
    if full:
        total.give_back(total.limit)
    return total, took


@pytest.mark.parametrize("full", [False, True], ids=["busy", "waiting"])
def test_stopped_queries_leave_the_buffer_usable_and_empty(full: bool) -> None:
    threads = QueryThreads()
    step = _wait_for_room if full else _churn
    try:
        for round_number in range(ROUNDS[full]):
            total, ended = _stop_during(step, full, threads, delay=(round_number % 10) * 0.0003)
            assert _budget_answers(total), f"round {round_number}: the budget's lock stayed taken"
            assert total.used == 0, f"round {round_number}: {total.used} bytes stayed counted"
            assert ended < 5.0, f"round {round_number}: the stopped query took {ended:.2f} s to end"
    finally:
        threads.close()
