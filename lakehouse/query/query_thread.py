"""Each query's DataFusion work runs on a thread of its own, which can be stopped.

* Stack: DataFusion plans and evaluates expressions recursively; the query's thread has STACK_BYTES
  (address space, touched only as used), far more than the deepest expression QueryLimits admits.
* Stopping: a call blocked in DataFusion (planning, the next batch) cannot be abandoned from outside,
  but datafusion-python runs a line of Python on the waiting thread about once a second (to check for
  signals) and aborts the call, dropping its future, when that line raises. `stop` raises `Interrupted`
  in the query's thread (PyThreadState_SetAsyncExc), so the call under way ends within about a second;
  the stream is then dropped, and DataFusion's tasks for it with it. Those stop at their next yield
  to tokio (Rust cannot abort a running poll): at once when waiting on I/O or a channel, about every
  input batch in a CPU-bound in-memory plan split in round-robin, every 128 in one not split
  (lakehouse/query/session.py; docs/flightsql.md, Query limits).

The caller hands each step to the query's thread and waits, asking `should_stop` every POLL_SECONDS
whether to give up (client gone, deadline, shutdown): a gRPC handler's thread blocks in `run` on the
query's outcome queue (a Flight stream makes one step per run of batches up to 64 KiB: a queue costs less than a polled
future, 50-64 µs a step against 67-127 µs over 20,000 empty steps), an event loop's task
awaits `run_async` (the loop's default thread pool, which ingestion needs, is never used for queries).

The threads are reused from query to query (`QueryThreads`, one per runner: a new thread per query
would also be a new cpu stream in spanlake's self-tracing, each time); one that was interrupted is
retired instead, so that an interruption can never reach another query. An idle thread ends after
IDLE_SECONDS unless it is the only one idle: DataFusion's allocator (mimalloc) gives the memory a
thread freed back to the system only when that thread allocates again, so each idle thread kept the
last batches it had computed, about 14 MB each after 50 unread web answers (issue 28; an ending
thread gives its free pages back, server/startup.py ALLOCATOR_OPTIONS). A query's close sweeps the
heaps of ended threads (heap_sweeps): what a client frees after its thread ended stayed there.

Shielding: an asynchronous exception lands between any two lines, including inside `threading`'s
Python code (`Condition.__enter__` after its lock was taken, `wait`'s re-acquiring): the lock then
stays taken for good, and the event loop, closing a stream, froze on it (issue 28). Code that shares
state with other threads (`result_buffer`) runs `with shielded():` its query is then stopped without
one: `stopping()` tells its waits to give up, and leaving the shield raises `Interrupted`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import itertools
import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from spanlake.lakehouse.query.heap_sweeps import HeapSweeps

T = TypeVar("T")

STACK_BYTES = 64 * 1024 * 1024
POLL_SECONDS = 0.05
MAX_IDLE_THREADS = 8
IDLE_SECONDS = 2.0


# The query whose step the current thread runs (query threads only).
_current = threading.local()


class Interrupted(BaseException):
    """Raised inside a query's thread to stop it. A BaseException: no `except Exception` on the way
    (in a table function, say) may swallow it."""


class _Worker:
    """A thread with a large stack running steps one after another until given None."""

    _count = itertools.count(1)
    _stack_size_lock = threading.Lock()

    def __init__(self, threads: QueryThreads) -> None:
        self._threads = threads
        self.steps: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=f"spanlake-query-{next(self._count)}", daemon=True)
        with self._stack_size_lock:
            previous = threading.stack_size(STACK_BYTES)
            try:
                self.thread.start()
            finally:
                threading.stack_size(previous)

    def _serve(self) -> None:
        try:
            while (step := self._next_step()) is not None:
                step()
                # Dropped before waiting: an idle worker kept its last step, hence that step's query
                # thread and any outcome it holds (a batch nobody took, the query stopped) until the next.
                del step
        except Interrupted:
            pass  # interrupted between two steps: this worker is being retired anyway

    def _next_step(self) -> Callable[[], None] | None:
        """The next step; None to end (told so, or idle for IDLE_SECONDS and let go by the pool)."""
        while True:
            try:
                return self.steps.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                if self._threads.let_go(self):
                    return None


class QueryThreads:
    """Idle query threads, reused by the next queries (a runner owns one)."""

    def __init__(self) -> None:
        """No thread yet: they start with the first queries."""
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self.sweeps = HeapSweeps()

    def take(self) -> _Worker:
        """An idle worker, or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Worker(self)

    def give_back(self, worker: _Worker) -> None:
        """Keeps the worker for the next query (or ends it when enough are idle, or once closed)."""
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE_THREADS:
                self._idle.append(worker)
                return
        worker.steps.put(None)

    def let_go(self, worker: _Worker) -> bool:
        """Takes an idle worker out of the pool, unless it is in use or the only one idle: it may end."""
        with self._lock:
            if worker in self._idle and len(self._idle) > 1:
                self._idle.remove(worker)
                return True
        return False

    def close(self) -> None:
        """Ends the idle threads; those of queries under way end as their queries close."""
        self.sweeps.close()
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.steps.put(None)


class QueryThread:
    """The thread of one query. `run` steps on it; `close` when done; `stop` from any thread."""

    def __init__(self, threads: QueryThreads, should_stop: Callable[[], BaseException | None]) -> None:
        """Takes a thread of `threads`; `should_stop` tells, when asked, why the query must stop (or None)."""
        self._threads = threads
        self._should_stop = should_stop
        self._worker: _Worker | None = threads.take()
        self._lock = threading.Lock()
        self._busy = False
        self._interrupted = False
        self._shields = 0  # shielded regions the step is in (a finalizer may close a stream inside one)
        self._stopped: BaseException | None = None
        self._outcomes: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on the query's thread, in the caller's context variables. Raises what
        it raises, or what `should_stop` (or `stop`) gave, once the query is stopped."""
        # The outcome comes back through a queue, not a future: a Flight stream makes a step per batch.
        self._submit(function, args, self._outcomes.put)
        while True:
            try:
                failed, value = self._outcomes.get(timeout=POLL_SECONDS)
            except queue.Empty:
                self._stop_if_asked()
                continue
            self._raise_stop_reason()  # a step that ended as it was stopped: the query is stopped all the same
            if failed:
                raise value
            return value

    async def run_async(self, function: Callable[..., T], *args: Any) -> T:
        """`run` for a task on an event loop: the loop keeps serving while the step runs."""
        future: concurrent.futures.Future[tuple[bool, Any]] = concurrent.futures.Future()
        self._submit(function, args, future.set_result)
        waiting = asyncio.wrap_future(future)
        while True:
            # asyncio.wait never cancels `waiting`: a cancelled task leaves the step to `stop`.
            done, _ = await asyncio.wait((waiting,), timeout=POLL_SECONDS)
            if done:
                self._raise_stop_reason()
                failed, value = waiting.result()
                if failed:
                    raise value
                return value
            self._stop_if_asked()

    def _submit(self, function: Callable[..., T], args: tuple, deliver: Callable[[tuple[bool, Any]], None]) -> None:
        """Queues the step on the query's thread; its outcome, (failed, result or exception), goes to `deliver`."""
        if self._stopped is not None or self._worker is None:
            raise self._stopped or RuntimeError("the query's thread is closed")
        context = contextvars.copy_context()
        self._worker.steps.put(lambda: self._run_step(deliver, context, function, args))

    def _raise_stop_reason(self) -> None:
        """Raises why the query was stopped, if it was: what the interrupted step raised (`Interrupted`,
        or DataFusion's error around it) says nothing to the client."""
        if self._stopped is not None:
            raise self._stopped from None

    def _stop_if_asked(self) -> None:
        reason = self._stopped or self._should_stop()
        if reason is not None:
            self.stop(reason)
            raise reason from None

    def stop(self, reason: BaseException) -> None:
        """Stops the query for `reason`, interrupting the step under way, if any; without one, the
        thread goes back to the others at once (a stream blocked in its transport holds none)."""
        idle = None
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
            # A shielded step sees `stopping()` and raises as it leaves the shield.
            if self._busy and not self._interrupted and not self._shields and self._worker is not None:
                self._interrupted = True
                _raise_in_thread(self._worker.thread, Interrupted)
            elif not self._busy:
                idle, self._worker = self._worker, None
        if idle is not None:
            self._threads.give_back(idle)  # a step queued meanwhile finds the query stopped

    def close(self) -> None:
        """Gives the thread back for other queries; retires it if it was interrupted. Sweeps the heaps
        of ended threads soon (heap_sweeps): the query's batches may be freed now, by the door's threads."""
        self._drop_outcomes()
        if self._stopped is not None:
            # Raised by each waiting step, the stop reason's traceback holds the frames of the last
            # one, whose locals hold the batches that step's caller had taken before (a Flight
            # stream's last run): kept with the audit, they stayed alive (13 to 700 MB, issue 28).
            _clear_locals(self._stopped)
        self._threads.sweeps.request()
        with self._lock:
            worker, self._worker = self._worker, None
            interrupted = self._interrupted
        if worker is None:
            return
        if interrupted:
            worker.steps.put(None)
        else:
            self._threads.give_back(worker)

    def _drop_outcomes(self) -> None:
        """Drops the outcomes nobody took: a step that ended just as its waiter raised the query's stop
        left its result (a run of batches, 13 MB each) in the queue, alive as long as this object."""
        while True:
            try:
                self._outcomes.get_nowait()
            except queue.Empty:
                return

    def _run_step(
        self,
        deliver: Callable[[tuple[bool, Any]], None],
        context: contextvars.Context,
        function: Callable,
        args: tuple,
    ) -> None:
        with self._lock:
            if self._stopped is not None:
                return
            self._busy = True
        _current.query = self
        try:
            outcome: tuple[bool, Any] = (False, context.run(function, *args))
        except BaseException as exc:  # every outcome of the step goes back to the waiting thread
            _clear_locals(exc)
            outcome = (True, exc)
        _current.query = None
        with self._lock:
            self._busy = False
            if self._interrupted and self._worker is not None:
                # A stop sent too late to land in the step must not land in `deliver` (a Future's
                # Condition, which the event loop takes): the waiting thread raises it instead.
                _raise_in_thread(self._worker.thread, None)
            stopped = self._stopped
        if stopped is not None:
            # The waiting thread raises the stop's reason, never the step's result: dropped here, by
            # the thread whose allocator holds it (freed by another, a batch stayed with this thread's
            # heap, which may idle or exit before collecting it: docs/flightsql.md, Memory given back).
            outcome = (True, stopped)
        deliver(outcome)

    def _enter_shield(self) -> None:
        """No asynchronous exception from now on: one already sent and not yet landed is taken back
        (and owed: leaving the shield raises it)."""
        with self._lock:
            if self._interrupted and self._worker is not None:
                _raise_in_thread(self._worker.thread, None)
                self._interrupted = False
            self._shields += 1

    def _leave_shield(self, raising: bool) -> None:
        """Interruptible again; raises `Interrupted` if the query was stopped meanwhile (unless the
        shielded code is `raising` already)."""
        with self._lock:
            self._shields -= 1
            owed = not self._shields and self._stopped is not None and not self._interrupted
            self._interrupted = self._interrupted or owed
        if owed and not raising:
            raise Interrupted


class _Shield:
    """See `shielded`."""

    __slots__ = ("_query",)

    def __enter__(self) -> None:
        self._query = getattr(_current, "query", None)
        if self._query is not None:
            self._query._enter_shield()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._query is not None:
            self._query._leave_shield(exc_type is not None)


def shielded() -> _Shield:
    """A context in which the current query's thread takes no asynchronous stop (any other thread: no
    effect); waits inside ask `stopping()`."""
    return _Shield()


def stopping() -> bool:
    """Whether the query whose step the current thread runs has been stopped (never on other threads)."""
    query = getattr(_current, "query", None)
    return query is not None and query._stopped is not None


def _clear_locals(exc: BaseException) -> None:
    """Clears the local variables of the frames the exception went through (its text and traceback
    lines stay): the exception lives on in a future and in cycles, and those frames hold the query's
    DataFusion stream, whose tasks run for as long as it is referenced."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        pending += [current.__cause__, current.__context__]


def _raise_in_thread(thread: threading.Thread, exception: type[BaseException] | None) -> None:
    """Makes `exception` raise in `thread` at its next line of Python (None: takes back one pending)."""
    if thread.ident is not None:
        pending = ctypes.py_object(exception) if exception is not None else None
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), pending)
