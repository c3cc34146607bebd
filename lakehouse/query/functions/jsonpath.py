"""The SQL/JSONPath subset of `jsonb_path_query` (databend's jsonpath, lax mode), over decoded values.

    $                      the root value
    .name  ."name"  ['name']   an object member (exact key; nothing on a non-object)
    .*                     every member value of an object
    .**  .**{2}  .**{1 to last}   the value and its descendants (at those levels)
    [*]                    every element of an array (lax: a non-array is itself)
    [0]  [last]  [last-1]  [1 to 3]  [0, 2]   elements by index (nothing out of range)
    ? (@.price > 10 && @.tag == "x")   keep items whose filter is true

Filters compare paths relative to `@` (or absolute `$`) with literals or other paths: ==, !=, <>, <, <=,
>, >=, `starts with "text"`, `exists(@.path)`, combined with && and || (and parentheses). As databend
evaluates them, a comparison holds when some pair of selected values compares true; a pair of different
kinds (or a container) makes it unknown, except for != (true); unknown anywhere in && / || makes the
filter unknown, which drops the item.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from spanlake.views.jsonb import JsonValue


class JsonPathError(ValueError):
    """A path expression outside the supported syntax."""


Step = Callable[[JsonValue, JsonValue], Iterator[JsonValue]]  # (item, root) -> selected values
Filter = Callable[[JsonValue, JsonValue], bool | None]  # (current, root) -> true, false or unknown


@dataclass(frozen=True)
class JsonPath:
    """A parsed path: the steps applied in turn to the root."""

    steps: tuple[Step, ...]

    def select(self, root: JsonValue) -> list[JsonValue]:
        """Every value the path selects in `root`, in document order."""
        return _run(self.steps, root, root)


def _run(steps: tuple[Step, ...], start: JsonValue, root: JsonValue) -> list[JsonValue]:
    items = [start]
    for step in steps:
        items = [selected for item in items for selected in step(item, root)]
    return items


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>\*\*|==|!=|<>|<=|>=|&&|\|\||[$@.\[\]{}(),*?<>:+-])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None:
            raise JsonPathError(f"unexpected character at offset {position}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.position = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.position + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end" or (expected is not None and token[1] != expected):
            raise JsonPathError(f"expected {expected or 'more'} at token {self.position}, found {token[1]!r}")
        self.position += 1
        return token

    def at(self, value: str) -> bool:
        return self.peek()[1] == value and self.peek()[0] in ("op", "word")

    # -- paths --------------------------------------------------------------------------------------

    def path(self) -> JsonPath:
        self.take("$")
        steps = self.steps()
        if self.peek()[0] != "end":
            raise JsonPathError(f"unexpected {self.peek()[1]!r} at token {self.position}")
        return JsonPath(tuple(steps))

    def steps(self) -> list[Step]:
        steps: list[Step] = []
        while True:
            if self.at("."):
                self.take()
                steps.append(self.dot_step())
            elif self.at("["):
                self.take()
                steps.append(self.bracket_step())
            elif self.at("?"):
                self.take()
                self.take("(")
                condition = self.disjunction()
                self.take(")")
                steps.append(_filter_step(condition))
            else:
                return steps

    def dot_step(self) -> Step:
        kind, value = self.take()
        if value == "*" and kind == "op":
            return _member_values
        if value == "**" and kind == "op":
            return _descendants(*self.levels())
        if kind == "string":
            return _member(_unquote(value))
        if kind == "word":
            return _member(value)
        raise JsonPathError(f"expected a member name after '.', found {value!r}")

    def levels(self) -> tuple[int, int | None]:
        """`{n}`, `{n to m}`, `{n to last}` after `.**` (default: every level)."""
        if not self.at("{"):
            return 0, None
        self.take()
        first = int(self.take()[1])
        last: int | None = first
        if self.at("to"):
            self.take()
            bound = self.take()[1]
            last = None if bound == "last" else int(bound)
        self.take("}")
        return first, last if last is not None else -1

    def bracket_step(self) -> Step:
        if self.at("*"):
            self.take()
            self.take("]")
            return _elements
        if self.peek()[0] == "string":
            name = _unquote(self.take()[1])
            self.take("]")
            return _member(name)
        selections = [self.index_range()]
        while self.at(","):
            self.take()
            selections.append(self.index_range())
        self.take("]")
        return _indexed(selections)

    def index_range(self) -> tuple[tuple[bool, int], tuple[bool, int]]:
        first = self.index()
        if self.at("to"):
            self.take()
            return first, self.index()
        return first, first

    def index(self) -> tuple[bool, int]:
        """(from_last, offset): `3` is (False, 3), `last - 1` is (True, -1)."""
        if self.at("last"):
            self.take()
            if self.at("-") or self.at("+"):
                sign = -1 if self.take()[1] == "-" else 1
                return True, sign * int(self.take()[1])
            if self.peek()[0] == "number" and self.peek()[1].startswith("-"):  # `last-1` lexes as a number
                return True, int(self.take()[1])
            return True, 0
        kind, value = self.take()
        if kind != "number" or not re.fullmatch(r"-?\d+", value):
            raise JsonPathError(f"expected an array index, found {value!r}")
        return False, int(value)

    # -- filter expressions -------------------------------------------------------------------------

    def disjunction(self) -> Filter:
        terms = [self.conjunction()]
        while self.at("||"):
            self.take()
            terms.append(self.conjunction())
        return terms[0] if len(terms) == 1 else _combined(terms, any)

    def conjunction(self) -> Filter:
        terms = [self.primary()]
        while self.at("&&"):
            self.take()
            terms.append(self.primary())
        return terms[0] if len(terms) == 1 else _combined(terms, all)

    def primary(self) -> Filter:
        if self.at("("):
            self.take()
            inner = self.disjunction()
            self.take(")")
            return inner
        if self.at("exists") and self.peek(1)[1] == "(":
            self.take()
            self.take("(")
            selected = self.operand()
            self.take(")")
            return lambda item, root: bool(selected(item, root))
        return self.comparison()

    def comparison(self) -> Filter:
        left = self.operand()
        if self.at("starts"):
            self.take()
            self.take("with")
            prefix = self.operand()
            return _compare(left, prefix, _starts_with)
        symbol = self.take()[1]
        if symbol not in _COMPARISONS:
            raise JsonPathError(f"expected a comparison operator, found {symbol!r}")
        return _compare(left, self.operand(), _COMPARISONS[symbol])

    def operand(self) -> Callable[[JsonValue, JsonValue], list[JsonValue]]:
        kind, value = self.take()
        if value in ("@", "$") and kind == "op":
            steps = tuple(self.steps())
            relative = value == "@"
            return lambda item, root: _run(steps, item if relative else root, root)
        literal = _literal(kind, value)
        return lambda item, root: [literal]


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _literal(kind: str, value: str) -> JsonValue:
    if kind == "string":
        return _unquote(value)
    if kind == "number":
        return float(value) if re.search(r"[.eE]", value) else int(value)
    if kind == "word" and value in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[value]
    raise JsonPathError(f"expected a path or a literal, found {value!r}")


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda match: {"n": "\n", "t": "\t"}.get(match.group(1), match.group(1)), body)


def _kind(value: JsonValue) -> str | None:
    """The comparable kind of a value (numbers with numbers...); containers compare with nothing."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else None


def _combined(terms: list[Filter], combine: Callable[[list[bool]], bool]) -> Filter:
    def holds(item: JsonValue, root: JsonValue) -> bool | None:
        results = [term(item, root) for term in terms]
        return None if None in results else combine(results)

    return holds


def _starts_with(a: Any, b: Any) -> bool | None:
    return a.startswith(b) if isinstance(a, str) and isinstance(b, str) else None


def _compare(left: Callable, right: Callable, test: Callable[[Any, Any], bool | None]) -> Filter:
    def holds(item: JsonValue, root: JsonValue) -> bool | None:
        rights = right(item, root)
        for a in left(item, root):
            for b in rights:
                result = _pair(a, b, test)
                if result is None or result:
                    return result
        return False

    return holds


def _pair(a: JsonValue, b: JsonValue, test: Callable[[Any, Any], bool | None]) -> bool | None:
    kind = _kind(a)
    if kind is None or _kind(b) is None:
        return None  # containers compare with nothing
    if test is _starts_with:
        return _starts_with(a, b)
    if kind != _kind(b):
        return True if test is operator.ne else None
    return test(a, b)


# -- steps -------------------------------------------------------------------------------------------


def _member(name: str) -> Step:
    def select(item: JsonValue, root: JsonValue) -> Iterator[JsonValue]:
        if isinstance(item, dict) and name in item:
            yield item[name]

    return select


def _member_values(item: JsonValue, root: JsonValue) -> Iterator[JsonValue]:
    if isinstance(item, dict):
        yield from item.values()


def _elements(item: JsonValue, root: JsonValue) -> Iterator[JsonValue]:
    if isinstance(item, list):
        yield from item
    else:
        yield item


def _indexed(selections: list[tuple[tuple[bool, int], tuple[bool, int]]]) -> Step:
    def select(item: JsonValue, root: JsonValue) -> Iterator[JsonValue]:
        if not isinstance(item, list):
            return
        length = len(item)
        for first, last in selections:
            begin, end = _position(first, length), _position(last, length)
            if first == last:
                if 0 <= begin < length:
                    yield item[begin]
                continue
            yield from item[max(begin, 0) : min(end, length - 1) + 1]

    return select


def _position(index: tuple[bool, int], length: int) -> int:
    from_last, offset = index
    return length - 1 + offset if from_last else offset


def _descendants(first: int, last: int | None) -> Step:
    """`.**`: the item (level 0) and everything below, keeping levels first..last (-1: no bound)."""

    def select(item: JsonValue, root: JsonValue) -> Iterator[JsonValue]:
        yield from _walk(item, 0)

    def _walk(value: JsonValue, level: int) -> Iterator[JsonValue]:
        if level >= first and (last is None or last < 0 or level <= last):
            yield value
        if last is not None and last >= 0 and level >= last:
            return
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            yield from _walk(child, level + 1)

    return select


def _filter_step(condition: Filter) -> Step:
    def select(item: JsonValue, root: JsonValue) -> Iterator[JsonValue]:
        if condition(item, root) is True:
            yield item

    return select


def parse(text: str) -> JsonPath:
    """The path of a JSONPath expression; JsonPathError when outside the supported syntax."""
    return _Parser(text).path()
