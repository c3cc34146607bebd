"""The span trees' corners a newcomer hit, through a running `spanlake serve` and Chromium: a thread span
whose children are all leaves opens (it answered 500), the span whose id is 0 does not list the tree's
root as its child, the status line says that its time is load time, and the details show ids in hex."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import PostgresServer, SpanlakeServer, http, running_server, wait_until
from web_support import Browser, WatchedPage

from spanlake import tracing

LEAVES = 3


@dataclass
class Traced:
    server: SpanlakeServer
    process_id: str
    stream_id: str  # the cpu stream of the thread "leafy"


def leafy_thread() -> None:
    """One span (the stream's first event: id 0) whose children are all leaves."""
    with tracing.span_scope_named("outer"):
        for i in range(LEAVES):
            with tracing.span_scope_named(f"leaf_{i}"):
                pass


@pytest.fixture(scope="module")
def traced(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    with running_server(postgres, tmp_path_factory.mktemp("span-tree-fixes")) as server:
        process = tracing.init(server.http_url, exe="span-tree-fixes", flush_period=3600)
        try:
            thread = threading.Thread(target=leafy_thread, name="leafy")
            thread.start()
            thread.join()
        finally:
            assert tracing.shutdown(timeout=30)
        pid = uuid.UUID(str(process.process_id))
        wait_until(lambda: server.block_rows(pid), 10, "the blocks of the program")
        [stream] = [
            row
            for row in server.stream_rows(pid)
            if "cpu" in row["tags"] and {"key": "thread-name", "value": "leafy"} in map(dict, row["properties"])
        ]
        yield Traced(server, str(pid), str(stream["stream_id"]))


def level(traced: Traced, **params: str) -> tuple[int, dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    status, body = http("GET", f"{traced.server.http_url}/api/stream/{traced.stream_id}/thread-spans?{query}")
    return status, json.loads(body)


def test_a_span_whose_children_are_all_leaves_opens_without_its_root(traced: Traced) -> None:
    status, top = level(traced, **{"from": "now-1h", "to": "now"})
    assert status == 200, top
    [root] = top["spans"]  # the thread's synthetic root (id -1, parent 0, depth 0)
    assert (root["id"], root["parent"], root["depth"], root["children"]) == ("-1", "0", 0, 1)
    status, under_root = level(traced, parent="-1", **{"from": "now-1h", "to": "now"})
    [outer] = under_root["spans"]
    assert (outer["name"], outer["id"], outer["depth"], outer["children"]) == ("outer", "0", 1, LEAVES)
    status, under_outer = level(traced, parent="0", **{"from": "now-1h", "to": "now"})
    assert status == 200, under_outer
    assert [(s["name"], s["depth"], s["parent"], s["children"]) for s in under_outer["spans"]] == [
        (f"leaf_{i}", 2, "0", 0) for i in range(LEAVES)
    ]
    assert under_outer["total"] == LEAVES


def test_thread_tree_in_the_browser(traced: Traced, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{traced.server.http_url}/process/{traced.process_id}/threads")
    thread = page.locator(f"details.thread[data-stream='{traced.stream_id}']")
    thread.locator("summary").click()
    tree = thread.locator(".spantree[data-loaded=true]")
    tree.wait_for()
    status = tree.locator(".tree-status").inner_text()
    assert status.startswith("1 top-level span · loaded in ") and status.endswith(" ms"), status
    tree.locator(".span-row[data-id='-1'] .twisty").click()
    outer = tree.locator(".span-row[data-id='0']")
    outer.locator(".twisty").click()
    children = tree.locator(".span-node:has(> .span-row[data-id='0']) > .span-children > .span-node > .span-row")
    children.nth(LEAVES - 1).wait_for()
    assert [children.nth(i).get_attribute("data-name") for i in range(children.count())] == [
        f"leaf_{i}" for i in range(LEAVES)
    ]
    assert tree.locator(".tree-status.error").count() == 0
    outer.click()
    details = tree.locator(".span-details")
    assert details.locator("dd[data-field='span id (hex)']").inner_text() == "0" * 16
    assert details.locator("dd[data-field='parent (hex)']").inner_text() == "f" * 16  # -1 as 64 bits
    chrome.shot(page, "thread-tree-leaves")
