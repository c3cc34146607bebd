"""`GetSqlInfo`: what spanlake tells Flight SQL clients about itself (ADBC's `adbc_get_info`, JDBC…).

The result has one row per requested info id: `info_name uint32` and `value`, a dense union whose
type codes are fixed by FlightSql.proto (0 string, 1 bool, 2 bigint, 3 int32 bitmask, 4 string list,
5 int32 → int32 list map).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

import pyarrow as pa

_STRING, _BOOL, _BIGINT, _INT32, _STRING_LIST = 0, 1, 2, 3, 4

VALUE_TYPE = pa.dense_union(
    [
        pa.field("string_value", pa.string()),
        pa.field("bool_value", pa.bool_()),
        pa.field("bigint_value", pa.int64()),
        pa.field("int32_bitmask", pa.int32()),
        pa.field("string_list", pa.list_(pa.string())),
        pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32()))),
    ]
)
SCHEMA = pa.schema([pa.field("info_name", pa.uint32(), nullable=False), pa.field("value", VALUE_TYPE)])

# SqlInfo ids (FlightSql.proto enum SqlInfo).
SERVER_NAME, SERVER_VERSION, SERVER_ARROW_VERSION, SERVER_READ_ONLY = 0, 1, 2, 3
SERVER_SQL, SERVER_SUBSTRAIT, SERVER_TRANSACTION, SERVER_CANCEL = 4, 5, 8, 9
SERVER_STATEMENT_TIMEOUT, SERVER_TRANSACTION_TIMEOUT = 100, 101
SQL_DDL_CATALOG, SQL_DDL_SCHEMA, SQL_DDL_TABLE, SQL_IDENTIFIER_CASE = 500, 501, 502, 503
SQL_IDENTIFIER_QUOTE_CHAR, SQL_ALL_TABLES_ARE_SELECTABLE, SQL_NULL_ORDERING = 504, 506, 507
SQL_KEYWORDS, SQL_NUMERIC_FUNCTIONS, SQL_STRING_FUNCTIONS = 508, 509, 510
SQL_SYSTEM_FUNCTIONS, SQL_DATETIME_FUNCTIONS, SQL_SEARCH_STRING_ESCAPE = 511, 512, 513
SQL_SUPPORTS_COLUMN_ALIASING, SQL_NULL_PLUS_NULL_IS_NULL = 515, 516
SQL_TRANSACTIONS_SUPPORTED = 563

_CASE_LOWERCASE = 3  # SqlSupportedCaseSensitivity: DataFusion folds unquoted identifiers to lowercase
_NULLS_SORTED_HIGH = 0  # SqlNullOrdering: DataFusion treats NULL as the largest value
_TRANSACTION_NONE = 0  # SqlSupportedTransaction

# Keywords DataFusion's dialect adds beyond SQL:2003 (ODBC's SQL_KEYWORDS asks for exactly those).
KEYWORDS = (
    "analyze",
    "arrow_cast",
    "copy",
    "describe",
    "explain",
    "external",
    "format",
    "ilike",
    "limit",
    "location",
    "offset",
    "options",
    "partitioned",
    "qualify",
    "show",
    "stored",
    "struct",
    "unnest",
    "verbose",
)
NUMERIC_FUNCTIONS = (
    "abs",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "cbrt",
    "ceil",
    "cos",
    "cosh",
    "cot",
    "degrees",
    "exp",
    "factorial",
    "floor",
    "gcd",
    "isnan",
    "iszero",
    "lcm",
    "ln",
    "log",
    "log10",
    "log2",
    "nanvl",
    "pi",
    "pow",
    "power",
    "radians",
    "random",
    "round",
    "signum",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
)
STRING_FUNCTIONS = (
    "ascii",
    "bit_length",
    "btrim",
    "char_length",
    "character_length",
    "chr",
    "concat",
    "concat_ws",
    "contains",
    "ends_with",
    "find_in_set",
    "initcap",
    "instr",
    "left",
    "length",
    "levenshtein",
    "lower",
    "lpad",
    "ltrim",
    "md5",
    "octet_length",
    "overlay",
    "position",
    "regexp_like",
    "regexp_match",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "sha256",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "substring",
    "to_hex",
    "translate",
    "trim",
    "upper",
    "uuid",
)
SYSTEM_FUNCTIONS = (
    "arrow_cast",
    "arrow_typeof",
    "coalesce",
    "greatest",
    "ifnull",
    "least",
    "nullif",
    "nvl",
    "nvl2",
    "version",
)
DATETIME_FUNCTIONS = (
    "current_date",
    "current_time",
    "current_timestamp",
    "date_bin",
    "date_format",
    "date_part",
    "date_trunc",
    "from_unixtime",
    "make_date",
    "now",
    "to_char",
    "to_date",
    "to_local_time",
    "to_timestamp",
    "to_timestamp_micros",
    "to_timestamp_millis",
    "to_timestamp_nanos",
    "to_timestamp_seconds",
    "to_unixtime",
    "today",
)


def _spanlake_version() -> str:
    try:
        return importlib.metadata.version("spanlake")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


INFO: dict[int, tuple[int, object]] = {
    SERVER_NAME: (_STRING, "spanlake"),
    SERVER_VERSION: (_STRING, _spanlake_version()),
    SERVER_ARROW_VERSION: (_STRING, pa.__version__),
    SERVER_READ_ONLY: (_BOOL, True),
    SERVER_SQL: (_BOOL, True),
    SERVER_SUBSTRAIT: (_BOOL, False),
    SERVER_TRANSACTION: (_INT32, _TRANSACTION_NONE),
    SERVER_CANCEL: (_BOOL, False),
    SERVER_STATEMENT_TIMEOUT: (_INT32, 0),
    SERVER_TRANSACTION_TIMEOUT: (_INT32, 0),
    SQL_DDL_CATALOG: (_BOOL, False),
    SQL_DDL_SCHEMA: (_BOOL, False),
    SQL_DDL_TABLE: (_BOOL, False),
    SQL_IDENTIFIER_CASE: (_INT32, _CASE_LOWERCASE),
    SQL_IDENTIFIER_QUOTE_CHAR: (_STRING, '"'),
    SQL_ALL_TABLES_ARE_SELECTABLE: (_BOOL, True),
    SQL_NULL_ORDERING: (_INT32, _NULLS_SORTED_HIGH),
    SQL_KEYWORDS: (_STRING_LIST, KEYWORDS),
    SQL_NUMERIC_FUNCTIONS: (_STRING_LIST, NUMERIC_FUNCTIONS),
    SQL_STRING_FUNCTIONS: (_STRING_LIST, STRING_FUNCTIONS),
    SQL_SYSTEM_FUNCTIONS: (_STRING_LIST, SYSTEM_FUNCTIONS),
    SQL_DATETIME_FUNCTIONS: (_STRING_LIST, DATETIME_FUNCTIONS),
    SQL_SEARCH_STRING_ESCAPE: (_STRING, "\\"),
    SQL_SUPPORTS_COLUMN_ALIASING: (_BOOL, True),
    SQL_NULL_PLUS_NULL_IS_NULL: (_BOOL, True),
    SQL_TRANSACTIONS_SUPPORTED: (_BOOL, False),
}


def sql_info_table(requested: Iterable[int]) -> pa.Table:
    """The rows for the requested ids (every known id when none is requested); unknown ids are
    skipped, as the spec allows servers to answer only what they know."""
    wanted = set(requested) or set(INFO)
    ids = sorted(wanted & INFO.keys())
    children: dict[int, list[object]] = {code: [] for code in range(len(VALUE_TYPE))}
    type_ids, offsets = [], []
    for info_id in ids:
        code, value = INFO[info_id]
        type_ids.append(code)
        offsets.append(len(children[code]))
        children[code].append(list(value) if code == _STRING_LIST else value)
    value_array = pa.UnionArray.from_dense(
        pa.array(type_ids, pa.int8()),
        pa.array(offsets, pa.int32()),
        [pa.array(children[code], VALUE_TYPE.field(code).type) for code in range(len(VALUE_TYPE))],
        [VALUE_TYPE.field(code).name for code in range(len(VALUE_TYPE))],
        list(range(len(VALUE_TYPE))),
    )
    return pa.Table.from_arrays([pa.array(ids, pa.uint32()), value_array], schema=SCHEMA)
