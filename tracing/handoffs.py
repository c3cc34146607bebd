"""Context that crosses hand-offs on its own: `loop.run_in_executor`.

asyncio's `to_thread`, `create_task` and `gather` copy the caller's context; `loop.run_in_executor`
does not, so a function sent to the default executor (or to any `ThreadPoolExecutor` through the loop)
would start new root spans. `tracing.init` replaces `asyncio.BaseEventLoop.run_in_executor` by one that
runs the function in a copy of the caller's context (what `to_thread` does), and `tracing.shutdown`
puts the original back. Loops that do not inherit `BaseEventLoop.run_in_executor` (uvloop has its own)
are left alone: pass the context there with `current_span_context()` and `attach`.

A queue is a hand-off no library can see: the producer puts `current_span_context()` in the message,
the consumer continues it with `async_span(name, parent=context)` (or `attach(context)`), and the
span records the producer's span as its hand-off parent.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

_ASYNCIO_RUN_IN_EXECUTOR = asyncio.BaseEventLoop.run_in_executor


def _run_in_executor_with_context(
    self: asyncio.BaseEventLoop, executor: Executor | None, func: Callable[..., Any], *args: Any
) -> asyncio.Future[Any]:
    """`run_in_executor` running `func` in a copy of the caller's context."""
    return _ASYNCIO_RUN_IN_EXECUTOR(self, executor, functools.partial(contextvars.copy_context().run, func), *args)


def install() -> None:
    """Makes `run_in_executor` carry the caller's context (`uninstall` undoes it)."""
    asyncio.BaseEventLoop.run_in_executor = _run_in_executor_with_context  # type: ignore[method-assign]


def uninstall() -> None:
    """Puts asyncio's own `run_in_executor` back."""
    asyncio.BaseEventLoop.run_in_executor = _ASYNCIO_RUN_IN_EXECUTOR  # type: ignore[method-assign]


def installed() -> bool:
    """Whether `run_in_executor` currently carries the caller's context."""
    return asyncio.BaseEventLoop.run_in_executor is _run_in_executor_with_context
