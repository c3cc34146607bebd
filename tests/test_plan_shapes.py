"""Plan shapes that recurse (set operations, joins, FROM lists, nested subqueries, CASE arms, IN
lists, CTEs referencing CTEs) through a running `spanlake serve`: past the bounds they are refused
with INVALID_ARGUMENT naming the setting, before the planner; within them they answer; a bounded
fuzz of such shapes never crashes the server nor answers INTERNAL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, post, running_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_shape_support import (
    case_arms,
    ctes_of_ctes,
    from_list,
    in_list,
    join_chain,
    nested_subqueries,
    set_operations,
)
from test_flightsql_support import grpc_status, statement_ticket

from spanlake.lakehouse.query.limits import sql_shape

# Refusals come before planning: a 10,000-branch UNION took 16 s to crash the server, 5,000 30 s to plan.
REFUSAL_SECONDS = 3
JSON = {"Content-Type": "application/json"}
CLEAN_CODES = {"INVALID_ARGUMENT", "DEADLINE_EXCEEDED"}


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    limits = {"SPANLAKE_QUERY_TIMEOUT_SECONDS": "20"}
    with running_server(postgres, tmp_path_factory.mktemp("plan-shapes"), extra_env=limits) as running:
        yield running


def _query(server: SpanlakeServer, sql: str) -> list[dict]:
    with flight.connect(server.flightsql_url) as client:
        return client.do_get(statement_ticket(sql)).read_all().to_pylist()


def _refusal(server: SpanlakeServer, sql: str) -> tuple[str | None, str, float]:
    """(gRPC code, message, seconds) of a query that must fail."""
    started = time.monotonic()
    with pytest.raises(pa.ArrowException) as caught:
        _query(server, sql)
    code, message = grpc_status(caught.value)
    return code, message, time.monotonic() - started


def _alive(server: SpanlakeServer) -> bool:
    assert server.process is not None and server.process.poll() is None
    return _query(server, "SELECT 41 + 1 AS answer") == [{"answer": 42}]


def test_the_text_counts_joins_from_list_items_and_set_operations() -> None:
    sql = "SELECT a FROM x, y JOIN z ON x.a = z.a, w WHERE b IN (1, 2, 3) UNION ALL SELECT f(1, 2) FROM v"
    assert sql_shape(sql).joins == 4  # two FROM-list commas, one JOIN, one UNION; not the IN list or calls
    assert sql_shape("SELECT ',' FROM t GROUP BY a, b ORDER BY a, b").joins == 0
    assert sql_shape(set_operations(10_000)).joins == 9_999


@pytest.mark.parametrize(
    ("sql", "shown"),
    [
        (set_operations(10_000), "9999 joins, FROM-list items and set operations"),
        (set_operations(500, "INTERSECT"), "499 joins"),
        (set_operations(500, "EXCEPT"), "499 joins"),
        (join_chain(1_000), "999 joins"),
        (from_list(300), "299 joins"),
    ],
)
def test_long_chains_of_relations_are_refused_before_planning(server: SpanlakeServer, sql: str, shown: str) -> None:
    code, message, seconds = _refusal(server, sql)
    assert code == "INVALID_ARGUMENT"
    assert shown in message and "over the limit of 128 (SPANLAKE_MAX_SQL_JOINS)" in message, message
    assert seconds < REFUSAL_SECONDS
    assert _alive(server)


def test_ctes_multiplied_past_the_plan_bound_are_refused(server: SpanlakeServer) -> None:
    """10 references to 10 references … four levels deep: 10,000 branches from 60 set operations."""
    code, message, seconds = _refusal(server, ctes_of_ctes(10, 4))
    assert code == "INVALID_ARGUMENT"
    assert "plan is too large: over 10000 nodes" in message and "SPANLAKE_MAX_PLAN_NODES" in message, message
    assert seconds < REFUSAL_SECONDS
    assert _alive(server)


def test_the_web_ui_refuses_them_too(server: SpanlakeServer) -> None:
    for sql, setting in (
        (set_operations(10_000), "SPANLAKE_MAX_SQL_JOINS"),
        (ctes_of_ctes(10, 4), "SPANLAKE_MAX_PLAN_NODES"),
    ):
        status, body = post(server.http_url + "/api/sql", json.dumps({"sql": sql}).encode(), JSON)
        assert status == 400 and setting in json.loads(body)["error"], body[:500]
    assert _alive(server)


def test_shapes_within_the_bounds_answer(server: SpanlakeServer) -> None:
    assert len(_query(server, set_operations(120))) == 120
    assert _query(server, join_chain(100)) == [{"n": 1}]
    assert _query(server, from_list(100)) == [{"n": 1}]
    assert _query(server, ctes_of_ctes(6, 3)) == [{"n": 216}]
    assert _query(server, case_arms(5_000)) == [{"y": 1}]
    assert _query(server, in_list(50_000)) == [{"x": 1}]


def test_subqueries_nested_past_the_parser_limit_are_invalid_arguments(server: SpanlakeServer) -> None:
    assert _query(server, nested_subqueries(20)) == [{"x": 1}]
    code, message, _ = _refusal(server, nested_subqueries(200))
    assert code == "INVALID_ARGUMENT" and "RecursionLimitExceeded" in message, message
    assert _alive(server)


_SHAPES = st.one_of(
    st.builds(set_operations, st.integers(1, 400), st.sampled_from(["UNION ALL", "UNION", "INTERSECT", "EXCEPT"])),
    st.builds(join_chain, st.integers(1, 400)),
    st.builds(from_list, st.integers(1, 400)),
    st.builds(nested_subqueries, st.integers(1, 200)),
    st.builds(case_arms, st.integers(1, 20_000)),
    st.builds(in_list, st.integers(1, 100_000)),
    st.builds(ctes_of_ctes, st.integers(1, 12), st.integers(1, 5)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_SHAPES)
def test_fuzzed_plan_shapes_never_crash_the_server(server: SpanlakeServer, sql: str) -> None:
    try:
        _query(server, sql)
    except pa.ArrowException as err:
        code, message = grpc_status(err)
        assert code in CLEAN_CODES, f"{sql[:200]!r}: {code} {message}"
    assert server.process is not None and server.process.poll() is None


def test_the_server_still_serves_after_the_fuzz(server: SpanlakeServer) -> None:
    assert _alive(server)
