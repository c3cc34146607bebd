"""Table functions declared once: name, arguments with their kinds, admin flag and what builds the
table. The declaration checks the arguments (arity, constant, non-NULL, kind) with one wording for
every function, and the session registers admin-only ones for admins only.

Functions ported with micromegas's own argument wording (`perfetto_trace_chunks`, `deny_queries`) or
taking scalar subqueries (`jsonb_each`, ...) declare `args=None`: their build reads the expressions.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from datafusion.expr import Expr

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.timestamps import parse_rfc3339_ns

POSITIONS = ("first", "second", "third", "fourth", "fifth")


class Kind(enum.Enum):
    """What a constant argument must be."""

    STRING = "a string"
    INTEGER = "an integer"
    TIMESTAMP = "a timestamp"  # a TIMESTAMP literal (DataFusion folds it to UTC ns) or an RFC3339 string


@dataclass(frozen=True)
class Arg:
    """One argument of a table function: its name (in arity errors) and kind."""

    name: str
    kind: Kind


@dataclass(frozen=True)
class TableFunction:
    """A table function's declaration; called by DataFusion with the argument expressions."""

    name: str
    build: Callable[..., Any]  # called with the argument values (the expressions when `args` is None)
    args: tuple[Arg, ...] | None = ()
    optional: int = 0  # how many trailing `args` may be left out
    admin: bool = False
    capitalized: bool = False  # "First argument of …": the wording of functions ported from micromegas
    # The tables built in this session, by argument values: a query planned again (functions.planned)
    # reads them instead of running the function (and its side effects) twice.
    built: dict[tuple[str | int, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, *exprs: Expr) -> Any:
        """The table of these arguments; QueryError for arguments that do not fit the declaration."""
        if self.args is None:
            return self.build(*exprs)
        self._check_arity(len(exprs))
        given = zip(self.args[: len(exprs)], exprs, strict=True)
        values = tuple(self._value(arg, index, expr) for index, (arg, expr) in enumerate(given))
        if values not in self.built:
            self.built[values] = self.build(*values)
        return self.built[values]

    def _check_arity(self, given: int) -> None:
        most = len(self.args)
        if most - self.optional <= given <= most:
            return
        if not most:
            raise QueryError(f"{self.name} takes no arguments, given {given}")
        required = ", ".join(arg.name for arg in self.args[: most - self.optional])
        optional = "".join(f"[, {arg.name}]" for arg in self.args[most - self.optional :])
        count = f"{most - self.optional} or {most}" if self.optional == 1 else str(most)
        plural = "" if count == "1" else "s"
        raise QueryError(f"{self.name} takes {count} argument{plural}: ({required}{optional})")

    def _value(self, arg: Arg, index: int, expr: Expr) -> str | int:
        position = POSITIONS[index].capitalize() if self.capitalized else POSITIONS[index]
        where = f"{position} argument of {self.name}"
        try:
            value = expr.python_value()
        except Exception:  # the binding raises a bare Exception for an expression that is no literal
            raise QueryError(f"{where} must be a constant") from None
        if not value.is_valid:
            raise QueryError(f"{where} must not be NULL")
        if arg.kind is Kind.TIMESTAMP and pa.types.is_timestamp(value.type):
            return value.cast(pa.timestamp("ns")).value
        if arg.kind is Kind.INTEGER and pa.types.is_integer(value.type):
            return value.as_py()
        if arg.kind is not Kind.INTEGER and (pa.types.is_string(value.type) or pa.types.is_large_string(value.type)):
            return value.as_py() if arg.kind is Kind.STRING else _rfc3339_ns(value.as_py(), where)
        raise QueryError(f"{where} must be {arg.kind.value}, given {value.type}")


def _rfc3339_ns(text: str, where: str) -> int:
    try:
        return parse_rfc3339_ns(text)
    except ValueError as err:
        raise QueryError(f"{where}: {err}") from None
