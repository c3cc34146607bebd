"""The one table of the functions' signatures (function -> accepted argument types -> answer type), and the
planning step that gives each call the signature of its arguments.

A datafusion-python UDF has one exact signature, where micromegas's accept several encodings. Each function
here is registered under its own name with the signature of spanlake's own columns (the first accepted type
of each argument), so a query over spanlake's views plans once. When DataFusion refuses a call's argument
types ("No function matches the given name and argument types 'f(T1, T2)'"), `sql` finds those types among
the function's accepted ones, registers the function again in the query's session with exactly them, and
plans again: the user's SQL stays micromegas's. One implementation serves every signature: it reads its
arrays' types. A query calling one function with two different argument types is refused, naming them.
An answer that is a dictionary of lists (micromegas's type for `jsonb_object_keys`) is refused by
DataFusion's array functions: when one refuses it, the function is registered again answering the plain
lists, so `array_length(jsonb_object_keys(x))` works as users expect.

Text arguments are registered as Utf8 only: DataFusion casts LargeUtf8, Utf8View and dictionaries to it.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from datafusion import DataFrame, ScalarUDF, SessionContext, udf

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query import changed_sessions
from spanlake.views.schema_types import DICT_JSONB

# What SQL builds from `[named_struct('key', k, 'value', v)]`; old non-null columns cast to it.
PROPERTY_LIST_ARGUMENT = pa.list_(pa.struct([("key", pa.utf8()), ("value", pa.utf8())]))
PROPERTY = pa.struct([pa.field("key", pa.utf8(), nullable=False), pa.field("value", pa.utf8(), nullable=False)])
PROPERTY_LIST = pa.list_(pa.field("Property", PROPERTY, nullable=False))
DICT_PROPERTY_LIST = pa.dictionary(pa.int32(), PROPERTY_LIST)

# DataFusion's refusal of a call, naming the function and its arguments' types.
MISMATCH = re.compile(r"No function matches the given name and argument types '(\w+)\((.*)\)'")


@dataclass(frozen=True)
class Argument:
    """What one argument accepts: `types` are registered as signatures (the first by default), `coerced`
    are cast to the first by DataFusion itself."""

    name: str
    types: tuple[pa.DataType, ...]
    coerced: tuple[pa.DataType, ...] = ()

    @property
    def accepted(self) -> tuple[pa.DataType, ...]:
        """Every type a call may pass."""
        return (*self.types, *self.coerced)


JSONB = Argument("jsonb", (DICT_JSONB, pa.binary(), pa.large_binary()))
PROPERTIES = Argument(
    "properties",
    (DICT_JSONB, pa.binary(), pa.large_binary(), PROPERTY_LIST_ARGUMENT, DICT_PROPERTY_LIST, PROPERTY_LIST),
)
TEXT = Argument("text", (pa.utf8(),), (pa.large_utf8(), pa.string_view(), pa.dictionary(pa.int32(), pa.utf8())))


@dataclass(frozen=True)
class Signature:
    """A function: its implementation (which reads its arrays' types), its arguments and its answer type."""

    name: str
    function: Callable[..., pa.Array]
    arguments: tuple[Argument, ...]
    returns: pa.DataType

    def argument_types(self) -> list[tuple[pa.DataType, ...]]:
        """Every registrable combination of argument types, the default first."""
        return list(itertools.product(*(argument.types for argument in self.arguments)))

    @property
    def unpackable(self) -> bool:
        """Whether the answer is a dictionary of lists, which DataFusion's array functions refuse."""
        return pa.types.is_dictionary(self.returns) and pa.types.is_list(self.returns.value_type)

    def udf(self, registration: Registration | None = None) -> ScalarUDF:
        """The function registered with `registration`'s types (the default ones by default)."""
        registration = registration or Registration()
        types = list(registration.argument_types or self.argument_types()[0])
        if not registration.unpacked:
            return udf(self.function, types, self.returns, "immutable", self.name)
        return udf(functools.partial(_unpacked, self.function), types, self.returns.value_type, "immutable", self.name)


@dataclass(frozen=True)
class Registration:
    """How a function is registered in a session: its argument types when a call gave them (None: the
    default ones), and whether its dictionary of lists is answered as plain lists."""

    argument_types: tuple[pa.DataType, ...] | None = None
    unpacked: bool = False


def _unpacked(function: Callable[..., pa.Array], *arrays: pa.Array) -> pa.Array:
    answer = function(*arrays)
    return answer.dictionary.take(answer.indices)


def udfs(table: list[Signature]) -> list[ScalarUDF]:
    """The default registration of each function of `table`."""
    return [signature.udf() for signature in table]


def sql(ctx: SessionContext, table: Mapping[str, Signature], query: str, *args: Any, **kwargs: Any) -> DataFrame:
    """`ctx.sql(query, ...)`, each refused call of a function of `table` registered again with its
    arguments' types when they are accepted ones, and each function of `table` whose dictionary of lists
    a built-in function refuses registered again answering plain lists (table functions run again in
    the new planning)."""
    registered: dict[str, Registration] = {}
    while True:
        try:
            return ctx.sql(query, *args, **kwargs)
        except ValueError as err:
            name, registration = _registration(err, table, registered)
            registered[name] = registration
            changed_sessions.mark_changed(ctx)  # the new registration stays for the queries it would serve next
            ctx.register_udf(table[name].udf(registration))


def _registration(
    err: ValueError, table: Mapping[str, Signature], registered: Mapping[str, Registration]
) -> tuple[str, Registration]:
    """The function of `table` to register again, and how, for the refused call of `err`; else `err`."""
    found = MISMATCH.search(str(err))
    if found is None:
        raise err
    name, types_text = found.groups()
    if name not in table:
        return _unpacking(err, table, registered, types_text)
    current = registered.get(name, Registration())
    argument_types = _accepted(table[name], types_text)
    if argument_types is None:
        raise err
    if current.argument_types is not None:
        raise QueryError(
            f"{name}() is called with ({', '.join(map(type_text, current.argument_types))}) and ({types_text}) "
            "in one query: arrow_cast one of them to the other's types"
        ) from None
    return name, Registration(argument_types, current.unpacked)


def _unpacking(
    err: ValueError, table: Mapping[str, Signature], registered: Mapping[str, Registration], types_text: str
) -> tuple[str, Registration]:
    """The function of `table` whose dictionary of lists a built-in refused, to answer plain lists."""
    for signature in table.values():
        current = registered.get(signature.name, Registration())
        if signature.unpackable and not current.unpacked and type_text(signature.returns) in types_text:
            return signature.name, Registration(current.argument_types, unpacked=True)
    raise err


def _accepted(signature: Signature, types_text: str) -> tuple[pa.DataType, ...] | None:
    """The registrable argument types of a call whose arguments DataFusion writes as `types_text`, if any
    (a coerced type is registered as its argument's first type)."""
    for passed in itertools.product(*(argument.accepted for argument in signature.arguments)):
        if ", ".join(map(type_text, passed)) == types_text:
            return tuple(
                data_type if data_type in argument.types else argument.types[0]
                for argument, data_type in zip(signature.arguments, passed, strict=True)
            )
    return None


@functools.cache
def type_text(data_type: pa.DataType) -> str:
    """How DataFusion writes a type in its messages (`arrow_typeof`)."""
    ctx = SessionContext()
    ctx.from_arrow(pa.table({"value": pa.nulls(1, data_type)}), "typed")
    return ctx.sql("SELECT arrow_typeof(value) AS text FROM typed").to_pylist()[0]["text"]
