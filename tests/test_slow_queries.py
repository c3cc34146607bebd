"""Seed 003's rule through a running self-traced server: a slow query keeps its long spans (DataFusion's
operators among them) and their ancestors, a fast one its root only; the dropped count is on the root's
entry; the web UI lists the slow query and opens its span tree in Chromium."""

from __future__ import annotations

import json
from collections.abc import Iterator

import micromegas
import pandas as pd
import pytest
from harness import PostgresServer, SpanlakeServer, running_server, wait_until
from web_support import Browser, off_loop, watched_page

SLOW_QUERY_SECONDS = 0.3
# Far above the session span (milliseconds alone, tens on a loaded machine), far below the operators'.
SLOW_SPAN_MS = 200
# CPU-bound (about a second in DataFusion's operators) with a fast planning: the rule keeps the
# operators and drops the short planning spans.
SLOW_SQL = "SELECT count(*) AS n, sum(value % 7) AS s FROM generate_series(1, 300000000)"
FAST_SQL = "SELECT 1 AS fast_marker"
ROOT_TARGET = "spanlake.lakehouse.query.slow_queries"


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    env = {
        "SPANLAKE_SELF_TRACING": "true",
        "MICROMEGAS_FLUSH_PERIOD": "0.3",
        "SPANLAKE_SLOW_QUERY_SECONDS": str(SLOW_QUERY_SECONDS),
        "SPANLAKE_SLOW_SPAN_MS": str(SLOW_SPAN_MS),
    }
    with running_server(postgres, tmp_path_factory.mktemp("slowq"), extra_env=env) as running:
        yield running


def _own_process_id(server: SpanlakeServer) -> str:
    rows = server.sql("SELECT process_id FROM processes WHERE exe = 'spanlake-serve'")
    assert len(rows) == 1, rows
    return str(rows[0]["process_id"])


def _root_entry(client: micromegas.flightsql.client.FlightSQLClient, own: str, sql: str) -> dict:
    """The rule's root entry of the query that ran `sql` (found through its audit record)."""
    found: dict[str, dict] = {}

    def stored() -> bool:
        logs = client.query(
            f"SELECT target, msg FROM view_instance('log_entries', '{own}')"
            f" WHERE target IN ('flightsql_query_audit', '{ROOT_TARGET}')"
        )
        audits = [json.loads(m) for m in logs[logs.target == "flightsql_query_audit"].msg]
        query_ids = {a["query_id"] for a in audits if a["sql"] == sql}
        roots = [json.loads(m) for m in logs[logs.target == ROOT_TARGET].msg]
        matching = [r for r in roots if r.get("query_id") in query_ids]
        if matching:
            found["root"] = matching[0]
        return bool(matching)

    wait_until(stored, 30, f"the root entry of {sql!r}")
    return found["root"]


def _spans(client: micromegas.flightsql.client.FlightSQLClient, own: str) -> pd.DataFrame:
    events = client.query(
        f"SELECT event_type, span_id, parent_span_id, depth, name, time FROM view_instance('async_events', '{own}')"
    )
    begins = events[events.event_type == "begin"].set_index("span_id")
    ends = events[events.event_type == "end"].set_index("span_id")
    return begins.join(ends[["time"]].rename(columns={"time": "end"}), how="inner").rename(columns={"time": "begin"})


def _tree(spans: pd.DataFrame, root: int) -> pd.DataFrame:
    """The stored spans under `root` (root included)."""
    tree = {root}
    for span_id, row in spans.sort_values("depth").iterrows():
        if row.parent_span_id in tree:
            tree.add(span_id)
    return spans.loc[sorted(tree)]


def test_a_slow_query_keeps_its_long_spans_and_their_ancestors(server: SpanlakeServer) -> None:
    client = micromegas.connect(server.flightsql_url)
    assert client.query(SLOW_SQL).n[0] == 300_000_000
    own = _own_process_id(server)
    root = _root_entry(client, own, SLOW_SQL)
    assert root["slow"] is True and root["duration_ms"] >= SLOW_QUERY_SECONDS * 1000
    assert root["execution_ms"] > 0 and root["rows"] == 1 and root["planning_ms"] >= 0
    assert root["dropped_spans"] >= 1  # the session's span at least: milliseconds, far below SLOW_SPAN_MS
    found: dict[str, pd.DataFrame] = {}

    def stored() -> bool:
        spans = _spans(client, own)
        found["tree"] = _tree(spans, root["span_id"]) if root["span_id"] in spans.index else spans.iloc[:0]
        return len(found["tree"]) == root["kept_spans"]

    wait_until(stored, 30, "the slow query's kept spans in async_events")
    tree = found["tree"]
    long_enough = (tree.end - tree.begin) >= pd.Timedelta(milliseconds=SLOW_SPAN_MS)
    # Every kept span is long, or the ancestor of a long one (a short span has a kept child).
    for span_id in tree.index[~long_enough]:
        assert (tree.parent_span_id == span_id).any(), tree.loc[span_id, "name"]
    assert tree.loc[root["span_id"], "name"] == "flightsql.do_get"
    assert "flightsql.execute" in set(tree.name)
    operators = tree[tree.name.str.startswith("datafusion.")]
    assert "datafusion.AggregateExec" in set(operators.name), set(tree.name)
    execute = tree[tree.name == "flightsql.execute"].index[0]
    for _, row in operators.iterrows():  # nested as the plan is, under the execution span
        parent = tree.loc[row.parent_span_id]
        assert row.parent_span_id == execute or parent["name"].startswith("datafusion."), row.name
        assert row.depth == parent.depth + 1
        assert parent.begin <= row.begin <= row.end <= parent.end
    # The kept operators' figures are entries too.
    logs = client.query(f"SELECT msg FROM view_instance('log_entries', '{own}') WHERE target = '{ROOT_TARGET}'")
    figures = {e["span_id"]: e for e in map(json.loads, logs.msg) if "operator" in e}
    aggregates = [figures[s] for s in operators.index[operators.name == "datafusion.AggregateExec"]]
    assert aggregates and all(a["elapsed_compute_ms"] > 0 and a["output_rows"] >= 1 for a in aggregates)


def test_a_fast_query_keeps_its_root_span_only(server: SpanlakeServer) -> None:
    client = micromegas.connect(server.flightsql_url)
    client.query(FAST_SQL)
    own = _own_process_id(server)
    root = _root_entry(client, own, FAST_SQL)
    assert root["slow"] is False and root["kept_spans"] == 1
    assert root["dropped_spans"] >= 3  # planning, session, execution, DataFusion's operators
    assert root["rows"] == 1 and root["duration_ms"] < SLOW_QUERY_SECONDS * 1000
    wait_until(lambda: root["span_id"] in _spans(client, own).index, 30, "the fast query's root span")
    spans = _spans(client, own)
    assert spans.loc[root["span_id"], "name"] == "flightsql.do_get"
    assert not (spans.parent_span_id == root["span_id"]).any()


def test_the_slow_queries_screen_lists_the_query_and_opens_its_tree(server: SpanlakeServer, chrome: Browser) -> None:
    client = micromegas.connect(server.flightsql_url)
    client.query(SLOW_SQL)
    root = _root_entry(client, off_loop(_own_process_id, server), SLOW_SQL)
    with watched_page(chrome) as watched:
        page = watched.page
        page.goto(server.http_url + "/")
        page.click("nav a:has-text('Slow queries')")
        page.wait_for_url("**/slow-queries")
        assert SLOW_SQL in page.locator("#slow tbody td:nth-child(4)").all_inner_texts()
        chrome.shot(page, "slow-queries")
        page.click(f"#slow a.tree[href='/slow-queries/{root['span_id']}']")
        page.wait_for_url(f"**/slow-queries/{root['span_id']}")
        names = [n.strip() for n in page.locator("#span-tree tbody td:nth-child(1)").all_inner_texts()]
        assert names[0] == "flightsql.do_get" and "flightsql.execute" in names
        assert "datafusion.AggregateExec" in names
        chrome.shot(page, "slow-query-tree")
