"""The SDK's traces in one process: W3C inject/extract (malformed headers start a new trace), span ids,
run_in_executor, queue hand-offs, links, and the aiohttp/httpx integrations, read back from the
encoded blocks (`MemorySink`) through the view layer's reader of the trace facts."""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp
import cbor2
import httpx
import pytest
from aiohttp import web
from multidict import CIMultiDict

from spanlake import tracing
from spanlake.lakehouse.transit.decode import decode_block, stream_layout
from spanlake.tracing import handoffs
from spanlake.tracing.integrations import aiohttp as traced_aiohttp
from spanlake.tracing.integrations import httpx as traced_httpx
from spanlake.views.span_traces import block_facts

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def sink() -> Iterator[tracing.MemorySink]:
    sink = tracing.MemorySink()
    tracing.init(sink=sink, flush_period=3600, exe="propagation-test")
    yield sink
    tracing.shutdown()


@dataclass
class Recorded:
    name: str
    trace_id: str
    parent_span_id: int  # async_events' parent (u64)
    link: str | None  # the hand-off or remote parent, 16 hex
    facts: dict


def recorded(sink: tracing.MemorySink) -> dict[str, Recorded]:
    """Every async span recorded so far, by span hex, decoded from the sink's cpu blocks."""
    tracing.flush()
    infos, begins, facts = {}, {}, {}
    for _, path, body in sink.items:
        message = cbor2.loads(body)
        if path.endswith("insert_stream"):
            infos[message["stream_id"]] = message
        if not path.endswith("insert_block") or "cpu" not in infos[message["stream_id"]]["tags"]:
            continue
        info = infos[message["stream_id"]]
        layout = stream_layout(cbor2.dumps(info["dependencies_metadata"]), cbor2.dumps(info["objects_metadata"]))
        decoded = decode_block(cbor2.dumps(message["payload"]), layout)
        block = block_facts(decoded.dependencies, "test block")
        links = dict(block.links.tolist())
        for span_id, high, low, _ in block.spans.tolist():
            begins[span_id & (2**64 - 1)] = (high, low, links.get(span_id, 0))
        facts.update(zip((s & (2**64 - 1) for s in block.facts_span_ids.tolist()), block.facts, strict=True))
        for type_name, name_of in (
            ("BeginAsyncSpanEvent", lambda obj, row: obj.values("span_desc").to_list()[row]["name"]),
            ("BeginAsyncNamedSpanEvent", lambda obj, row: obj.values("name").to_list()[row]),
        ):
            if group := decoded.group(type_name):
                for row, (span_id, parent) in enumerate(
                    zip(group.numeric("span_id").tolist(), group.numeric("parent_span_id").tolist(), strict=True)
                ):
                    begins[span_id] = (*begins[span_id][:3], name_of(group, row), parent)
    spans = {}
    for span_id, (high, low, link, name, parent) in begins.items():
        spans[f"{span_id:016x}"] = Recorded(
            name,
            f"{high & (2**64 - 1):016x}{low & (2**64 - 1):016x}",
            parent,
            f"{link & (2**64 - 1):016x}" if link else None,
            facts.get(span_id, {}),
        )
    return spans


# -- inject / extract --------------------------------------------------------------------------------------


def test_inject_writes_the_current_span_and_extract_continues_it(sink: tracing.MemorySink) -> None:
    with tracing.async_span("caller") as caller:
        headers = tracing.inject({})
    assert headers == {"traceparent": f"00-{caller.trace_id}-{caller.span_hex}-01"}
    assert len(caller.trace_id) == 32 and caller.trace_id == caller.trace_id.lower()
    remote = tracing.extract(headers)
    assert (remote.trace_id, remote.span_id, remote.span_hex) == (caller.trace_id, caller.span_id, caller.span_hex)
    with tracing.async_span("callee", parent=remote) as callee:
        assert tracing.inject({})["traceparent"] == f"00-{caller.trace_id}-{callee.span_hex}-01"
    spans = recorded(sink)
    assert spans[callee.span_hex].trace_id == caller.trace_id
    assert spans[callee.span_hex].link == caller.span_hex
    assert spans[callee.span_hex].parent_span_id == 0  # a remote parent: a local root
    assert spans[caller.span_hex].link is None


def test_tracestate_travels_with_the_trace_and_an_existing_one_is_kept(sink: tracing.MemorySink) -> None:
    remote = tracing.extract({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "congo=t61rcWkgMzE"})
    with tracing.async_span("served", parent=remote), tracing.async_span("inner"):
        assert tracing.inject({})["tracestate"] == "congo=t61rcWkgMzE"
        assert tracing.inject({"tracestate": "mine=1"})["tracestate"] == "mine=1"


def test_inject_outside_any_span_writes_nothing(sink: tracing.MemorySink) -> None:
    assert tracing.inject({"x": "1"}) == {"x": "1"}
    assert not tracing.current_span_context().valid


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": ""},
        {"traceparent": "garbage"},
        {"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"},  # uppercase is not W3C
        {"traceparent": f"ff-{TRACE}-{PARENT}-01"},  # version ff is invalid
        {"traceparent": f"00-{'0' * 32}-{PARENT}-01"},
        {"traceparent": f"00-{TRACE}-{'0' * 16}-01"},
        {"traceparent": f"00-{TRACE}-{PARENT}-01-extra"},  # version 00 has exactly four fields
        {"traceparent": f"00-{TRACE[:-1]}-{PARENT}-01"},
        {"traceparent": f"00-{TRACE}-{PARENT[:-1]}g-01"},
        {"traceparent": 42},
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(sink: tracing.MemorySink, headers: dict) -> None:
    context = tracing.extract(headers)
    assert context == tracing.ROOT_CONTEXT and not context.valid
    with tracing.async_span("served", parent=context) as served:
        pass
    assert served.trace_id != TRACE and served.trace_id.endswith(served.span_hex)
    span = recorded(sink)[served.span_hex]
    assert (span.trace_id, span.link, span.parent_span_id) == (served.trace_id, None, 0)


def test_a_later_version_may_add_fields_and_headers_are_read_case_insensitively(sink: tracing.MemorySink) -> None:
    assert tracing.extract({"traceparent": f"01-{TRACE}-{PARENT}-01-more"}).trace_id == TRACE
    for headers in (
        {"Traceparent": f"00-{TRACE}-{PARENT}-00"},
        CIMultiDict({"TRACEPARENT": f"00-{TRACE}-{PARENT}-01"}),
        httpx.Headers({"TraceParent": f"00-{TRACE}-{PARENT}-01"}),
    ):
        context = tracing.extract(headers)
        assert (context.trace_id, context.span_hex) == (TRACE, PARENT)


# -- span ids ----------------------------------------------------------------------------------------------


def test_span_ids_start_at_random_and_ignore_the_programs_seed(sink: tracing.MemorySink) -> None:
    ids = []
    for _ in range(2000):
        with tracing.async_span("s") as span:
            ids.append(span.span_id)
    assert ids == list(range(ids[0], ids[0] + 2000)) and 0 < ids[0] < 2**63
    assert ids[0] > 2**32  # a random start (below it once in 2**31 processes)
    random.seed(7)
    with tracing.async_span("a") as first:
        pass
    random.seed(7)
    with tracing.async_span("b") as second:
        pass
    assert first.span_id != second.span_id
    assert first.span_id_int64 == first.span_id
    # A bare (span id, depth), as older code passed, is a span of its own trace.
    with tracing.async_span("legacy", parent=(first.span_id, 0)) as legacy:
        assert legacy.trace_id.endswith(first.span_hex)


def test_a_forked_child_draws_other_ids(sink: tracing.MemorySink) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, str(tracing.spans.new_span_id()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = int(os.read(read, 64))
    os.close(read)
    parent_next = tracing.spans.new_span_id()
    assert abs(child_id - parent_next) > 2**32  # the child counts from another random start


# -- hand-offs ---------------------------------------------------------------------------------------------


def _span_seen_on_a_thread() -> tuple[tracing.SpanContext, str]:
    with tracing.async_span("executor_work") as work:
        return tracing.current_span_context(), threading.current_thread().name if work else ""


def test_run_in_executor_carries_the_context_until_shutdown(sink: tracing.MemorySink) -> None:
    async def main() -> list[tuple[tracing.SpanContext, tracing.SpanContext]]:
        loop = asyncio.get_running_loop()
        seen = []
        with ThreadPoolExecutor(2, thread_name_prefix="pool") as pool:
            for executor in (None, pool):
                with tracing.async_span("request") as request:
                    work, _ = await loop.run_in_executor(executor, _span_seen_on_a_thread)
                    seen.append((request, work))
        return seen

    seen = asyncio.run(main())
    spans = recorded(sink)
    for request, work in seen:
        assert spans[work.span_hex].parent_span_id == request.span_id
        assert spans[work.span_hex].trace_id == request.trace_id
        assert spans[work.span_hex].link is None  # a copied context, not a hand-over
    assert handoffs.installed()
    tracing.shutdown()
    assert not handoffs.installed()

    async def after() -> tracing.SpanContext:
        with tracing.async_span("request"):
            return await asyncio.get_running_loop().run_in_executor(None, tracing.current_span_context)

    assert asyncio.run(after()) == tracing.ROOT_CONTEXT  # asyncio's own run_in_executor again
    tracing.init(sink=sink, flush_period=3600)  # the fixture shuts down once more


def test_a_queue_consumer_continues_the_producers_span_and_fan_in_links(sink: tracing.MemorySink) -> None:
    async def main() -> dict[str, tracing.SpanContext]:
        queue: asyncio.Queue = asyncio.Queue()
        seen: dict[str, tracing.SpanContext] = {}

        async def consumer() -> None:
            contexts = [await queue.get() for _ in range(2)]
            for index, context in enumerate(contexts):
                with tracing.async_span("consume", parent=context, kind="consumer") as consumed:
                    seen[f"consumed{index}"] = consumed
            with tracing.async_span("merge", links=contexts) as merged:
                seen["merged"] = merged

        task = asyncio.create_task(consumer())  # started outside any span
        for index in range(2):
            with tracing.async_span("produce", kind="producer") as produced:
                seen[f"produced{index}"] = produced
                await queue.put(tracing.current_span_context())
        await task
        return seen

    seen = asyncio.run(main())
    spans = recorded(sink)
    for index in range(2):
        produced, consumed = seen[f"produced{index}"], seen[f"consumed{index}"]
        span = spans[consumed.span_hex]
        assert (span.trace_id, span.parent_span_id, span.link) == (
            produced.trace_id,
            produced.span_id,
            produced.span_hex,
        )
        assert span.facts["kind"] == "consumer"
    merged = spans[seen["merged"].span_hex]
    assert merged.facts["links"] == [
        {"trace_id": seen[f"produced{i}"].trace_id, "span_hex": seen[f"produced{i}"].span_hex} for i in range(2)
    ]
    assert merged.trace_id not in {seen["produced0"].trace_id, seen["produced1"].trace_id}


def test_attach_on_another_thread_records_a_hand_off(sink: tracing.MemorySink) -> None:
    def worker(context: tracing.SpanContext, out: list) -> None:
        with tracing.attach(context), tracing.async_span("in_thread") as in_thread:
            out.append(in_thread)

    out: list = []
    with tracing.async_span("root") as root:
        thread = threading.Thread(target=worker, args=(tracing.current_span_context(), out))
        thread.start()
        thread.join()
    span = recorded(sink)[out[0].span_hex]
    assert (span.trace_id, span.parent_span_id, span.link) == (root.trace_id, root.span_id, root.span_hex)


def test_an_exception_marks_the_span(sink: tracing.MemorySink) -> None:
    with pytest.raises(KeyError), tracing.async_span("failing") as failing:
        raise KeyError("x")
    assert recorded(sink)[failing.span_hex].facts == {
        "kind": "internal",
        "attributes": {"error": "KeyError"},
        "links": [],
    }


# -- integrations ------------------------------------------------------------------------------------------


def test_aiohttp_and_httpx_clients_continue_into_an_aiohttp_server(sink: tracing.MemorySink) -> None:
    async def main() -> tuple[dict[str, str], dict[str, tracing.SpanContext]]:
        served: dict[str, str] = {}

        async def handle(request: web.Request) -> web.Response:
            served[request.query["client"]] = tracing.current_span_context().span_hex
            if request.query.get("fail"):
                raise web.HTTPNotFound()
            return web.Response(text="ok")

        app = web.Application(middlewares=[traced_aiohttp.middleware])
        app.router.add_get("/things/{id}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/things/1"
        roots = {}
        try:
            async with aiohttp.ClientSession(trace_configs=[traced_aiohttp.client_trace_config()]) as session:
                with tracing.async_span("aiohttp_caller") as roots["aiohttp"]:
                    async with session.get(base, params={"client": "aiohttp"}) as response:
                        assert response.status == 200
            async with httpx.AsyncClient(event_hooks=traced_httpx.async_event_hooks()) as client:
                with tracing.async_span("httpx_caller") as roots["httpx"]:
                    assert (await client.get(base, params={"client": "httpx", "fail": "1"})).status_code == 404
        finally:
            await runner.cleanup()
        return served, roots

    served, roots = asyncio.run(main())
    spans = recorded(sink)
    for client, status in (("aiohttp", 200), ("httpx", 404)):
        server = spans[served[client]]
        client_hex = server.link
        assert client_hex is not None
        client_span = spans[client_hex]
        assert client_span.parent_span_id == roots[client].span_id
        assert client_span.trace_id == server.trace_id == roots[client].trace_id
        assert client_span.facts["kind"] == "client" and server.facts["kind"] == "server"
        assert client_span.facts["attributes"]["http.status_code"] == status
        assert client_span.facts["attributes"]["http.url"].startswith("http://127.0.0.1:")
        assert server.facts["attributes"] == {
            "http.method": "GET",
            "http.route": "/things/{id}",
            "http.status_code": status,
        }
        assert server.name == "GET /things/{id}"
    assert json.dumps(spans[served["httpx"]].facts)  # facts are plain JSON
