"""Running DataFusion calls from table functions.

A table function runs on a thread that drives DataFusion's tokio runtime; a SessionContext call that
plans or reads (read_parquet, create_dataframe, ...) blocks on that runtime and panics there. Such
calls go to this small pool of ordinary threads instead.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="datafusion-plan")


def off_runtime(function: Callable[..., T], *args: Any) -> T:
    return _pool.submit(function, *args).result()
