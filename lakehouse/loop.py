"""The one asyncio loop of a spanlake process, on a dedicated thread.

It owns the asyncpg pool, the HTTP server and the maintenance tasks. Code on other threads (Flight
handlers, DataFusion table functions, worker threads) hands it coroutines with `run`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long `stop` waits for the threads of `asyncio.to_thread` calls (a web query may be finishing).
STOP_WAIT_SECONDS = 10


class BackgroundLoop:
    """An asyncio (uvloop) event loop running on its own daemon thread."""

    def __init__(self, name: str = "spanlake-loop") -> None:
        """Starts the loop on a daemon thread called `name`."""
        self.loop = uvloop.new_event_loop()  # roughly halves the per-request cost of the HTTP server
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs a coroutine on the loop and waits for its result (not callable from the loop)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BackgroundLoop.run called from its own thread; await instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stops the loop once the threads of its `asyncio.to_thread` calls have ended (one still running
        after STOP_WAIT_SECONDS is left to end on its own), waits for its thread and closes it; a no-op
        once stopped."""
        if not self._thread.is_alive():
            return
        executor_shutdown = asyncio.run_coroutine_threadsafe(self.loop.shutdown_default_executor(), self.loop)
        try:
            executor_shutdown.result(STOP_WAIT_SECONDS)
        except TimeoutError:
            log.warning("a blocking call handed off by the event loop is still running; stopping the loop anyway")
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()
