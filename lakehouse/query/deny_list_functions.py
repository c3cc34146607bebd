"""The admin functions of the query deny list, as micromegas names them: `deny_queries(match_expr,
reason)` (a `(time, msg)` row whose msg is the new rule's id), `list_query_denials()` and the scalar
`remove_query_denial(rule_id)` ("SUCCESS: removed rule …" / "ERROR: …")."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
from datafusion import ScalarUDF, Table, udf
from datafusion.expr import Expr

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.catalog_functions import ProgressLog
from spanlake.views.schema_types import TIMESTAMP

DENIALS_SCHEMA = pa.schema(
    [
        pa.field("rule_id", pa.utf8(), nullable=False),
        pa.field("created_at", TIMESTAMP, nullable=False),
        pa.field("created_by", pa.utf8(), nullable=False),
        pa.field("reason", pa.utf8(), nullable=False),
        pa.field("match_expr", pa.utf8(), nullable=False),
        pa.field("last_hit_at", TIMESTAMP),
    ]
)


def _string_argument(expr: Expr, missing: str) -> str:
    try:
        value = expr.python_value()
    except Exception:
        raise QueryError(f"{missing}: a constant string") from None
    if not value.is_valid or not pa.types.is_string(value.type):
        raise QueryError(f"{missing}: String")
    return value.as_py()


def deny_queries_function(lake: Lake, identity: Callable[[], str | None]) -> Callable[..., Table]:
    """`deny_queries(match_expr, reason)`, adding a rule created by `identity()` (who asks, read when
    called: a session serves one query after another) to the lake's deny list."""

    def deny_queries(*args: Expr) -> Table:
        if len(args) < 1:
            raise QueryError("Missing first argument, expected match_expr: String")
        if len(args) < 2:
            raise QueryError("Missing 2nd argument, expected reason: String")
        match_expr = _string_argument(args[0], "first argument of deny_queries, expected match_expr")
        reason = _string_argument(args[1], "2nd argument of deny_queries, expected reason")
        log = ProgressLog()
        # The rule is compiled in a SessionContext of its own: not on DataFusion's runtime thread.
        log(str(lake.off_runtime.run(lake.deny_list.insert, match_expr, reason, identity())))
        return Table(log.dataset())

    return deny_queries


def list_query_denials_function(lake: Lake) -> Callable[..., Table]:
    """`list_query_denials()`: the lake's rules, reloaded from PostgreSQL."""

    def list_query_denials() -> Table:
        rules = lake.deny_list.reload()
        table = pa.table(
            {
                "rule_id": [str(r.rule_id) for r in rules],
                "created_at": [r.created_at for r in rules],
                "created_by": [r.created_by for r in rules],
                "reason": [r.reason for r in rules],
                "match_expr": [r.match_expr for r in rules],
                "last_hit_at": [r.last_hit_at for r in rules],
            },
            schema=DENIALS_SCHEMA,
        )
        return lake.off_runtime.memory_table(table)

    return list_query_denials


def remove_query_denial_udf(lake: Lake) -> ScalarUDF:
    """`remove_query_denial(rule_id)`: the rule deleted from the lake's deny list, or why not."""

    def remove_query_denial(rule_ids: pa.Array) -> pa.Array:
        return pa.array([lake.deny_list.remove(rule_id) for rule_id in rule_ids.to_pylist()], pa.utf8())

    return udf(remove_query_denial, [pa.utf8()], pa.utf8(), "volatile", "remove_query_denial")
