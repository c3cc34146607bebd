"""The Flight SQL building blocks without a server: protobuf messages (wire-compatible with the
micromegas client's generated ones), error classification of real DataFusion errors, scrubbing,
header parsing, SqlInfo, LIKE patterns, dictionary hydration, batch splitting and the plan cache."""

from __future__ import annotations

import re

import datafusion
import numpy as np
import pyarrow as pa
import pytest
from datafusion import udf, udtf
from google.protobuf import any_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from micromegas.flightsql import FlightSql_pb2 as mm

from spanlake.lakehouse.query.audit import sql_hash
from spanlake.lakehouse.query.context import default_session_config
from spanlake.lakehouse.query.failures import Code, root_error, scrub
from spanlake.server.flightsql import UserError, protocol, sql_info
from spanlake.server.flightsql.headers import HeaderError, parse_query_headers
from spanlake.server.flightsql.metadata import like_matcher
from spanlake.server.flightsql.plan_cache import PlanCache, PlannedQuery
from spanlake.server.flightsql.streaming import MAX_MESSAGE_BYTES, conform, hydrated_type, output_schema, split


def test_our_ticket_is_read_by_the_micromegas_generated_class() -> None:
    wrapper = any_pb2.Any()
    wrapper.ParseFromString(protocol.pack(protocol.TicketStatementQuery(statement_handle=b"SELECT 1")))
    ticket = mm.TicketStatementQuery()
    assert wrapper.Unpack(ticket)
    assert ticket.statement_handle == b"SELECT 1"


def test_commands_from_the_generated_classes_unpack_with_presence() -> None:
    wrapper = any_pb2.Any()
    wrapper.Pack(
        mm.CommandGetTables(catalog="", table_name_filter_pattern="ev%", table_types=["TABLE"], include_schema=True)
    )
    kind, command = protocol.unpack(wrapper.SerializeToString())
    assert kind == "CommandGetTables"
    assert command.HasField("catalog") and command.catalog == ""
    assert not command.HasField("db_schema_filter_pattern")
    assert command.table_name_filter_pattern == "ev%"
    assert list(command.table_types) == ["TABLE"] and command.include_schema

    wrapper.Pack(mm.CommandGetSqlInfo(info=[0, 508, 10_000]))
    kind, command = protocol.unpack(wrapper.SerializeToString())
    assert (kind, list(command.info)) == ("CommandGetSqlInfo", [0, 508, 10_000])


def test_prepared_statement_result_is_read_by_the_generated_class() -> None:
    schema = pa.schema([("x", pa.int64())])
    result = protocol.ActionCreatePreparedStatementResult(
        prepared_statement_handle=b"SELECT x FROM t", dataset_schema=schema.serialize().to_pybytes()
    )
    wrapper = any_pb2.Any()
    wrapper.ParseFromString(protocol.pack(result))
    parsed = mm.ActionCreatePreparedStatementResult()
    assert wrapper.Unpack(parsed)
    assert parsed.prepared_statement_handle == b"SELECT x FROM t"
    assert pa.ipc.read_schema(pa.py_buffer(parsed.dataset_schema)) == schema


def test_unsupported_commands_are_named_and_garbage_is_refused() -> None:
    wrapper = any_pb2.Any()
    wrapper.Pack(mm.CommandGetPrimaryKeys(table="t"))
    assert protocol.unpack(wrapper.SerializeToString()) == ("CommandGetPrimaryKeys", None)
    with pytest.raises(protocol.ProtocolError, match="not a protobuf Any"):
        protocol.unpack(b"\xff\xff\xff")
    raw = mm.TicketStatementQuery(statement_handle=b"SELECT 2").SerializeToString()
    with pytest.raises(protocol.ProtocolError):
        protocol.unpack(raw)
    assert protocol.parse_raw_ticket(raw).statement_handle == b"SELECT 2"


def test_close_session_result_is_closed() -> None:
    assert protocol.close_session_result() == b"\x08\x01"  # field 1 (status), varint CLOSED=1


class UnknownViewSet(UserError):
    pass


def _session() -> datafusion.SessionContext:
    ctx = datafusion.SessionContext(default_session_config())
    ctx.register_record_batches("t", [[pa.record_batch({"x": pa.array(np.arange(10))})]])

    @udtf("user_failure")
    def user_failure(*_args: object) -> None:
        raise UnknownViewSet("unknown view set 'nope' (known: 'log_entries', \"measures\")")

    @udtf("bug")
    def bug(*_args: object) -> None:
        raise ValueError("index out of range")

    ctx.register_udtf(user_failure)
    ctx.register_udtf(bug)
    return ctx


def _error_of(run: object) -> BaseException:
    try:
        run()  # type: ignore[operator]
    except Exception as exc:
        return exc
    raise AssertionError("expected an error")


@pytest.mark.parametrize(
    ("sql", "code", "root_start"),
    [
        ("SELEC 1", Code.INVALID_ARGUMENT, "SQL error: ParserError"),
        ("SELECT * FROM nope", Code.INVALID_ARGUMENT, "Error during planning: table 'datafusion.public.nope'"),
        ("SELECT y FROM t", Code.INVALID_ARGUMENT, "Schema error: No field named y"),
        ("SELECT x::json FROM t", Code.UNIMPLEMENTED, "This feature is not implemented: Unsupported SQL type"),
        ("SELECT x / 0 FROM t", Code.INVALID_ARGUMENT, "Arrow error: Divide by zero error"),
        (
            "SELECT * FROM user_failure()",
            Code.INVALID_ARGUMENT,
            "unknown view set 'nope' (known: 'log_entries', \"measures\")",
        ),
        ("SELECT * FROM bug()", Code.INTERNAL, "ValueError: index out of range"),
    ],
)
def test_datafusion_errors_are_classified_on_their_root(sql: str, code: Code, root_start: str) -> None:
    ctx = _session()
    err = _error_of(lambda: ctx.sql(sql).collect())
    classified, root = root_error(err)
    assert classified is code
    assert root.startswith(root_start), root
    assert "Traceback" not in root and "PyErr" not in root


def test_resource_exhaustion_is_found_below_the_context_chain() -> None:
    runtime = datafusion.RuntimeEnvBuilder().with_greedy_memory_pool(1024 * 1024)
    ctx = datafusion.SessionContext(default_session_config(), runtime)
    n = 2_000_000
    ctx.register_record_batches(
        "big", [[pa.record_batch({"x": pa.array(np.arange(n)), "y": pa.array(np.arange(n) % 1000)})]]
    )
    err = _error_of(lambda: ctx.sql("SELECT * FROM big ORDER BY y").collect())
    assert "caused by" in str(err)
    code, root = root_error(err)
    assert code is Code.RESOURCE_EXHAUSTED and root.startswith("Resources exhausted: ")


def test_user_error_raised_in_a_scalar_udf_mid_execution_stays_a_user_error() -> None:
    ctx = _session()

    def checked(values: pa.Array) -> pa.Array:
        raise UserError("value 7 is out of range")

    ctx.register_udf(udf(checked, [pa.int64()], pa.int64(), "volatile", "checked"))
    code, root = root_error(_error_of(lambda: ctx.sql("SELECT checked(x) FROM t").collect()))
    assert (code, root) == (Code.INVALID_ARGUMENT, "value 7 is out of range")


def test_plain_python_exceptions_are_internal_and_name_their_type() -> None:
    assert root_error(KeyError("process")) == (Code.INTERNAL, "KeyError: 'process'")
    assert root_error(UserError("bad id")) == (Code.INVALID_ARGUMENT, "bad id")
    assert root_error(MemoryError())[0] is Code.RESOURCE_EXHAUSTED


def test_scrub_removes_urls_paths_and_tracebacks_only() -> None:
    text = (
        "cannot read s3://bucket/views/log_entries/2024/x.parquet, file:///data/lake/p.parquet "
        "and /var/lib/spanlake/lake/blobs/a (tmp '/tmp/x') for x / 2 on 2024/01/02"
    )
    assert scrub(text) == ("cannot read <url>, <url> and <path> (tmp '<path>') for x / 2 on 2024/01/02")
    assert scrub('boom: Some("Traceback (most recent call last):\\n  File \\"/a.py\\"")') == "boom: Some"
    assert scrub("unknown view 'foo'") == "unknown view 'foo'"


def test_query_headers_parse_range_limit_and_dictionary_flag() -> None:
    parsed = parse_query_headers(
        {
            "query_range_begin": ["2024-01-01T00:00:00Z"],
            "query_range_end": ["2024-01-01T01:00:00.5+01:00"],
            "limit": ["25"],
            "preserve_dictionary": ["TRUE"],
        }
    )
    assert parsed.query_range == (1_704_067_200_000_000_000, 1_704_067_200_500_000_000)
    assert parsed.limit == 25 and parsed.preserve_dictionary
    empty = parse_query_headers({"query_range_begin": [""], "query_range_end": [""]})
    assert (empty.query_range, empty.limit, empty.preserve_dictionary) == (None, None, False)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"query_range_begin": ["yesterday"], "query_range_end": ["2024-01-01T00:00:00Z"]},
            "Unable to parse query_range_begin as a rfc3339 datetime: 'yesterday'",
        ),
        (
            {"query_range_begin": ["2024-01-01T00:00:00"], "query_range_end": ["2024-01-01T00:00:00Z"]},
            "Unable to parse query_range_begin",
        ),
        ({"query_range_begin": ["2024-01-01T00:00:00Z"]}, "query_range_end is missing"),
        ({"query_range_end": ["2024-01-01T00:00:00Z"]}, "query_range_begin is missing"),
        (
            {"query_range_begin": ["2024-01-02T00:00:00Z"], "query_range_end": ["2024-01-01T00:00:00Z"]},
            "is after query_range_end",
        ),
        ({"limit": ["ten"]}, "error parsing limit: 'ten'"),
        ({"limit": ["-1"]}, "error parsing limit: '-1'"),
    ],
)
def test_bad_query_headers_are_named(headers: dict[str, list[str]], message: str) -> None:
    with pytest.raises(HeaderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_query_headers(headers)


def test_sql_info_answers_requested_ids_in_a_dense_union() -> None:
    table = sql_info.sql_info_table(
        [sql_info.SERVER_NAME, sql_info.SERVER_TRANSACTION, sql_info.SERVER_READ_ONLY, sql_info.SQL_KEYWORDS, 9999]
    )
    assert table.schema == sql_info.SCHEMA
    rows = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist(), strict=True))
    assert rows[0] == "spanlake" and rows[3] is True and rows[8] == 0
    assert "qualify" in rows[508] and 9999 not in rows
    assert sql_info.sql_info_table([]).num_rows == len(sql_info.INFO)


def test_advertised_functions_exist_in_datafusion() -> None:
    ctx = datafusion.SessionContext(default_session_config())
    known = set(ctx.sql("SELECT routine_name FROM information_schema.routines").to_arrow_table().column(0).to_pylist())
    advertised = (
        sql_info.NUMERIC_FUNCTIONS + sql_info.STRING_FUNCTIONS + sql_info.SYSTEM_FUNCTIONS + sql_info.DATETIME_FUNCTIONS
    )
    assert sorted(set(advertised) - known) == []


def test_like_patterns() -> None:
    assert like_matcher("log_%")("log_entries")
    assert like_matcher("log_%")("logXentries")
    assert not like_matcher("log\\_%")("logXentries")
    assert like_matcher("a.b")("a.b") and not like_matcher("a.b")("axb")
    assert like_matcher("%")("") and like_matcher("%s%s%")("thread_spans") and not like_matcher("%s%s%s%")("spans")
    assert not like_matcher("%" * 40 + "!")("information_schema")  # at once (a regex backtracked for ever)


@settings(max_examples=300, deadline=None)
@given(st.text("ab%_", max_size=8), st.text("ab", max_size=8))
def test_like_matcher_agrees_with_sql_like(pattern: str, name: str) -> None:
    regex = "".join({"%": ".*", "_": "."}.get(char, char) for char in pattern)
    assert like_matcher(pattern)(name) == (re.fullmatch(regex, name) is not None)


def test_dictionaries_are_hydrated_everywhere_unless_preserved() -> None:
    nested = pa.struct(
        [
            ("tags", pa.list_(pa.dictionary(pa.int16(), pa.string()))),
            ("props", pa.map_(pa.dictionary(pa.int32(), pa.string()), pa.int64())),
        ]
    )
    assert hydrated_type(nested) == pa.struct(
        [("tags", pa.list_(pa.string())), ("props", pa.map_(pa.string(), pa.int64()))]
    )
    schema = pa.schema([("d", pa.dictionary(pa.int32(), pa.string())), ("x", pa.int64())])
    assert output_schema(schema, preserve_dictionary=True) == schema
    assert output_schema(schema, preserve_dictionary=False).field("d").type == pa.string()
    batch = pa.record_batch({"d": pa.array(["a", "b", "a"]).dictionary_encode(), "x": [1, 2, 3]})
    hydrated = conform(batch, output_schema(schema, preserve_dictionary=False))
    assert hydrated.column(0).to_pylist() == ["a", "b", "a"] and hydrated.column(0).type == pa.string()
    tags = pa.record_batch({"tags": pa.array([["x"], [], None], pa.list_(pa.dictionary(pa.int32(), pa.string())))})
    plain_tags = conform(tags, output_schema(tags.schema, preserve_dictionary=False))
    assert plain_tags.schema.field("tags").type == pa.list_(pa.string())
    assert plain_tags.column(0).to_pylist() == [["x"], [], None]


def test_conform_applies_the_announced_nullability() -> None:
    announced = pa.schema([pa.field("x", pa.int64(), nullable=False)])
    batch = pa.record_batch({"x": [1, 2]})
    assert batch.schema != announced
    assert conform(batch, announced).schema == announced


def test_oversized_batches_are_sliced_without_losing_rows() -> None:
    rows = (MAX_MESSAGE_BYTES // 8) * 3
    batch = pa.record_batch({"x": pa.array(np.arange(rows))})
    parts = list(split(batch))
    assert len(parts) > 1 and all(p.nbytes <= MAX_MESSAGE_BYTES for p in parts)
    assert sum(p.num_rows for p in parts) == rows
    assert parts[-1].column(0)[-1].as_py() == rows - 1
    small = pa.record_batch({"x": [1]})
    assert list(split(small)) == [small]


def test_plan_cache_keeps_takes_expires_and_bounds() -> None:
    ctx = datafusion.SessionContext()
    df = ctx.sql("SELECT 1 AS one")
    planned = PlannedQuery(df, df.schema())
    cache = PlanCache(ttl_seconds=60, max_entries=2)
    key = ("SELECT 1 AS one", None, None, None)
    cache.put(key, planned)
    assert cache.get(key, take=False) is planned
    assert cache.get(key, take=True) is planned
    assert cache.get(key, take=True) is None
    for i in range(3):
        cache.put((f"q{i}", None, None, None), planned)
    assert len(cache) == 2 and cache.get(("q0", None, None, None), take=False) is None
    expiring = PlanCache(ttl_seconds=0)
    expiring.put(key, planned)
    assert expiring.get(key, take=False) is None


def test_sql_fingerprint_ignores_literals_case_whitespace_and_comments() -> None:
    panel = sql_hash("SELECT name, count(*) FROM log_entries WHERE time > '2024-01-01T00:00:00Z' AND level <= 3")
    assert len(panel) == 16 and int(panel, 16) >= 0
    refreshed = "select name, COUNT(*)\n  from log_entries -- the same panel, later\n"
    refreshed += " where time > '2024-06-01T12:00:00Z' /* and */ and level <= 4.5"
    assert sql_hash(refreshed) == panel
    assert sql_hash("SELECT name, count(*) FROM log_entries WHERE time > '2024' AND level < 3") != panel
    assert sql_hash('SELECT "Name" FROM t') != sql_hash('SELECT "name" FROM t')  # quoted: kept as written
    assert sql_hash("SELECT 'it''s' AS x") == sql_hash("SELECT 'other' AS x")
