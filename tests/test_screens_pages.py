"""Notebook screens in Chromium against a running `spanlake serve` holding micromegas's Rust fixture and
a `spanlake generate` process: screens created with micromegas's `WebClient`, every cell type drawn
from real telemetry and its values checked against the same question asked over Flight SQL; a
variable changed re-runs the cells below; a micromegas-exported screen renders; bad cells fail alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import micromegas
import pandas as pd
import pytest
import requests
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from micromegas.web_client import WebClient
from web_support import RUST_PROCESS_ID, Browser, WatchedPage, generate, upload_rust_fixture

from spanlake.lakehouse.timestamps import parse_rfc3339_ns

EXPORT_FILE = Path(__file__).parent / "fixtures" / "micromegas-screens" / "process-info-export.json"
RANGE = "from=now-30d&to=now"  # the Rust fixture was recorded on 2026-11-23


@dataclass
class Lake:
    server: SpanlakeServer
    generated: str  # process id of `spanlake generate`
    client: WebClient

    @property
    def url(self) -> str:
        return self.server.http_url

    def sql(self, statement: str, begin: str, end: str) -> pd.DataFrame:
        as_time = [pd.Timestamp(parse_rfc3339_ns(t), unit="ns", tz="UTC") for t in (begin, end)]
        return micromegas.connect(self.server.flightsql_url).query(statement, *as_time)


@pytest.fixture(scope="module")
def lake(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    with running_server(postgres, tmp_path_factory.mktemp("screens-pages")) as server:
        upload_rust_fixture(server.http_url)
        pid = generate(
            server.http_url, "--tasks", "40", "--threads", "2", "--async-tasks", "4", "--flush-period", "0.5"
        )
        client = micromegas.connect(server.flightsql_url)
        both = f"SELECT process_id FROM processes WHERE process_id IN ('{pid}', '{RUST_PROCESS_ID}')"
        wait_until(lambda: len(client.query(both)) == 2, 30, "both processes in the processes view")
        yield Lake(server, pid, WebClient(server.http_url))


def notebook(*cells: dict) -> dict:
    return {"timeRangeFrom": "now-30d", "timeRangeTo": "now", "cells": list(cells)}


def open_screen(page: object, lake: Lake, name: str, runs: int = 1) -> tuple[str, str]:
    """Opens the screen and waits for its cells to have run `runs` times; the page's range."""
    page.goto(f"{lake.url}/screen/{name}?{RANGE}")
    page.wait_for_selector(f"#notebook[data-ran='{runs}']")
    root = page.locator("#notebook")
    return root.get_attribute("data-from"), root.get_attribute("data-to")


def cell(page: object, name: str) -> object:
    return page.locator(f"section.cell[data-cell='{name}']")


PROCESS_VARIABLE = {
    "name": "process",
    "type": "variable",
    "variableType": "combobox",
    "sql": "SELECT process_id FROM processes ORDER BY exe",
}
STREAM_VARIABLE = {
    "name": "stream",
    "type": "variable",
    "variableType": "combobox",
    "sql": "SELECT stream_id FROM streams WHERE process_id = '$process' AND array_has(tags, 'cpu') ORDER BY stream_id",
}
LOG_COUNT_SQL = "SELECT count(*) AS n FROM view_instance('log_entries', '$process') WHERE level <= $max_level"


def test_every_cell_type_shows_the_telemetry(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    pid = lake.generated
    async_spans = (
        'SELECT b.span_id AS id, b.name AS name, b.time AS begin, e.time AS "end"'
        " FROM view_instance('async_events', '$process') b JOIN view_instance('async_events', '$process') e"
        " ON b.span_id = e.span_id AND b.event_type = 'begin' AND e.event_type = 'end'"
        " WHERE b.depth = 0 ORDER BY b.time, b.span_id LIMIT 30"
    )
    config = notebook(
        {**PROCESS_VARIABLE, "defaultValue": pid},
        {"name": "max_level", "type": "variable", "variableType": "text", "defaultValue": "6"},
        STREAM_VARIABLE,
        {"name": "intro", "type": "markdown", "content": "# Process $process\nlevels up to **$max_level**"},
        {"name": "log_count", "type": "table", "sql": LOG_COUNT_SQL},
        {
            "name": "logs",
            "type": "log",
            "sql": "SELECT time, level, target, msg FROM view_instance('log_entries', '$process')"
            " ORDER BY time LIMIT 20",
        },
        {
            "name": "progress",
            "type": "chart",
            "sql": "SELECT time, value FROM view_instance('measures', '$process') WHERE name = 'Worker Progress'"
            " ORDER BY time",
        },
        {
            "name": "flame",
            "type": "flamegraph",
            "sql": "SELECT id, parent, depth, name, begin, \"end\" FROM view_instance('thread_spans', '$stream')",
        },
        {"name": "lanes", "type": "swimlane", "sql": async_spans},
        {
            "name": "tags",
            "type": "propertytimeline",
            "sql": f"SELECT time, jsonb_format_json(properties) AS properties FROM view_instance('log_entries',"
            f" '{RUST_PROCESS_ID}') WHERE msg LIKE 'tagged log%' ORDER BY time",
        },
        {"name": "trace", "type": "perfettoexport", "processIdVar": "$process"},
        {
            "name": "side",
            "type": "hg",
            "children": [
                {"name": "exe", "type": "transposed", "sql": "SELECT exe FROM processes WHERE process_id = '$process'"},
                {
                    "name": "streams",
                    "type": "table",
                    "sql": "SELECT count(*) AS n FROM streams WHERE process_id = '$process'",
                },
            ],
        },
    )
    lake.client.create_screen("all-cells", "notebook", config, folder_path="tests")
    try:
        page = watched.page
        begin, end = open_screen(page, lake, "all-cells")
        chrome.shot(page, "screen-all-cells")
        assert page.locator("section.cell[data-state=error]").all_inner_texts() == []

        assert cell(page, "intro").locator("h2").inner_text() == f"Process {pid}"
        expected_logs = lake.sql(LOG_COUNT_SQL.replace("$process", pid).replace("$max_level", "6"), begin, end)
        assert cell(page, "log_count").locator("tbody td").inner_text() == str(expected_logs.n[0])
        assert "WHERE level <= 6" in cell(page, "log_count").locator(".cell-sql pre").text_content()

        msgs = lake.sql(
            f"SELECT msg FROM view_instance('log_entries', '{pid}') ORDER BY time LIMIT 20", begin, end
        ).msg.tolist()
        assert cell(page, "logs").locator(".log-msg").all_inner_texts() == msgs

        progress = lake.sql(
            f"SELECT value FROM view_instance('measures', '{pid}') WHERE name = 'Worker Progress'", begin, end
        ).value
        chart = cell(page, "progress").locator(".cell-chart")
        assert int(chart.get_attribute("data-points")) == len(progress) > 0
        assert float(chart.get_attribute("data-max")) == progress.max()
        assert cell(page, "progress").locator("canvas").count() == 1  # uPlot drew it

        stream = cell(page, "stream").locator("select option").first.inner_text()
        roots = lake.sql(
            'SELECT name, sum(CAST("end" AS BIGINT) - CAST(begin AS BIGINT)) / 1e6 AS ms'
            f" FROM view_instance('thread_spans', '{stream}') WHERE depth = 0 GROUP BY name",
            begin,
            end,
        )
        nodes = cell(page, "flame").locator(".flame-node")
        shown = {n.get_attribute("data-path"): float(n.get_attribute("data-ms")) for n in nodes.all()}
        top = {path: ms for path, ms in shown.items() if ";" not in path}
        assert len(roots) > 0
        # times travel as ms since the epoch in doubles: exact to about a quarter of a µs
        assert top == pytest.approx(dict(zip(roots.name, roots.ms, strict=True)), abs=1e-3)

        lanes = lake.sql(async_spans.replace("$process", pid), begin, end)
        assert cell(page, "lanes").locator(".lane .lane-name").all_inner_texts() == lanes.name.tolist()

        timeline = cell(page, "tags")
        assert (
            timeline.locator(".lane[data-property=world] .lane-bar").first.get_attribute("data-value") == "some_world"
        )
        assert timeline.locator(".lane[data-property=mode] .lane-bar").first.get_attribute("data-value") == "some_mode"

        download = cell(page, "trace").locator("a.perfetto-download").get_attribute("href")
        assert download.startswith(f"/api/perfetto/{pid}?")
        answer = requests.get(lake.url + download, timeout=60)
        assert answer.status_code == 200 and len(answer.content) > 1000

        group = cell(page, "side").locator(".cell-group > section.cell")
        assert group.count() == 2
        assert cell(page, "exe").locator("tbody th").inner_text() == "exe"
        streams = lake.sql(f"SELECT count(*) AS n FROM streams WHERE process_id = '{pid}'", begin, end).n[0]
        assert cell(page, "streams").locator("tbody td").inner_text() == str(streams)
    finally:
        lake.client.delete_screen("all-cells")


def test_a_changed_variable_reruns_the_cells_below(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    config = notebook(
        {**PROCESS_VARIABLE, "defaultValue": lake.generated},
        {"name": "max_level", "type": "variable", "variableType": "text", "defaultValue": "6"},
        {"name": "log_count", "type": "table", "sql": LOG_COUNT_SQL},
    )
    lake.client.create_screen("variables", "notebook", config)
    try:
        page = watched.page
        begin, end = open_screen(page, lake, "variables")
        count = cell(page, "log_count")

        def expected(pid: str, level: str) -> str:
            sql = LOG_COUNT_SQL.replace("$process", pid).replace("$max_level", level)
            return str(lake.sql(sql, begin, end).n[0])

        assert count.locator("tbody td").inner_text() == expected(lake.generated, "6")
        options = cell(page, "process").locator("select option").all_inner_texts()
        page.select_option("section.cell[data-cell=process] select", str(options.index(RUST_PROCESS_ID)))
        page.wait_for_selector("#notebook[data-ran='2']")
        assert count.get_attribute("data-runs") == "2"
        assert count.locator("tbody td").inner_text() == expected(RUST_PROCESS_ID, "6")
        page.fill("section.cell[data-cell=max_level] input", "3")
        page.press("section.cell[data-cell=max_level] input", "Enter")
        page.wait_for_selector("#notebook[data-ran='3']")
        assert cell(page, "process").get_attribute("data-runs") == "1"  # above the change: not re-run
        assert count.locator("tbody td").inner_text() == expected(RUST_PROCESS_ID, "3")
        assert expected(RUST_PROCESS_ID, "3") != expected(RUST_PROCESS_ID, "6")
        chrome.shot(page, "screen-variables")
    finally:
        lake.client.delete_screen("variables")


def test_a_micromegas_exported_screen_renders(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    exported = json.loads(EXPORT_FILE.read_text())
    imported = requests.post(f"{lake.url}/api/screens-import", json=exported, timeout=10).json()
    assert imported == [{"name": "process-info", "status": "created"}]
    try:
        page = watched.page
        watched.expect_error("Failed to load resource")  # its cell over another cell answers 400
        page.goto(f"{lake.url}/screens")
        page.click("a:has-text('process-info')")
        page.wait_for_selector("#notebook[data-ran='1']")
        page.fill("section.cell[data-cell=process_id] input", RUST_PROCESS_ID)
        page.press("section.cell[data-cell=process_id] input", "Enter")
        page.wait_for_selector("#notebook[data-ran='2']")
        info = cell(page, "process_info")
        rows = dict(
            zip(info.locator("tbody th").all_inner_texts(), info.locator("tbody td").all_inner_texts(), strict=True)
        )
        assert rows["exe"] == "/usr/local/bin/mm-fixture-gen"
        # Its last cell queries another cell's result in micromegas's in-browser engine: a clear error, alone.
        error = cell(page, "properties").locator(".cell-error").inner_text()
        assert "dataSource 'notebook'" in error
        assert page.locator("section.cell[data-state=error]").count() == 1
        chrome.shot(page, "screen-micromegas-export")
    finally:
        lake.client.delete_screen("process-info")


def test_bad_cells_fail_alone_and_change_nothing(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    config = notebook(
        {"name": "fine", "type": "table", "sql": "SELECT 41 + 1 AS answer"},
        {"name": "oops", "type": "sankey", "sql": "SELECT 1"},
        {"name": "broken", "type": "table", "sql": "SELECT no_such_column FROM processes"},
        {"name": "empty", "type": "table"},
        {"name": "huge", "type": "table", "sql": "SELECT * FROM unnest(range(0, 20000)) AS t(n)"},
        {"name": "refused", "type": "table", "sql": "SELECT 'refuse-me' AS x"},
        {"name": "after", "type": "table", "sql": "SELECT 'still here' AS s"},
    )
    lake.client.create_screen("bad-cells", "notebook", config)
    lake.client.create_screen("bad-config", "notebook", {"cells": "not a list"})
    rule = "client = ''web'' AND sql LIKE ''%refuse-me%''"
    flight = micromegas.connect(lake.server.flightsql_url)
    rule_id = flight.query(f"SELECT msg FROM deny_queries('{rule}', 'screens test')")["msg"][0]
    before = lake.client.list_screens()
    try:
        page = watched.page
        watched.expect_error("Failed to load resource")  # the failing cells' 4xx answers
        open_screen(page, lake, "bad-cells")
        assert cell(page, "fine").locator("tbody td").inner_text() == "42"
        assert "unknown cell type 'sankey'" in cell(page, "oops").locator(".cell-error").inner_text()
        broken = cell(page, "broken")
        assert "no_such_column" in broken.locator(".cell-error").inner_text()
        assert broken.locator(".cell-sql pre").text_content() == "SELECT no_such_column FROM processes"
        assert "has no SQL" in cell(page, "empty").locator(".cell-error").inner_text()
        huge = cell(page, "huge")
        assert "more than 10,000 rows" in huge.locator(".cell-truncated").inner_text()
        assert huge.locator("tbody tr").count() == 10_000
        refused = cell(page, "refused").locator(".cell-error").inner_text()
        assert refused.startswith(f"query denied by rule {rule_id} (reason: screens test)")
        assert cell(page, "after").locator("tbody td").inner_text() == "still here"
        chrome.shot(page, "screen-bad-cells")

        page.goto(f"{lake.url}/screen/bad-config")
        assert "no list of cells" in page.locator("#notebook .cell-error").inner_text()
        assert page.locator("nav a:has-text('Screens')").count() == 1  # the page around it is whole
        assert lake.client.list_screens() == before
    finally:
        lake.client.delete_screen("bad-cells")
        lake.client.delete_screen("bad-config")
        flight.query(f"SELECT remove_query_denial('{rule_id}') AS m")


def test_a_cell_run_outside_the_stored_screen_is_refused(lake: Lake) -> None:
    url = f"{lake.url}/api/screen-cell"
    body = {"screen": "nope", "cell": "x", "begin": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
    answer = requests.post(url, json=body, timeout=10)
    assert (answer.status_code, answer.json()["error"]) == (404, "there is no screen named 'nope'")
    foreign = requests.post(url, json=body, headers={"Origin": "http://evil.example"}, timeout=10)
    assert foreign.status_code == 403


def test_the_starter_screens_show_a_process_logs_and_metrics(lake: Lake, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{lake.url}/screens")
    page.click("#add-starters")
    page.wait_for_selector("section.screen-folder[data-folder=starters]")
    try:
        names = page.locator("section.screen-folder[data-folder=starters] tbody td:first-child").all_inner_texts()
        assert names == ["process-logs", "process-metrics", "processes"]
        begin, end = open_screen(page, lake, "process-metrics")
        pid = cell(page, "process").locator("select option").first.inner_text()
        metric = cell(page, "metric").locator("select option").first.inner_text()
        values = lake.sql(f"SELECT value FROM view_instance('measures', '{pid}') WHERE name = '{metric}'", begin, end)
        assert int(cell(page, "values").locator(".cell-chart").get_attribute("data-points")) == len(values) > 0
        chrome.shot(page, "screen-starter-metrics")
        begin, end = open_screen(page, lake, "process-logs")
        pid = cell(page, "process").locator("select option").first.inner_text()
        msgs = lake.sql(
            f"SELECT msg FROM view_instance('log_entries', '{pid}') WHERE level <= 4 ORDER BY time DESC LIMIT 500",
            begin,
            end,
        )
        assert cell(page, "logs").locator(".log-msg").count() == len(msgs) > 0
    finally:
        for name in ("processes", "process-logs", "process-metrics"):
            lake.client.delete_screen(name)
