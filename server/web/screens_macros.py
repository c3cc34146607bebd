"""Macro expansion in a notebook cell's SQL, as micromegas's web app does it (`macro-substitution.ts`):
`$from` / `$to` become the time range's RFC3339 instants, `$variable.column` a column of a
multi-column variable, `$variable` a variable's value (a multi-column one's first column). Values
are put in as they are, the SQL author writing the quotes, with single quotes doubled. A macro naming
nothing known stays as written, so the query's error names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

VariableValue = str | Mapping[str, str]

_DOTTED = re.compile(r"\$([a-zA-Z_][a-zA-Z0-9_]*)\.([a-zA-Z_][a-zA-Z0-9_]*)\b")


def _escaped(value: str) -> str:
    return value.replace("'", "''")


def _as_text(value: VariableValue) -> str:
    """A variable's text: itself, or a multi-column value's first column."""
    if isinstance(value, str):
        return value
    return next(iter(value.values()), "")


def expand_macros(sql: str, variables: Mapping[str, VariableValue], begin: str, end: str) -> str:
    """`sql` with its macros replaced, in micromegas's order: time range, dotted, then plain variables."""
    text = re.sub(r"\$from\b", lambda _: _escaped(begin), sql)
    text = re.sub(r"\$to\b", lambda _: _escaped(end), text)

    def column(match: re.Match[str]) -> str:
        value = variables.get(match.group(1))
        if isinstance(value, Mapping) and match.group(2) in value:
            return _escaped(value[match.group(2)])
        return match.group(0)

    text = _DOTTED.sub(column, text)
    # Longest names first: $metric must not eat the start of $metric_name.
    for name in sorted(variables, key=len, reverse=True):
        value = _escaped(_as_text(variables[name]))
        text = re.sub(rf"\${re.escape(name)}\b(?![.\[])", lambda _, v=value: v, text)
    return text
