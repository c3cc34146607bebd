"""Catalog metadata commands: GetCatalogs, GetDbSchemas, GetTables, GetTableTypes.

Everything comes from the session a `SessionFactory` builds, through DataFusion's catalog API, so
whatever the lakehouse registers in a session is what clients see (ADBC `adbc_get_objects`,
`adbc_get_table_schema`, DBeaver…). Result schemas and ordering follow FlightSql.proto.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import datafusion
import pyarrow as pa

from spanlake.server.flightsql.streaming import output_schema

CATALOGS_SCHEMA = pa.schema([pa.field("catalog_name", pa.string(), nullable=False)])
DB_SCHEMAS_SCHEMA = pa.schema(
    [pa.field("catalog_name", pa.string()), pa.field("db_schema_name", pa.string(), nullable=False)]
)
TABLES_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", pa.string()),
        pa.field("db_schema_name", pa.string()),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("table_type", pa.string(), nullable=False),
    ]
)
TABLES_WITH_SCHEMA_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), nullable=False))
TABLE_TYPES_SCHEMA = pa.schema([pa.field("table_type", pa.string(), nullable=False)])

# DataFusion's `Table.kind` → the table type clients see (JDBC's names).
TABLE_TYPES = {"physical": "TABLE", "view": "VIEW", "temporary": "LOCAL TEMPORARY"}


@dataclass(frozen=True)
class TableEntry:
    """One table as GetTables lists it."""

    catalog: str
    db_schema: str
    name: str
    table_type: str
    schema: Callable[[], pa.Schema]  # read only when a client asks for it


def table_names(schema: Any) -> list[str]:
    """The names of a schema's tables, sorted. DataFusion's own `Schema` has a `table_names()`
    method; a Python `SchemaProvider` registered in a session is handed back as is, and its
    `table_names` is an attribute (the form DataFusion's Rust side reads)."""
    names = schema.table_names
    return sorted(names() if callable(names) else names)


def describe_table(schema: Any, name: str) -> tuple[str, Callable[[], pa.Schema]]:
    """(DataFusion table kind, schema getter) of a table. A provider may describe its tables
    without building them (`describe_table(name)`): the lakehouse's global views would otherwise
    be materialized just to be listed."""
    describe = getattr(schema, "describe_table", None)
    if describe is not None:
        kind, table_schema = describe(name)
        return kind, lambda: table_schema
    table = schema.table(name)
    return table.kind, lambda: table.schema


def like_matcher(pattern: str) -> Callable[[str], bool]:
    """A Flight SQL filter pattern (SQL LIKE: `%` any run, `_` one char, `\\` escapes) as a test of a
    whole name. The pieces between `%`s (fixed length) are found leftmost in turn, in time linear in
    the name: a backtracking regex took forever on `%%…%!`, holding the GIL (the whole server)."""
    pieces: list[list[str]] = [[]]
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            pieces[-1].append(re.escape(next(chars, "\\")))
        elif char == "%":
            pieces.append([])
        elif char == "_":
            pieces[-1].append(".")
        else:
            pieces[-1].append(re.escape(char))
    compiled = [(re.compile("".join(piece), re.DOTALL), len(piece)) for piece in pieces if piece or len(pieces) == 1]
    if len(pieces) == 1:
        return lambda name: compiled[0][0].fullmatch(name) is not None
    first = compiled[0] if pieces[0] else None
    last = compiled[-1] if pieces[-1] else None
    middle = compiled[int(first is not None) : len(compiled) - int(last is not None)]
    return lambda name: _like_matches(name, first, middle, last)


_Piece = tuple[re.Pattern[str], int]


def _like_matches(name: str, first: _Piece | None, middle: list[_Piece], last: _Piece | None) -> bool:
    start = 0 if first is None else first[1]
    end = len(name) - (0 if last is None else last[1])
    if end < start or (first is not None and first[0].match(name) is None):
        return False
    if last is not None and last[0].match(name, end) is None:
        return False
    for regex, _ in middle:
        found = regex.search(name, start, end)
        if found is None:
            return False
        start = found.end()
    return True


def _optional(command: Any, name: str) -> str | None:
    return getattr(command, name) if command.HasField(name) else None


def _matcher(pattern: str | None) -> Callable[[str], bool]:
    if pattern is None:
        return lambda _: True
    return like_matcher(pattern)


def _schemas(ctx: datafusion.SessionContext, catalog: str | None) -> Iterator[tuple[str, str]]:
    for catalog_name in sorted(ctx.catalog_names()):
        if catalog is not None and catalog != catalog_name:
            continue
        for schema_name in sorted(ctx.catalog(catalog_name).schema_names()):
            yield catalog_name, schema_name


def catalogs(ctx: datafusion.SessionContext) -> pa.Table:
    """GetCatalogs's answer: the session's catalogs."""
    return pa.table({"catalog_name": sorted(ctx.catalog_names())}, schema=CATALOGS_SCHEMA)


def db_schemas(ctx: datafusion.SessionContext, command: Any) -> pa.Table:
    """CommandGetDbSchemas: `catalog` (exact, when given) and `db_schema_filter_pattern`."""
    schema_matches = _matcher(_optional(command, "db_schema_filter_pattern"))
    rows = [(c, s) for c, s in _schemas(ctx, _optional(command, "catalog")) if schema_matches(s)]
    return pa.table(
        {"catalog_name": [c for c, _ in rows], "db_schema_name": [s for _, s in rows]}, schema=DB_SCHEMAS_SCHEMA
    )


def list_tables(ctx: datafusion.SessionContext, command: Any) -> list[TableEntry]:
    """The tables a CommandGetTables selects, ordered by catalog, schema, name and type."""
    schema_matches = _matcher(_optional(command, "db_schema_filter_pattern"))
    name_matches = _matcher(_optional(command, "table_name_filter_pattern"))
    wanted_types = {t.upper() for t in command.table_types}
    entries = []
    for catalog_name, schema_name in _schemas(ctx, _optional(command, "catalog")):
        if not schema_matches(schema_name):
            continue
        schema = ctx.catalog(catalog_name).schema(schema_name)
        for name in table_names(schema):
            if not name_matches(name):
                continue
            kind, table_schema = describe_table(schema, name)
            table_type = TABLE_TYPES.get(kind, kind.upper())
            if not wanted_types or table_type in wanted_types:
                entries.append(TableEntry(catalog_name, schema_name, name, table_type, table_schema))
    return sorted(entries, key=lambda e: (e.catalog, e.db_schema, e.name, e.table_type))


def tables_schema(command: Any) -> pa.Schema:
    """GetTables's schema: with the tables' Arrow schemas when the command asks for them."""
    return TABLES_WITH_SCHEMA_SCHEMA if command.include_schema else TABLES_SCHEMA


def tables(ctx: datafusion.SessionContext, command: Any, preserve_dictionary: bool) -> pa.Table:
    """CommandGetTables, with each table's Arrow schema as an IPC message when `include_schema`:
    the schema a `SELECT *` would stream (dictionaries hydrated unless `preserve_dictionary`)."""
    entries = list_tables(ctx, command)
    columns: dict[str, list[Any]] = {
        "catalog_name": [e.catalog for e in entries],
        "db_schema_name": [e.db_schema for e in entries],
        "table_name": [e.name for e in entries],
        "table_type": [e.table_type for e in entries],
    }
    if command.include_schema:
        columns["table_schema"] = [
            output_schema(e.schema(), preserve_dictionary).serialize().to_pybytes() for e in entries
        ]
    return pa.table(columns, schema=tables_schema(command))


def table_types() -> pa.Table:
    """GetTableTypes's answer."""
    return pa.table({"table_type": sorted(TABLE_TYPES.values())}, schema=TABLE_TYPES_SCHEMA)
