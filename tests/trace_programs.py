"""Two instrumented programs for the cross-process trace test (run as `python trace_programs.py ROLE URL`):

* `service URL`: an aiohttp service (tracing middleware) on a free port; `GET /items/{id}` runs work in
  the default executor, hands the request to a queue consumer task and waits for it. Prints
  `{"process_id", "port"}`, serves until its stdin closes.
* `caller URL PORT`: inside a root span, an httpx client (tracing event hooks) calls the service.
  Prints `{"process_id", "trace_id", "root"}`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
from aiohttp import web

from spanlake import tracing
from spanlake.tracing.integrations import aiohttp as traced_aiohttp
from spanlake.tracing.integrations import httpx as traced_httpx


def blocking_work() -> None:
    """Runs on an executor thread: its span must find the request's span without help."""
    with tracing.async_span("executor_work"):
        time.sleep(0.001)


async def consume(queue: asyncio.Queue) -> None:
    """The queue consumer, a task started outside any span: continues each message's context."""
    while True:
        context, done = await queue.get()
        with tracing.async_span("consume", parent=context, kind="consumer"):
            await asyncio.sleep(0)
        done.set_result(None)


async def service(url: str) -> None:
    process = tracing.init(url, exe="trace-service", flush_period=3600)
    queue: asyncio.Queue = asyncio.Queue()
    consumer = asyncio.create_task(consume(queue))

    async def handle(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, blocking_work)
        done = loop.create_future()
        await queue.put((tracing.current_span_context(), done))
        await done
        return web.json_response({"item": request.match_info["id"]})

    app = web.Application(middlewares=[traced_aiohttp.middleware])
    app.router.add_get("/items/{id}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"process_id": str(process.process_id), "port": port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    consumer.cancel()
    await runner.cleanup()
    assert tracing.shutdown()


def caller(url: str, port: int) -> None:
    process = tracing.init(url, exe="trace-caller", flush_period=3600)
    with tracing.async_span("caller") as root, httpx.Client(event_hooks=traced_httpx.event_hooks()) as client:
        response = client.get(f"http://127.0.0.1:{port}/items/7")
        response.raise_for_status()
    assert tracing.shutdown()
    print(json.dumps({"process_id": str(process.process_id), "trace_id": root.trace_id, "root": root.span_hex}))


if __name__ == "__main__":
    if sys.argv[1] == "service":
        asyncio.run(service(sys.argv[2]))
    else:
        caller(sys.argv[2], int(sys.argv[3]))
