"""The web UI in a real browser (Debian's chromium through playwright) against a running `spanlake serve`
holding the micromegas Rust fixture and a `spanlake generate` process: what a person sees on each
screen is checked against the same question asked in SQL over Flight SQL."""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import micromegas
import pandas as pd
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from web_support import (
    RUST_PROCESS_ID,
    Browser,
    WatchedPage,
    generate,
    off_loop,
    upload_rust_fixture,
)

from spanlake.lakehouse.timestamps import parse_rfc3339_ns


@dataclass
class Lake:
    server: SpanlakeServer
    generated: str  # process id of `spanlake generate`

    @property
    def url(self) -> str:
        return self.server.http_url

    def sql(self, statement: str, begin: str | None = None, end: str | None = None) -> pd.DataFrame:
        client = micromegas.connect(self.server.flightsql_url)
        if begin is None:
            return client.query(statement)
        return client.query(statement, as_datetime(begin), as_datetime(end))


def as_datetime(rfc3339: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(parse_rfc3339_ns(rfc3339) / 1e9, dt.UTC)


@pytest.fixture(scope="module")
def lake(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    with running_server(postgres, tmp_path_factory.mktemp("web-ui")) as server:
        upload_rust_fixture(server.http_url)
        pid = generate(
            server.http_url, "--tasks", "60", "--threads", "2", "--async-tasks", "4", "--flush-period", "0.5"
        )
        lake = Lake(server, pid)
        both = f"SELECT process_id FROM processes WHERE process_id IN ('{pid}', '{RUST_PROCESS_ID}')"
        wait_until(lambda: len(lake.sql(both)) == 2, 30, "both processes in the processes view")
        yield lake


def page_range(page: object) -> tuple[str, str]:
    return page.input_value("form.timerange input[name=from]"), page.input_value("form.timerange input[name=to]")


def test_processes_list_search_and_sort(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(lake.url + "/")
    assert {lake.generated, RUST_PROCESS_ID} <= set(page.locator("#processes a.pid").all_inner_texts())
    chrome.shot(page, "processes")
    page.fill("input[name=q]", "mm-fixture")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**q=mm-fixture**")
    assert page.locator("#processes a.pid").all_inner_texts() == [RUST_PROCESS_ID]
    assert page.locator("#processes tbody td:nth-child(2)").all_inner_texts() == ["/usr/local/bin/mm-fixture-gen"]
    page.goto(lake.url + "/?sort=exe&dir=asc")
    exes = page.locator("#processes tbody td:nth-child(2)").all_inner_texts()
    assert exes == sorted(exes) and len(exes) >= 2
    page.click("#processes th a:has-text('exe')")  # toggles to descending
    assert page.locator("#processes tbody td:nth-child(2)").all_inner_texts() == sorted(exes, reverse=True)
    page.click("details.sql-behind summary")
    assert "FROM processes" in page.inner_text("details.sql-behind pre")


@pytest.mark.parametrize("which", ["rust", "generated"])
def test_process_page_counts_equal_sql(lake: Lake, chrome: Browser, watched: WatchedPage, which: str) -> None:
    pid = RUST_PROCESS_ID if which == "rust" else lake.generated
    page = watched.page
    page.goto(f"{lake.url}/process/{pid}")
    shown = {e.get_attribute("data-count"): int(e.inner_text().replace(",", "")) for e in page.locator(".count").all()}
    begin, end = page_range(page)
    cpu_streams = [str(s["stream_id"]) for s in off_loop(lake.server.stream_rows, pid) if "cpu" in s["tags"]]
    thread_spans = sum(
        lake.sql(f"SELECT count(*) AS n FROM view_instance('thread_spans', '{s}')", begin, end).n[0]
        for s in cpu_streams
    )
    expected = {
        "log-entries": lake.sql(f"SELECT count(*) AS n FROM view_instance('log_entries', '{pid}')", begin, end).n[0],
        "measures": lake.sql(f"SELECT count(*) AS n FROM view_instance('measures', '{pid}')", begin, end).n[0],
        "async-spans": lake.sql(
            f"SELECT count(*) AS n FROM view_instance('async_events', '{pid}') WHERE event_type = 'begin'", begin, end
        ).n[0],
        "thread-spans": thread_spans,
        "threads": len(cpu_streams),
    }
    assert shown == expected and all(n > 0 for n in shown.values())
    info = dict(
        zip(
            page.locator("#info td:nth-child(1)").all_inner_texts(),
            page.locator("#info td:nth-child(2)").all_inner_texts(),
            strict=True,
        )
    )
    assert info["exe"] == off_loop(lake.server.process_row, pid)["exe"] and info["process id"] == pid
    chrome.shot(page, f"process-{which}")


def test_logs_level_filter_and_search(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{lake.url}/process/{RUST_PROCESS_ID}/logs")
    begin, end = page_range(page)
    page.select_option("select[name=level]", "2")
    page.click("form.search button")
    page.wait_for_url("**level=2**")
    levels = page.locator("#logs .level").all_inner_texts()
    logs = f"view_instance('log_entries', '{RUST_PROCESS_ID}')"
    sql = f"SELECT time, level, msg FROM {logs} WHERE level <= 2 ORDER BY time DESC"
    expected = lake.sql(sql, begin, end)
    assert levels == [{1: "fatal", 2: "error"}[n] for n in expected.level] and len(levels) > 0
    assert page.locator("#logs .level.lvl-2").count() == (expected.level == 2).sum()
    assert page.locator("#logs pre.msg").all_inner_texts() == list(expected.msg)
    chrome.shot(page, "logs")
    page.goto(f"{lake.url}/process/{RUST_PROCESS_ID}/logs?q=TAGGED+log")
    matching = lake.sql(
        f"SELECT msg FROM view_instance('log_entries', '{RUST_PROCESS_ID}') WHERE strpos(lower(msg), 'tagged log') > 0",
        begin,
        end,
    )
    messages = page.locator("#logs pre.msg").all_inner_texts()
    assert len(messages) == len(matching) > 0 and all("tagged log" in m.lower() for m in messages)


def test_metrics_chart_series(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{lake.url}/process/{lake.generated}/metrics")
    begin, end = page_range(page)
    page.click("#measures a.measure:has-text('Worker Progress')")
    page.wait_for_selector("svg#chart circle.point")
    points = page.locator("svg#chart circle.point")
    values = [
        {k: float(points.nth(i).get_attribute(f"data-{k}")) for k in ("min", "avg", "max", "n")}
        for i in range(points.count())
    ]
    raw = lake.sql(
        f"SELECT value FROM view_instance('measures', '{lake.generated}') WHERE name = 'Worker Progress'", begin, end
    ).value
    assert sum(v["n"] for v in values) == len(raw) > 1
    assert min(v["min"] for v in values) == raw.min() and max(v["max"] for v in values) == raw.max()
    assert sum(v["avg"] * v["n"] for v in values) == pytest.approx(raw.sum())
    assert page.locator("svg#chart polyline.avg").get_attribute("points").count(",") == len(values)
    chrome.shot(page, "metrics")


def span_rows(container: object) -> list[tuple[str, int]]:
    rows = container.locator(":scope > .span-node > .span-row")
    return [(r.get_attribute("data-name"), int(r.get_attribute("data-depth"))) for r in rows.all()]


def test_async_span_tree_expands_to_children(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    pid = RUST_PROCESS_ID
    page.goto(f"{lake.url}/process/{pid}/spans")
    page.wait_for_selector("#async-tree[data-loaded=true]")
    begin, end = page_range(page)
    events = f"view_instance('async_events', '{pid}')"
    top = lake.sql(
        f"SELECT span_id, name, depth FROM {events} WHERE event_type = 'begin' AND depth = 0 ORDER BY time, span_id",
        begin,
        end,
    )
    tree = page.locator("#async-tree .tree-rows")
    assert span_rows(tree) == list(zip(top.name, top.depth, strict=True))[:500]
    assert page.inner_text("#async-tree .tree-status").startswith(f"{len(top)} top-level spans")
    parent = page.locator("#async-tree .span-row[aria-expanded=false]").first
    parent_id = parent.get_attribute("data-id")
    parent.locator(".twisty").click()
    children = page.locator(f"#async-tree .span-node:has(> .span-row[data-id='{parent_id}']) > .span-children")
    children.locator(".span-row").first.wait_for()
    expected = lake.sql(
        f"SELECT name, depth FROM {events} WHERE event_type = 'begin' AND parent_span_id = {parent_id}"
        " ORDER BY time, span_id",
        begin,
        end,
    )
    assert span_rows(children) == list(zip(expected.name, expected.depth, strict=True)) and len(expected) > 0
    first_child = children.locator(".span-row").first
    first_child.click()
    assert page.inner_text("#async-tree .span-details dd[data-field=parent]") == parent_id
    assert page.inner_text("#async-tree .span-details dd[data-field=depth]") == str(expected.depth[0])
    page.fill("#async-tree .tree-search", expected.name[0])
    hits = page.locator("#async-tree .span-row.hit")
    assert hits.count() >= 1 and all(expected.name[0].lower() in n.lower() for n in hits.all_inner_texts())
    chrome.shot(page, "async-spans")


def test_thread_call_tree(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    pid = RUST_PROCESS_ID
    page.goto(f"{lake.url}/process/{pid}/threads")
    begin, end = page_range(page)
    thread = page.locator("details.thread:has(summary:has-text('main'))")
    stream_id = thread.get_attribute("data-stream")
    thread.locator("summary").click()
    tree = thread.locator(".spantree")
    page.wait_for_selector(f"details.thread[data-stream='{stream_id}'] .spantree[data-loaded=true]")
    spans = f"view_instance('thread_spans', '{stream_id}')"
    top = lake.sql(f"SELECT id, name, depth FROM {spans} WHERE depth = 0 ORDER BY begin, id", begin, end)
    assert span_rows(tree.locator(".tree-rows")) == list(zip(top.name, top.depth, strict=True))[:500]
    parent = tree.locator(".span-row[aria-expanded=false]").first
    parent_id = parent.get_attribute("data-id")
    parent.dblclick()
    children = tree.locator(f".span-node:has(> .span-row[data-id='{parent_id}']) > .span-children")
    children.locator(".span-row").first.wait_for()
    expected = lake.sql(f"SELECT name, depth FROM {spans} WHERE parent = {parent_id} ORDER BY begin, id", begin, end)
    assert span_rows(children) == list(zip(expected.name, expected.depth, strict=True)) and len(expected) > 0
    chrome.shot(page, "threads")


def test_sql_page_result_and_error(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{lake.url}/sql?from=now-1h&to=now")
    sql = "SELECT exe, count(*) AS n FROM processes GROUP BY exe ORDER BY exe"
    page.fill("#sql-text", sql)
    page.press("#sql-text", "Control+Enter")
    page.wait_for_selector("#result-table")
    begin = page.get_attribute("#sql-form", "data-from")
    expected = lake.sql(sql, begin, page.get_attribute("#sql-form", "data-to"))
    assert page.locator("#result-table th").all_inner_texts() == ["exe", "n"]
    cells = page.locator("#result-table tbody tr").all()
    assert [tuple(r.locator("td").all_inner_texts()) for r in cells] == [
        (exe, str(n)) for exe, n in zip(expected.exe, expected.n, strict=True)
    ]
    assert page.inner_text("#sql-status").startswith(f"{len(expected)} rows")
    with page.expect_download() as download:
        page.click("#csv")
    csv = Path(download.value.path()).read_text()
    assert csv.splitlines()[0] == "exe,n" and len(csv.splitlines()) == len(expected) + 1
    chrome.shot(page, "sql")

    watched.expect_error("status of 400")  # the browser logs the failed fetch
    page.fill("#sql-text", "SELECT no_such_column FROM processes")
    page.click("#run")
    error = page.locator("#sql-error")
    error.wait_for()
    assert "no_such_column" in error.inner_text() and "Traceback" not in error.inner_text()
    assert error.inner_text().startswith("error building dataframe: ")


def spanlake_perfetto(lake: Lake, pid: str, spans: str, begin: str, end: str, out: Path) -> bytes:
    """What `spanlake perfetto` writes for the same process, span types and range."""
    command = [sys.executable, "-m", "spanlake.server.cli", "perfetto", "--process-id", pid, "--spans", spans]
    command += ["--begin", begin, "--end", end, "-o", str(out), "--uri", lake.server.flightsql_url]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def test_perfetto_download_equals_spanlake_perfetto(
    lake: Lake, chrome: Browser, watched: WatchedPage, tmp_path: Path
) -> None:
    page = watched.page
    page.goto(f"{lake.url}/process/{RUST_PROCESS_ID}/perfetto")
    begin, end = page.get_attribute("#perfetto", "data-begin"), page.get_attribute("#perfetto", "data-end")
    with page.expect_download() as download:
        page.click("#download")
    received = Path(download.value.path()).read_bytes()
    assert received == spanlake_perfetto(lake, RUST_PROCESS_ID, "both", begin, end, tmp_path / "cli.pftrace")
    progress = page.inner_text("#progress")
    assert f"{len(received) / 1e6:.2f} MB received in" in progress and page.get_attribute(
        "#progress", "data-bytes"
    ) == str(len(received))
    chrome.shot(page, "perfetto")


def test_perfetto_download_can_be_cancelled(lake: Lake, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{lake.url}/process/{RUST_PROCESS_ID}/perfetto")
    downloads: list[object] = []
    page.on("download", lambda download: downloads.append(download))
    # Both clicks in one task: the fetch has started, and not finished, when Cancel aborts it.
    page.evaluate("document.getElementById('download').click(); document.getElementById('cancel').click()")
    page.locator("#progress:text-is('cancelled')").wait_for()
    assert page.locator("#cancel").is_hidden() and page.locator("#download").is_enabled()
    assert page.locator("#perfetto-error").is_hidden() and downloads == []


PERFETTO_STUB = """<!doctype html><title>stub</title><script>
window.received = null;
window.addEventListener("message", (event) => {
  if (event.data === "PING") { event.source.postMessage("PONG", event.origin); return; }
  if (event.data && event.data.perfetto) {
    const bytes = new Uint8Array(event.data.perfetto.buffer);
    let text = "";
    for (const b of bytes) text += String.fromCharCode(b);
    window.received = { title: event.data.perfetto.title, base64: btoa(text), origin: event.origin };
  }
});
</script>"""


def test_open_in_perfetto_handshake(lake: Lake, chrome: Browser, watched: WatchedPage, tmp_path: Path) -> None:
    chrome.context.route(
        "https://ui.perfetto.dev/**",
        lambda route: route.fulfill(status=200, content_type="text/html", body=PERFETTO_STUB),
    )
    try:
        page = watched.page
        page.goto(f"{lake.url}/process/{lake.generated}/perfetto")
        page.check("input[name=spans][value=async]")
        with page.expect_popup() as popup_info:
            page.click("#open-perfetto")
        popup = popup_info.value
        popup.wait_for_function("window.received !== null", timeout=30_000)
        received = popup.evaluate("window.received")
    finally:
        chrome.context.unroute("https://ui.perfetto.dev/**")
    begin, end = page.get_attribute("#perfetto", "data-begin"), page.get_attribute("#perfetto", "data-end")
    expected = spanlake_perfetto(lake, lake.generated, "async", begin, end, tmp_path / "async.pftrace")
    assert base64.b64decode(received["base64"]) == expected and len(expected) > 1000
    assert received["title"].endswith("(async spans)") and lake.generated in received["title"]
    assert received["origin"] == lake.url
    popup.close()


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/process/not-a-uuid", 400, "'not-a-uuid' is not a process id (a UUID)"),
        ("/process/00000000-0000-4000-8000-000000000000/logs", 404, "there is no process"),
        ("/?from=yesterday", 400, "'yesterday' is not a time"),
        ("/?from=now&to=now-1h", 400, "the time range is empty"),
        (f"/process/{RUST_PROCESS_ID}/metrics?name=nope&target=x&unit=y", 404, "has no measure 'nope'"),
        ("/?sort=password", 400, "cannot sort by 'password'"),
    ],
)
def test_bad_input_is_explained_in_the_page(
    lake: Lake, watched: WatchedPage, chrome: Browser, path: str, status: int, message: str
) -> None:
    watched.expect_error(f"status of {status}")
    response = watched.page.goto(lake.url + path)
    assert response.status == status
    assert message in watched.page.inner_text("#error")
    if status == 404 and "logs" in path:
        chrome.shot(watched.page, "error")


def test_scripts_say_when_the_server_does_not_answer(lake: Lake, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{lake.url}/process/{RUST_PROCESS_ID}/spans")
    page.wait_for_selector("#async-tree[data-loaded=true]")
    page.route("**/api/**", lambda route: route.abort("connectionrefused"))
    watched.expect_error("net::ERR_CONNECTION_REFUSED")
    page.locator("#async-tree .span-row[aria-expanded=false] .twisty").first.click()
    status = page.locator("#async-tree .tree-status.error")
    status.wait_for()
    assert status.inner_text() == "error: the spanlake server is not answering (is it running?)"
    page.goto(f"{lake.url}/sql")
    page.route("**/api/**", lambda route: route.abort("connectionrefused"))
    page.click("#run")
    page.locator("#sql-error").wait_for()
    assert page.inner_text("#sql-error") == "the spanlake server is not answering (is it running?)"


def test_find_reveals_a_deep_span_anywhere_in_the_tree(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    pid = RUST_PROCESS_ID
    page.goto(f"{lake.url}/process/{pid}/spans")
    page.wait_for_selector("#async-tree[data-loaded=true]")
    begin, end = page_range(page)
    events = f"view_instance('async_events', '{pid}')"
    deepest = lake.sql(
        f"SELECT name FROM {events} WHERE event_type = 'begin' ORDER BY depth DESC, time LIMIT 1", begin, end
    )
    name = deepest.name[0]
    matches = lake.sql(
        f"SELECT span_id, depth FROM {events} WHERE event_type = 'begin' AND strpos(lower(name), lower('{name}')) > 0"
        " ORDER BY time, span_id",
        begin,
        end,
    )
    assert matches.depth[0] > 0  # not a top-level span: the page must load levels to show it
    page.fill("#async-tree .tree-search", name)
    page.press("#async-tree .tree-search", "Enter")
    selected = page.locator(f"#async-tree .span-row.selected[data-id='{matches.span_id[0]}']")
    selected.wait_for()
    assert page.inner_text("#async-tree .span-details dd[data-field=depth]") == str(matches.depth[0])
    assert page.inner_text("#async-tree .tree-status").startswith(f"match 1 of {len(matches)} for “{name}”")
    expanded = page.locator("#async-tree .span-row[aria-expanded=true]").count()
    assert expanded >= matches.depth[0]
    chrome.shot(page, "async-spans-find")
