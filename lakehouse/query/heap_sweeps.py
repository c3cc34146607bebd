"""Memory that DataFusion's threads freed after they ended, given back to the system (issue 28).

DataFusion's library allocates with mimalloc 2.2, whose pages belong to the thread that allocated
them. When that thread has ended (an idle query thread, a plan's reader thread), its segments are
"abandoned", and a batch it computed that is freed afterwards (by gRPC, once the client of an unread
Flight stream cancels) stays resident in them: mimalloc collects what other threads freed into an
abandoned segment only when some thread visits it, and gives the freed span back to the system at a
later visit, once the purge delay (10 ms) has passed. Threads visit the abandoned segments as they end;
nothing else does while the server is idle. 50 unread Flight streams left 13 MB batches in them, one
run in five: +66 to +144 MB after the streams closed (`benchmarks/unread_memory.py`).

`HeapSweeps.request` (at each query's close) therefore ends two short-lived threads that have used
DataFusion's allocator, SWEEP_SECONDS and twice that after the last request: the first collects what
was freed meanwhile, the second purges it. mimalloc's own `mi_collect` is not exported by the
datafusion wheel; a thread's end is the collection it offers.
"""

from __future__ import annotations

import threading
import time

import datafusion

# After a query's close: long enough for gRPC to drop a cancelled call's buffers, past mimalloc's
# purge delay between the two sweeps.
SWEEP_SECONDS = 0.25


class HeapSweeps:
    """Sweeps of the abandoned DataFusion heaps after the queries close, coalesced: one sweeper
    thread at a time, running until SWEEP_SECONDS pass without a request."""

    def __init__(self) -> None:
        """No sweep yet: the first request starts the sweeper."""
        self._lock = threading.Lock()
        self._last_request = 0.0
        self._sweeping = False
        self._closed = False

    def request(self) -> None:
        """Sweeps soon (from any thread; costs a lock when a sweep is already coming)."""
        with self._lock:
            self._last_request = time.monotonic()
            if self._sweeping or self._closed:
                return
            self._sweeping = True
        threading.Thread(target=self._sweep_until_quiet, name="spanlake-heap-sweeps", daemon=True).start()

    def _sweep_until_quiet(self) -> None:
        """Two sweeps SWEEP_SECONDS apart after the last request; again while requests come."""
        while True:
            started = time.monotonic()
            for _ in range(2):
                time.sleep(SWEEP_SECONDS)
                if self._closed:
                    return
                sweep()
            with self._lock:
                if self._last_request < started:
                    self._sweeping = False
                    return

    def close(self) -> None:
        """No sweep from now on (the runner is shutting down)."""
        self._closed = True


def sweep() -> None:
    """Ends a thread that has allocated with DataFusion's mimalloc: as it ends, mimalloc visits the
    abandoned segments (collects what other threads freed into them, purges what has waited past the
    purge delay)."""
    thread = threading.Thread(target=_use_datafusion_heap, name="spanlake-heap-sweep", daemon=True)
    thread.start()
    thread.join()


def _use_datafusion_heap() -> None:
    """One allocation in DataFusion's library (a string literal's value), so that this thread has a
    mimalloc heap, which mimalloc collects as the thread ends."""
    datafusion.lit("a thread ending collects the abandoned heaps")
