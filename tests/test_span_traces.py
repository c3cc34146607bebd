"""The SDK's trace facts through a running server: `view_instance('span_traces', process_id)` rows
(trace ids, hex ids, hand-off and remote parents, kind, attributes, links, begin/end), the block
function the trace index reads, and micromegas-compatible decoding left as it was."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import micromegas
import numpy as np
import pandas as pd
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from trace_processor import STANDARD_QUERIES, query_trace
from web_support import Browser, WatchedPage

from spanlake import tracing
from spanlake.lakehouse.transit.decode import read_block_dependencies, stream_layout
from spanlake.tracing import trace_facts
from spanlake.views.span_traces import (
    FACTS_ID,
    LINK_RECORD,
    MAGIC,
    MAGIC_V2,
    ROOT_RECORD,
    SPAN_RECORD,
    THREAD_RECORD,
    TraceFactsError,
    _fact_columns,
    block_facts,
    block_traces,
    decode_facts,
)
from spanlake.views.time import TickConverter

REMOTE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with running_server(postgres, tmp_path_factory.mktemp("span_traces")) as server:
        yield server


def record_program(url: str) -> dict[str, tracing.SpanContext]:
    """An instrumented program: a local trace with a child, a hand-off to a thread, a span continuing
    a remote parent, a fan-in span with links. Returns the contexts it saw, by label."""
    seen: dict[str, tracing.SpanContext] = {}
    process = tracing.init(url, exe="span-traces-test", flush_period=3600)

    def worker(context: tracing.SpanContext) -> None:
        with tracing.attach(context), tracing.async_span("in_thread") as in_thread:
            seen["in_thread"] = in_thread

    @tracing.span_fn
    async def child() -> None:
        seen["child"] = tracing.current_span_context()

    @tracing.span_fn
    async def request() -> None:
        seen["request"] = tracing.current_span_context()
        await child()
        thread = threading.Thread(target=worker, args=(tracing.current_span_context(),))
        thread.start()
        thread.join()

    async def main() -> None:
        await request()
        remote = tracing.extract({"traceparent": REMOTE, "tracestate": "vendor=1"})
        attributes = {"http.method": "GET", "http.route": "/items"}
        with tracing.async_span("served", parent=remote, kind="server", attributes=attributes) as served:
            seen["served"] = served
            attributes["http.status_code"] = 200  # completed in the body: read at the end
        with tracing.async_span("fan_in", links=[seen["request"], seen["served"]]) as fan_in:
            seen["fan_in"] = fan_in

    asyncio.run(main())
    assert tracing.shutdown()
    seen["process"] = process  # type: ignore[assignment]
    return seen


@pytest.fixture(scope="module")
def program(server: SpanlakeServer) -> dict[str, tracing.SpanContext]:
    return record_program(server.http_url)


def span_rows(server: SpanlakeServer, process_id: str) -> pd.DataFrame:
    client = micromegas.connect(server.flightsql_url)
    rows = client.query(f"SELECT * FROM view_instance('span_traces', '{process_id}') ORDER BY begin")
    return rows.set_index("span_hex", drop=False)


def test_span_traces_rows(server: SpanlakeServer, program: dict) -> None:
    process_id = str(program["process"].process_id)
    rows = span_rows(server, process_id)
    request, child, in_thread, served, fan_in = (
        program[label] for label in ("request", "child", "in_thread", "served", "fan_in")
    )
    assert list(rows["span_hex"]) == [c.span_hex for c in (request, child, in_thread, served, fan_in)]
    # One local trace for the request's tree (its root's own id is the trace id's low half).
    for context in (child, in_thread):
        assert rows.loc[context.span_hex, "trace_id"] == request.trace_id
    assert request.trace_id.endswith(request.span_hex) and len(request.trace_id) == 32
    assert rows.loc[request.span_hex, "span_id"] == request.span_id_int64
    # Parents within the process are async_events' business: null here, except hand-offs and remote ones.
    assert rows.loc[request.span_hex, "parent_span_hex"] is None
    assert rows.loc[child.span_hex, "parent_span_hex"] is None
    assert rows.loc[in_thread.span_hex, "parent_span_hex"] == request.span_hex
    assert rows.loc[served.span_hex, "trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert rows.loc[served.span_hex, "parent_span_hex"] == "b7ad6b7169203331"
    assert rows.loc[served.span_hex, "kind"] == "server"
    assert json.loads(rows.loc[served.span_hex, "attributes"]) == {
        "http.method": "GET",
        "http.route": "/items",
        "http.status_code": 200,
    }
    assert rows.loc[child.span_hex, "kind"] == "internal"
    assert rows.loc[child.span_hex, "attributes"] == "{}"
    assert [dict(link) for link in rows.loc[fan_in.span_hex, "links"]] == [
        {"trace_id": request.trace_id, "span_hex": request.span_hex},
        {"trace_id": served.trace_id, "span_hex": served.span_hex},
    ]
    assert fan_in.trace_id not in (request.trace_id, served.trace_id)  # a root: its own trace
    assert (rows["end"] >= rows["begin"]).all()


def test_async_events_show_the_same_ids_and_remote_parents_as_local_roots(
    server: SpanlakeServer, program: dict
) -> None:
    process_id = str(program["process"].process_id)
    client = micromegas.connect(server.flightsql_url)
    events = client.query(
        f"SELECT span_id, parent_span_id, depth, name FROM view_instance('async_events', '{process_id}')"
        " WHERE event_type = 'begin'"
    ).set_index("span_id")
    request, child, in_thread, served = (program[label] for label in ("request", "child", "in_thread", "served"))
    assert events.loc[child.span_id_int64, "parent_span_id"] == request.span_id_int64
    assert events.loc[in_thread.span_id_int64, "parent_span_id"] == request.span_id_int64
    assert (events.loc[served.span_id_int64, "parent_span_id"], events.loc[served.span_id_int64, "depth"]) == (0, 0)
    assert set(events.index) == set(span_rows(server, process_id)["span_id"])


def test_block_traces_lists_each_blocks_traces(server: SpanlakeServer, program: dict) -> None:
    process = program["process"]
    streams = {row["stream_id"]: row for row in server.stream_rows(process.process_id)}
    found: dict[str, int] = {}
    for block, payload in server.stored_blocks(process.process_id):
        stream = streams[block["stream_id"]]
        if "cpu" not in stream["tags"]:
            continue
        layout = stream_layout(bytes(stream["dependencies_metadata"]), bytes(stream["objects_metadata"]))
        convert = TickConverter(process.start_ticks, process.start_time_ns, process.tsc_frequency)
        table = block_traces(read_block_dependencies(payload, layout), convert)
        assert (table["begin_max"].to_numpy() >= table["begin_min"].to_numpy()).all()
        for trace_id, spans in zip(table["trace_id"].to_pylist(), table["spans"].to_pylist(), strict=True):
            found[trace_id] = found.get(trace_id, 0) + spans
    assert found == {program["request"].trace_id: 3, program["served"].trace_id: 1, program["fan_in"].trace_id: 1}


def test_the_sdk_writes_the_format_the_view_reads() -> None:
    ours = (FACTS_ID, MAGIC, ROOT_RECORD, SPAN_RECORD, LINK_RECORD)
    assert ours == (
        trace_facts.FACTS_ID,
        trace_facts.MAGIC,
        trace_facts.ROOT_RECORD,
        trace_facts.SPAN_RECORD,
        trace_facts.LINK_RECORD,
    )
    roots = np.array([(11, 100)], ROOT_RECORD)
    spans = np.array([(-5, 1, -3, 200)], SPAN_RECORD)
    links = np.array([(-5, 11)], LINK_RECORD)
    text = trace_facts.encode(-9, roots, spans, links, np.array([-5], np.int64), ['{"kind":"client"}'])
    decoded = decode_facts(text)
    # A root's trace is the process's prefix followed by its own id.
    assert decoded.spans.tolist() == [(11, -9, 11, 100), (-5, 1, -3, 200)]
    assert decoded.links.tolist() == [(-5, 11)]
    assert (decoded.facts_span_ids.tolist(), decoded.facts) == ([-5], [{"kind": "client"}])


@pytest.mark.parametrize(
    "text",
    [
        "not trace facts",
        f"{MAGIC};1;;;[]",  # a part missing
        f"{MAGIC};x;;;;[]",  # a prefix that is not a number
        f"{MAGIC};{2**64};;;;[]",  # a prefix outside int64
        f"{MAGIC};1;@@@;;;[]",  # not base64
        f"{MAGIC};1;;AAAA;;[]",  # 3 bytes: not whole records
        f"{MAGIC};1;;;;[[1]]",  # a pair that is not a pair
        f"{MAGIC};1;;;;[",  # not JSON
        f'{MAGIC};1;;;;[["1", {{}}]]',  # a span id that is not an int
        f"{MAGIC};1;;;;[[{2**64}, {{}}]]",  # outside int64
        f"{MAGIC};1;;;;[[1, []]]",  # facts that are not an object
        42,
    ],
)
def test_unreadable_trace_facts_are_skipped_with_a_warning(text: object, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(TraceFactsError):
        decode_facts(text)
    assert len(block_facts({FACTS_ID: text}, "block x").spans) == 0  # type: ignore[dict-item]
    assert "block x: trace facts skipped" in caplog.text


def test_odd_facts_become_defaults_not_errors() -> None:
    facts = {7: {"kind": 5, "attributes": [1], "links": [{"trace_id": 1}, "x", {"trace_id": "a", "span_hex": "b"}]}}
    kinds, attributes, links = _fact_columns(np.array([7, 8], np.int64), facts)
    assert kinds.to_pylist() == ["5", "internal"]
    assert attributes.to_pylist() == ["{}", "{}"]
    assert links.to_pylist() == [[{"trace_id": "a", "span_hex": "b"}], []]


def test_a_process_without_async_spans_has_no_rows(server: SpanlakeServer) -> None:
    process = tracing.init(server.http_url, exe="no-async-spans", flush_period=3600)

    @tracing.span_fn
    def thread_work() -> None:
        tracing.info("only a thread span and a log")

    thread_work()
    assert tracing.shutdown()
    assert len(span_rows(server, str(process.process_id))) == 0


def test_the_first_format_is_refused_not_misread() -> None:
    # What the SDK wrote before the roots/spans/links split: a clear error, the block's facts skipped.
    with pytest.raises(TraceFactsError, match=r"not a spanlake\.trace_facts/2 text"):
        decode_facts("spanlake.trace_facts/1;AAAAAAAAAAA=;[]")


# ---------------------------------------------------------------------------------------------------
# Thread spans in traces: sync spans run under an async span (executor workers, the loop thread)


@tracing.span_fn
def parse() -> None:
    """A sync span with a nested one: both in the trace of whatever async span ran it."""
    with tracing.span_scope("parse_inner"):
        time.sleep(0.0005)


@tracing.span_fn
def blocking_work() -> None:
    """Runs on an executor worker: finds the request's span without help, through the copied context."""
    parse()
    with tracing.span_scope_named("load_7"):
        time.sleep(0.0005)
    with tracing.async_span("in_worker"), tracing.span_scope("under_async"):
        pass


@tracing.span_fn
def on_loop() -> None:
    """Called directly from a coroutine, on the loop thread."""


def thread_program(url: str) -> dict[str, object]:
    """A request span handing work to the default executor (`run_in_executor`) and to `to_thread`, and
    calling a sync function on the loop thread; then the same sync work outside any span."""
    process = tracing.init(url, exe="thread-spans-test", flush_period=3600)

    async def main() -> tracing.SpanContext:
        loop = asyncio.get_running_loop()
        with tracing.async_span("request") as request:
            await loop.run_in_executor(None, blocking_work)
            on_loop()
            await asyncio.to_thread(parse)
        await loop.run_in_executor(None, parse)  # no span around it: in no trace
        on_loop()
        return request

    request = asyncio.run(main())
    assert tracing.shutdown()
    return {"process": process, "request": request}


@pytest.fixture(scope="module")
def threads(server: SpanlakeServer) -> dict[str, object]:
    return thread_program(server.http_url)


def trace_rows(server: SpanlakeServer, trace_id: str) -> pd.DataFrame:
    client = micromegas.connect(server.flightsql_url)
    return client.query(f"SELECT * FROM trace_spans('{trace_id}')")


def test_thread_spans_under_async_spans_are_in_the_trace(server: SpanlakeServer, threads: dict) -> None:
    request = threads["request"]
    spans = trace_rows(server, request.trace_id)
    name_of = dict(zip(spans["span_id"], spans["name"], strict=True))
    # (name, parent's name, depth), in begin order: the worker's spans under `blocking_work`, itself under
    # the request; a sync span under an async span begun in the worker under that one; the loop thread's.
    shape = [
        (row.name, name_of.get(row.parent_span_id), row.depth)
        for row in spans.itertuples()  # a handful of rows: the test reads them one by one
    ]
    assert shape == [
        ("request", None, 0),
        ("blocking_work", "request", 1),
        ("parse", "blocking_work", 2),
        ("parse_inner", "parse", 3),
        ("load_7", "blocking_work", 2),
        ("in_worker", "request", 1),
        ("under_async", "in_worker", 2),
        ("on_loop", "request", 1),
        ("parse", "request", 1),
        ("parse_inner", "parse", 2),
    ]
    assert set(spans["trace_id"]) == {request.trace_id}
    assert spans["span_id"].str.fullmatch("[0-9a-f]{16}").all() and spans["span_id"].is_unique
    thread_rows = spans[~spans["name"].isin(["request", "in_worker"])]
    assert (thread_rows["span_id"].apply(int, base=16) >= 2**63).all()  # thread span ids have the top bit
    assert spans.loc[spans["name"] == "request", "span_id"].item() == request.span_hex
    # Executor and to_thread workers are other streams than the loop thread's.
    stream_of = dict(zip(spans["name"], spans["stream_id"], strict=False))
    assert stream_of["blocking_work"] != stream_of["on_loop"] == stream_of["request"]
    assert (spans["end"] > spans["begin"]).all() and (spans["kind"] == "internal").all()
    for row in spans.itertuples():  # each span begins and ends within its parent
        if row.parent_span_id is not None:
            parent = spans[spans["span_id"] == row.parent_span_id].iloc[0]
            assert parent["begin"] <= row.begin and row.end <= parent["end"], row.name


def test_span_traces_lists_thread_spans_with_the_async_span_they_ran_under(
    server: SpanlakeServer, threads: dict
) -> None:
    request = threads["request"]
    rows = span_rows(server, str(threads["process"].process_id))
    thread_rows = rows[rows["span_id"] < 0]
    assert len(thread_rows) == 8  # blocking_work, 2 x (parse, parse_inner), load_7, under_async, on_loop
    in_worker = rows[(rows["span_id"] > 0) & (rows["span_hex"] != request.span_hex)]["span_hex"].item()
    assert sorted(thread_rows["parent_span_hex"]) == sorted([request.span_hex] * 7 + [in_worker])
    assert set(thread_rows["trace_id"]) == {request.trace_id} and thread_rows["end"].isna().all()


def test_block_traces_count_thread_spans(server: SpanlakeServer, threads: dict) -> None:
    process = threads["process"]
    streams = {row["stream_id"]: row for row in server.stream_rows(process.process_id)}
    counted = 0
    for block, payload in server.stored_blocks(process.process_id):
        stream = streams[block["stream_id"]]
        if "cpu" in stream["tags"]:
            layout = stream_layout(bytes(stream["dependencies_metadata"]), bytes(stream["objects_metadata"]))
            convert = TickConverter(process.start_ticks, process.start_time_ns, process.tsc_frequency)
            table = block_traces(read_block_dependencies(payload, layout), convert)
            assert set(table["trace_id"].to_pylist()) <= {threads["request"].trace_id}
            counted += sum(table["spans"].to_pylist())
    assert counted == 10  # the request, in_worker and the 8 thread spans


def test_the_trace_page_shows_thread_spans(
    server: SpanlakeServer, threads: dict, chrome: Browser, watched: WatchedPage
) -> None:
    page = watched.page
    page.goto(f"{server.http_url}/trace/{threads['request'].trace_id}")
    page.wait_for_selector("#waterfall[data-loaded=true]")
    names = page.locator("#waterfall .span-row").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert names.count("parse_inner") == 2 and "blocking_work" in names and "on_loop" in names
    row = page.locator("#waterfall .span-row[data-name='load_7']")
    row.click()
    details = page.locator("#waterfall .span-details")
    assert details.locator("dd[data-field='parent']").inner_text().startswith("blocking_work")
    assert watched.errors == []
    chrome.shot(page, "trace-thread-spans")


def test_perfetto_draws_thread_spans_of_the_trace(server: SpanlakeServer, threads: dict, tmp_path: Path) -> None:
    out = tmp_path / "trace.pftrace"
    command = [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--trace", threads["request"].trace_id]
    done = subprocess.run([*command, "-o", str(out), "--uri", server.flightsql_url], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    slices = query_trace(out.read_bytes(), {**STANDARD_QUERIES, "slices": "SELECT name FROM slice ORDER BY ts"})
    assert [row["name"] for row in slices["slices"].dicts()] == [
        "request",
        "blocking_work",
        "parse",
        "parse_inner",
        "load_7",
        "in_worker",
        "under_async",
        "on_loop",
        "parse",
        "parse_inner",
    ]
    assert slices["stats"].dicts() == []


def test_the_sdk_and_the_view_agree_on_thread_records() -> None:
    assert THREAD_RECORD == trace_facts.THREAD_RECORD
    runs = np.zeros(1, THREAD_RECORD)
    runs[0] = (3, 2, 11, -9, 77, 100, 200)
    empty = (np.zeros(0, ROOT_RECORD), np.zeros(0, SPAN_RECORD), np.zeros(0, LINK_RECORD))
    facts = ['{"kind":"client","attributes":{"a":";["}}']  # a ';' and a '[' in the JSON
    decoded = decode_facts(trace_facts.encode(-9, *empty, np.array([5]), facts, runs))
    assert decoded.threads.tolist() == runs.tolist()
    assert decoded.facts == [{"kind": "client", "attributes": {"a": ";["}}]
    # Without thread runs the text is as before (no threads part).
    without = trace_facts.encode(-9, *empty, np.array([5]), facts)
    assert without == f"{MAGIC};-9;;;;[[5,{facts[0]}]]"
    assert decode_facts(without).threads.size == 0 and decode_facts(without).facts == decoded.facts


def test_the_traces_row_counts_thread_spans(server: SpanlakeServer, threads: dict) -> None:
    trace_id = threads["request"].trace_id
    sql = f"SELECT root_name, span_count, process_count FROM traces WHERE trace_id = '{trace_id}'"
    client = micromegas.connect(server.flightsql_url)

    def row() -> list[dict]:
        return client.query(sql).to_dict("records")

    # The request, in_worker and the 8 thread spans that ran under them: as many as trace_spans lists.
    wait_until(lambda: row() == [{"root_name": "request", "span_count": 10, "process_count": 1}], 30, "the row")
    assert len(trace_rows(server, trace_id)) == 10


# ---------------------------------------------------------------------------------------------------
# The delta-coded parts (spanlake.trace_facts/3) and the layout before them (/2), which stored blocks hold


def _facts_arrays(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Roots, spans, links and thread runs with values across the whole int64 range, in any order."""
    generator = np.random.default_rng(seed)

    def records(dtype: np.dtype, count: int) -> np.ndarray:
        values = generator.integers(-(2**63), 2**63 - 1, (count, len(dtype.names)), np.int64, endpoint=True)
        return np.ascontiguousarray(values).view(dtype).reshape(count)

    return records(ROOT_RECORD, 5), records(SPAN_RECORD, 1), records(LINK_RECORD, 2), records(THREAD_RECORD, 3)


def _b64(records: np.ndarray) -> str:
    return base64.b64encode(records.tobytes()).decode()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_delta_coded_parts_read_back_as_written(seed: int) -> None:
    roots, spans, links, runs = _facts_arrays(seed)
    decoded = decode_facts(trace_facts.encode(-9, roots, spans, links, np.array([5]), ["{}"], runs))
    assert decoded.spans["span_id"].tolist() == [*roots["span_id"].tolist(), *spans["span_id"].tolist()]
    assert decoded.spans["time"].tolist() == [*roots["time"].tolist(), *spans["time"].tolist()]
    assert decoded.spans[len(roots) :].tolist() == spans.tolist()
    assert (decoded.links.tolist(), decoded.threads.tolist()) == (links.tolist(), runs.tolist())


def test_counting_ids_and_growing_times_cost_a_few_bytes_a_root() -> None:
    roots = np.zeros(1000, ROOT_RECORD)
    roots["span_id"] = np.arange(2**63 - 500, 2**63 + 500, dtype=np.uint64).view(np.int64)  # wraps to negative
    roots["time"] = 7_000 + 1_500 * np.arange(1000) + np.arange(1000) % 2 * 100
    part = trace_facts.encode_records(roots)
    header, body = part.split(":")
    # Ids one apart: no byte; times 1 400 or 1 600 apart: one byte each (the delta less 1 400).
    assert header == f"1000,{2**63 - 500},1,0,7000,1400,1"
    assert len(base64.b64decode(body)) == 999
    decoded = decode_facts(
        trace_facts.encode(-9, roots, np.zeros(0, SPAN_RECORD), np.zeros(0, LINK_RECORD), np.zeros(0), [])
    )
    assert decoded.spans["span_id"].tolist() == roots["span_id"].tolist()
    assert decoded.spans["time"].tolist() == roots["time"].tolist()


def test_the_second_format_still_reads_as_before() -> None:
    roots, spans, links, runs = _facts_arrays(4)
    facts = '[[5,{"kind":"client"}]]'
    stored = f"{MAGIC_V2};-9;{_b64(roots)};{_b64(spans)};{_b64(links)};{_b64(runs)};{facts}"
    current = trace_facts.encode(-9, roots, spans, links, np.array([5]), ['{"kind":"client"}'], runs)
    assert current.startswith(f"{MAGIC};")
    before, now = decode_facts(stored), decode_facts(current)
    assert before.spans.tolist() == now.spans.tolist() and before.links.tolist() == now.links.tolist()
    assert before.threads.tolist() == now.threads.tolist() and before.facts == now.facts == [{"kind": "client"}]
    assert decode_facts(f"{MAGIC_V2};-9;{_b64(roots[:1])};;;[]").spans.tolist() == [
        (roots["span_id"][0], -9, roots["span_id"][0], roots["time"][0])
    ]


@pytest.mark.parametrize(
    "part",
    [
        "2,1,0,0,5,0,0:",  # a column missing
        "0,1,0,0,5,0,0,9,0,0,5,0,0:",  # no record yet columns
        "2,1,0,3,5,0,0,9,0,0,5,0,0:AAA=",  # a width that is not 0, 1, 2, 4 or 8
        "2,1,0,1,5,0,0,9,0,0,5,0,0:",  # a byte missing
        f"2,{2**63},0,0,5,0,0,9,0,0,5,0,0:",  # a first value outside int64
        "2,x,0,0,5,0,0,9,0,0,5,0,0:",  # not a number
        "2,1,0,0,5,0,0,9,0,0,5,0,0:@@",  # not base64
    ],
)
def test_unreadable_delta_coded_parts_are_errors(part: str) -> None:
    with pytest.raises(TraceFactsError, match="trace facts: spans"):
        decode_facts(f"{MAGIC};1;;{part};;[]")
