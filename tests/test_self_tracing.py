"""spanlake traces itself into its own lake: a slow query's span tree, its audit record and metrics,
and its Perfetto trace, read back through Flight SQL like any other process's."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator

import micromegas
import pandas as pd
import pyarrow as pa
import pytest
from harness import PROJECT_ROOT, PostgresServer, SpanlakeServer, running_server, wait_until
from perfetto_check import decode_and_check

from spanlake.lakehouse.query.audit import sql_hash

# What one query that materializes a view instance just in time runs, parent before child.
JIT_CHAIN = (
    "flightsql.do_get",
    "flightsql.plan",
    "lakehouse.view_instance",
    "lakehouse.jit_update",
    "lakehouse.materialize_partition",
    "transit.decode_block",  # a run of blocks decoded, then its rows written (parquet.write, a sibling)
)


@pytest.fixture(scope="module")
def traced(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SpanlakeServer, str]]:
    """A self-traced server holding one generated process; yields the server and that process's id."""
    # Every query counts as slow and keeps every span: these tests check the whole span tree.
    env = {
        "SPANLAKE_SELF_TRACING": "true",
        "MICROMEGAS_FLUSH_PERIOD": "0.3",
        "SPANLAKE_SLOW_QUERY_SECONDS": "0",
        "SPANLAKE_SLOW_SPAN_MS": "0",
    }
    with running_server(postgres, tmp_path_factory.mktemp("self"), extra_env=env) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "spanlake.server.cli",
                "generate",
                "--url",
                server.http_url,
                "--tasks",
                "1500",
                "--threads",
                "2",
                "--async-tasks",
                "6",
                "--flush-period",
                "0.5",
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        yield server, result.stdout.splitlines()[0].strip()


def _own_process_id(server: SpanlakeServer) -> str:
    rows = server.sql("SELECT process_id, exe FROM processes WHERE exe = 'spanlake-serve'")
    assert len(rows) == 1, rows
    return str(rows[0]["process_id"])


def _spans(client: micromegas.flightsql.client.FlightSQLClient, process_id: str) -> pd.DataFrame:
    """Begin and end of every async span of the process, one row per span, indexed by span id."""
    events = client.query(
        f"SELECT event_type, span_id, parent_span_id, depth, name, time"
        f" FROM view_instance('async_events', '{process_id}')"
    )
    begins = events[events.event_type == "begin"].set_index("span_id")
    ends = events[events.event_type == "end"].set_index("span_id")
    spans = begins.join(ends[["time"]].rename(columns={"time": "end"}), how="inner")
    return spans.rename(columns={"time": "begin"})


def _ancestry(spans: pd.DataFrame, span_id: int) -> list[int]:
    """The span and its stored ancestors, root first."""
    chain = [span_id]
    while (parent := spans.loc[chain[0], "parent_span_id"]) in spans.index:
        chain.insert(0, parent)
    return chain


def _jit_query_tree(spans: pd.DataFrame) -> list[int]:
    """The span ids of JIT_CHAIN in one query (each an ancestor of the next), or [] if none is stored."""
    for decode in spans.index[spans.name == JIT_CHAIN[-1]]:
        chain = [s for s in _ancestry(spans, decode) if spans.loc[s, "name"] in JIT_CHAIN]
        if tuple(spans.loc[chain, "name"]) == JIT_CHAIN:
            return chain
    return []


def test_a_jit_query_is_stored_as_a_span_tree_of_spanlake_itself(traced) -> None:
    server, generated_pid = traced
    client = micromegas.connect(server.flightsql_url)
    count = client.query(f"SELECT count(*) AS n FROM view_instance('async_events', '{generated_pid}')")
    assert count.n[0] > 1000  # a large instance, materialized by this query
    own = _own_process_id(server)
    found: dict[str, pd.DataFrame] = {}

    def stored() -> bool:
        found["spans"] = spans = _spans(client, own)
        return bool(_jit_query_tree(spans))

    wait_until(stored, 30, "the query's span tree in spanlake's own async_events")
    spans = found["spans"]
    chain = _jit_query_tree(spans)
    assert list(spans.loc[chain, "name"]) == list(JIT_CHAIN)
    root = spans.loc[chain[0]]
    assert root.parent_span_id == 0 and root.depth == 0
    # The query's whole tree: every descendant of the root, with depth = parent's depth + 1, inside its
    # parent's interval.
    tree = {chain[0]}
    for span_id, row in spans.sort_values("depth").iterrows():
        if row.parent_span_id in tree:
            tree.add(span_id)
            parent = spans.loc[row.parent_span_id]
            assert row.depth == parent.depth + 1, (row.name, parent.name)
            assert parent.begin <= row.begin <= row.end <= parent.end, (row.name, parent.name)
    tree_spans = spans.loc[sorted(tree)]
    assert set(JIT_CHAIN) | {
        "flightsql.execute",
        "lakehouse.make_session_context",
        "catalog.instance_coverage",
        "object_store.get_block",
        "catalog.commit_partition",
        "parquet.write",
    } <= set(tree_spans.name)
    long_spans = tree_spans[(tree_spans.end - tree_spans.begin) >= pd.Timedelta(milliseconds=5)]
    assert len(long_spans) >= 3 and all(isinstance(n, str) and n for n in long_spans.name)
    # Children's durations add up within their parent (siblings run one after another on one thread).
    plan = spans.loc[chain[1]]
    children = tree_spans[tree_spans.parent_span_id == chain[1]]
    assert (children.end - children.begin).sum() <= plan.end - plan.begin


def test_query_audit_and_metrics_are_self_telemetry(traced) -> None:
    server, _ = traced
    client = micromegas.connect(server.flightsql_url)
    client.query("SELECT 42 AS answer")
    own = _own_process_id(server)
    found: dict[str, pd.DataFrame] = {}

    def stored() -> bool:
        found["logs"] = logs = client.query(
            f"SELECT target, msg FROM view_instance('log_entries', '{own}') WHERE target = 'flightsql_query_audit'"
        )
        return any('"sql":"SELECT 42 AS answer"' in msg for msg in logs.msg)

    wait_until(stored, 30, "the audit record in spanlake's own log_entries")
    record = next(json.loads(m) for m in found["logs"].msg if '"sql":"SELECT 42 AS answer"' in m)
    assert record["status"] == "ok" and record["rpc"] == "DoGet" and record["rows"] == 1
    assert record["sql_hash"] == sql_hash("select 7 as answer")  # literals do not count
    metrics = client.query(f"SELECT name, unit, value FROM view_instance('measures', '{own}')")
    assert {
        "query_planning_time",
        "query_execution_time",
        "query_total_time",
        "query_rows_out",
        "query_bytes_out",
    } <= set(metrics.name)
    assert (metrics[metrics.name == "query_rows_out"].value >= 0).all()


def test_a_denial_is_a_warning_line_and_a_metric(traced) -> None:
    """micromegas's test_denial_emits_a_warning_log_and_a_tagged_metric, on spanlake's own telemetry."""
    server, _ = traced
    client = micromegas.connect(server.flightsql_url)
    [rule_id] = client.query("SELECT msg FROM deny_queries('sql LIKE ''%denial_signal_marker%''', 'signals')")["msg"]
    try:
        with pytest.raises(pa.lib.ArrowInvalid):
            client.query("SELECT 1 AS denial_signal_marker")
    finally:
        client.query(f"SELECT remove_query_denial('{rule_id}')")
    own = _own_process_id(server)
    logs_sql = (
        f"SELECT level, msg FROM view_instance('log_entries', '{own}')"
        f" WHERE msg LIKE 'query denied%' AND msg LIKE '%{rule_id}%'"
    )
    wait_until(lambda: len(client.query(logs_sql)) == 1, 30, "the denial warning in spanlake's own log_entries")
    [row] = client.query(logs_sql).to_dict("records")
    assert row["level"] == 3 and row["msg"].startswith(f'query denied rule_id={rule_id} reason="signals" sql_hash=')
    assert "client=python" in row["msg"]
    metric_sql = (
        f"SELECT sum(value) AS denied FROM view_instance('measures', '{own}')"
        f" WHERE name = 'query_denied' AND property_get(properties, 'rule_id') = '{rule_id}'"
    )
    wait_until(lambda: client.query(metric_sql)["denied"][0] == 1, 30, "the query_denied metric of the rule")


def test_perfetto_trace_of_spanlake_itself(traced) -> None:
    server, generated_pid = traced
    client = micromegas.connect(server.flightsql_url)
    client.query(f"SELECT count(*) FROM view_instance('log_entries', '{generated_pid}')")
    own = _own_process_id(server)
    wait_until(lambda: "lakehouse.view_instance" in set(_spans(client, own).name), 30, "self spans")
    now = dt.datetime.now(dt.UTC)
    trace_path = server.data_dir / "self.pftrace"
    micromegas.perfetto.write_process_trace(client, own, now - dt.timedelta(hours=1), now, str(trace_path))
    trace = decode_and_check(trace_path.read_bytes())
    names = {name for name, _, _ in trace.all_slices()}
    assert {
        "flightsql.do_get",
        "flightsql.plan",
        "lakehouse.view_instance",
        "lakehouse.make_session_context",
        "catalog.instance_coverage",
    } <= names
    # The trace's own generation is traced: planning under the query's planning, chunks under its execution.
    # Children and parents are recorded by different threads (the query's, the gRPC handler's), whose
    # streams are flushed apart: wait for both.
    pairs = (("perfetto.plan", "flightsql.plan"), ("perfetto.generate_chunks", "flightsql.execute"))

    def linked() -> bool:
        spans = _spans(client, own)
        children = [spans[spans.name == child] for child, _ in pairs]
        return all(len(rows) and rows.parent_span_id.iloc[0] in spans.index for rows in children)

    wait_until(linked, 30, "perfetto spans and their parents")
    spans = _spans(client, own)
    for child, parent in pairs:
        row = spans[spans.name == child].iloc[0]
        assert spans.loc[row.parent_span_id, "name"] == parent


def _recipe_statements() -> list[str]:
    text = (PROJECT_ROOT / "docs" / "self-tracing.md").read_text()
    return [block.split("```", 1)[0].strip() for block in text.split("```sql\n")[1:]]


def test_the_documented_recipe_lists_slow_queries_and_a_span_tree(traced) -> None:
    server, generated_pid = traced
    client = micromegas.connect(server.flightsql_url)
    client.query(f"SELECT count(*) FROM view_instance('measures', '{generated_pid}')")
    find_process, slowest, tree = _recipe_statements()
    own = _own_process_id(server)
    wait_until(
        lambda: own in set(client.query(find_process).process_id.astype(str)),
        30,
        "spanlake itself in the processes view",
    )
    assert set(client.query(find_process).exe) == {"spanlake-serve"}  # not the generated process
    wait_until(lambda: len(client.query(slowest.replace("$PID", own))) > 0, 30, "queries of spanlake itself")
    slow = client.query(slowest.replace("$PID", own))
    assert (slow.duration.diff().dropna() <= pd.Timedelta(0)).all()  # slowest first
    rows = client.query(tree.replace("$PID", own).replace("$ROOT", str(slow.span_id[0])))
    # The slowest query's tree, root first; every other span indented below it by its depth.
    assert rows.span[0] == "flightsql.do_get" and {"  flightsql.plan", "  flightsql.execute"} <= set(rows.span)
    assert len(rows) > 3 and all(span.startswith("  ") for span in rows.span[1:])
