"""Text from telemetry and from the URL on the web UI's pages: a process whose exe, properties, log
messages, measure and span names hold markup, quotes, template braces and SQL is shown as that text
(Chromium runs none of it), and searches for quotes, `%` and `'; DROP …` answer the matching rows:
the pages bind these values as SQL parameters, they never paste them into the SQL text."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, http, running_server, wait_until
from web_support import Browser, WatchedPage, off_loop

PAYLOAD = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
EXE = f'/opt/{PAYLOAD}/it\'s "quoted" {{{{ 7*7 }}}}'
PROPERTY = ("<b>key</b> {{ config }}", f'"><svg onload="window.pwned = 3"> it\'s {PAYLOAD}')
MESSAGES = (
    "'; DROP TABLE processes; --",
    "progress 100% done",
    'he said "hi" and it\'s fine',
    "a plain message",
    f"50% of <i>it's</i> {PAYLOAD} {{{{ 6*7 }}}}",
)
MEASURE = 'load "<b>now</b>" it\'s {{ x }}'
SPAN = "span 'with' \"quotes\" <b>{{ y }}</b>"
# The program sends its telemetry through spanlake's SDK, as any instrumented program would.
PROGRAM = """
import json, sys
from spanlake import tracing
exe, prop_key, prop_value, messages, measure, span = json.loads(sys.argv[2])
process = tracing.init(sys.argv[1], exe=exe, properties={prop_key: prop_value}, flush_period=3600)
for message in messages:
    tracing.info(message)
tracing.fmetric(measure, "%", 1.5)
tracing.fmetric(measure, "%", 2.5)
with tracing.span_scope_named(span):
    pass
tracing.shutdown()
print(process.process_id)
"""


@dataclass
class HostileProcess:
    server: SpanlakeServer
    process_id: str

    @property
    def url(self) -> str:
        return f"{self.server.http_url}/process/{self.process_id}"


@pytest.fixture(scope="module")
def hostile(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileProcess]:
    with running_server(postgres, tmp_path_factory.mktemp("web-hostile")) as server:
        values = json.dumps([EXE, *PROPERTY, MESSAGES, MEASURE, SPAN])
        result = subprocess.run(
            [sys.executable, "-c", PROGRAM, server.http_url, values],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        process = HostileProcess(server, result.stdout.strip())
        wait_until(lambda: len(log_rows(process, "")) == len(MESSAGES), 60, "the log entries on the logs page")
        # The processes list reads the global `processes` view, which the maintenance daemon updates.
        listed = f"/process/{process.process_id}"
        wait_until(lambda: listed in page_html(f"{server.http_url}/"), 60, "the process in the processes list")
        yield process


def page_html(url: str) -> str:
    status, body = http("GET", url)
    assert status == 200, body
    return body.decode()


def log_rows(process: HostileProcess, search: str) -> list[str]:
    """The messages the logs page shows for `search`, read from its HTML."""
    text = page_html(f"{process.url}/logs?{urllib.parse.urlencode({'q': search})}")
    return [row.split("</pre>")[0] for row in text.split("<pre class=msg>")[1:]]


def escaped(text: str) -> str:
    """`text` as autoescaping writes it in HTML."""
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;")):
        text = text.replace(char, entity)
    return text


def test_overview_shows_exe_and_properties_as_text(
    hostile: HostileProcess, chrome: Browser, watched: WatchedPage
) -> None:
    page = watched.page
    page.goto(hostile.url)
    info = dict(
        zip(
            page.locator("#info td:nth-child(1)").all_inner_texts(),
            page.locator("#info td:nth-child(2)").all_inner_texts(),
            strict=True,
        )
    )
    assert info["exe"] == EXE and info["process id"] == hostile.process_id
    properties = page.locator("#properties td").all_inner_texts()
    assert PROPERTY[0] in properties and PROPERTY[1] in properties
    assert page.inner_text("h1") == f"{EXE} · {hostile.process_id}"
    assert page.evaluate("window.pwned") is None and page.locator("#info script, #properties svg").count() == 0
    chrome.shot(page, "hostile-overview")
    raw = page_html(hostile.url)
    assert PAYLOAD not in raw and "<b>key</b>" not in raw and escaped(EXE) in raw


def test_processes_search_finds_markup_and_quotes(
    hostile: HostileProcess, chrome: Browser, watched: WatchedPage
) -> None:
    page = watched.page
    for needle in ("<SCRIPT>window", 'it\'s "quoted"', "{{ 7*7 }}"):
        page.goto(f"{hostile.server.http_url}/?{urllib.parse.urlencode({'q': needle})}")
        assert page.locator("#processes a.pid").all_inner_texts() == [hostile.process_id], needle
        assert page.locator("#processes tbody td:nth-child(2)").all_inner_texts() == [EXE]
        assert page.input_value("input[type=search][name=q]") == needle
        assert page.evaluate("window.pwned") is None
    page.click("details.sql-behind summary")
    assert "$needle" in page.inner_text("details.sql-behind pre")
    assert page.inner_text("details.sql-behind .sql-params") == "$needle = '{{ 7*7 }}'"


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("'; drop", [MESSAGES[0]]),
        ("%", [MESSAGES[1], MESSAGES[4]]),
        ("it's", [MESSAGES[2], MESSAGES[4]]),
        ('"HI"', [MESSAGES[2]]),
        ("{{ 6*7 }}", [MESSAGES[4]]),
        ("' OR '1'='1", []),
        ("_", []),
    ],
)
def test_logs_search_matches_the_text_itself(hostile: HostileProcess, search: str, expected: list[str]) -> None:
    assert sorted(log_rows(hostile, search)) == sorted(escaped(m) for m in expected)


def test_logs_page_in_the_browser(hostile: HostileProcess, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{hostile.url}/logs")
    page.fill("input[name=q]", "'; DROP")
    page.press("input[name=q]", "Enter")
    page.wait_for_url("**q=%27%3B+DROP**")
    assert page.locator("#logs pre.msg").all_inner_texts() == [MESSAGES[0]]
    assert page.inner_text("#summary") == "1 entries, newest first"
    page.goto(f"{hostile.url}/logs")
    assert sorted(page.locator("#logs pre.msg").all_inner_texts()) == sorted(MESSAGES)
    assert page.evaluate("window.pwned") is None
    chrome.shot(page, "hostile-logs")


def test_measure_named_with_quotes_is_charted(hostile: HostileProcess, chrome: Browser, watched: WatchedPage) -> None:
    page = watched.page
    page.goto(f"{hostile.url}/metrics")
    page.locator("#measures a.measure", has_text=MEASURE).click()
    page.wait_for_selector("svg#chart")
    assert page.inner_text("section.chart h2") == f"{MEASURE} (%)"
    values = [float(v) for v in page.locator("svg#chart circle.point").evaluate_all("cs => cs.map(c => c.dataset.avg)")]
    counts = [int(n) for n in page.locator("svg#chart circle.point").evaluate_all("cs => cs.map(c => c.dataset.n)")]
    assert sum(counts) == 2 and sum(v * n for v, n in zip(values, counts, strict=True)) == pytest.approx(4.0)
    chart_sql = page.locator("section.chart details.sql-behind")
    chart_sql.locator("summary").click()
    assert "name = $name AND target = $target AND unit = $unit" in chart_sql.locator("pre").inner_text()
    assert f"$name = '{MEASURE.replace(chr(39), chr(39) * 2)}'" in chart_sql.locator(".sql-params").inner_text()
    assert page.evaluate("window.pwned") is None
    chrome.shot(page, "hostile-metrics")


def test_find_a_span_by_a_name_with_quotes(hostile: HostileProcess) -> None:
    streams = off_loop(hostile.server.stream_rows, hostile.process_id)
    [stream_id] = [str(s["stream_id"]) for s in streams if "cpu" in s["tags"]]
    for needle, total in ((SPAN.upper(), 1), ("'with' \"quotes\"", 1), ("' OR 1=1 --", 0)):
        query = urllib.parse.urlencode({"name": needle, "from": "now-1h"})
        status, body = http("GET", f"{hostile.server.http_url}/api/stream/{stream_id}/thread-spans/find?{query}")
        found = json.loads(body)
        assert status == 200 and found["total"] == total, (needle, found)
    assert found["path"] == []
