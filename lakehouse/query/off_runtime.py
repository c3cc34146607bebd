"""Running DataFusion calls from table functions.

A table function runs on a thread that drives DataFusion's tokio runtime; a SessionContext call that
plans or reads (read_parquet, create_dataframe, ...) blocks on that runtime and panics there. Such
calls go to the lake's small pool of ordinary threads instead (`lake.off_runtime.run(...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa
from datafusion import Table

from spanlake.lakehouse.query.rows_frames import rows_frame

T = TypeVar("T")


class OffRuntime:
    """A few ordinary threads (started on first use) that run calls for DataFusion's runtime threads."""

    def __init__(self, threads: int = 4) -> None:
        """A pool of at most `threads` threads."""
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="datafusion-plan")

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on one of the pool's threads, waited for."""
        return self._pool.submit(function, *args).result()

    def memory_table(self, table: pa.Table) -> Table:
        """`table` as a table a table function can return, empty or not: a pyarrow dataset of no rows
        has no fragment, which plans needing one partition (an ORDER BY) refuse. Made on the pool
        (`rows_frames`: never on DataFusion's runtime thread)."""
        return Table(self.run(rows_frame, table.to_batches(), table.schema))

    def close(self) -> None:
        """Cancels the queued calls, waits for those under way and ends the threads; `run` raises
        RuntimeError afterwards."""
        self._pool.shutdown(wait=True, cancel_futures=True)
