"""Span scopes: (name, filename, target, line) and the xxh32 hash micromegas stores with them."""

from __future__ import annotations

from dataclasses import dataclass

import xxhash

from spanlake.views.decoded import BlockRowsError, Value, integer_member, string_member


def scope_hash(name: str, filename: str, target: str, line: int) -> int:
    """xxh32(line LE u32, seed=xxh32(target, seed=xxh32(filename, seed=xxh32(name, seed=0))))."""
    seed = xxhash.xxh32_intdigest(name.encode(), 0)
    seed = xxhash.xxh32_intdigest(filename.encode(), seed)
    seed = xxhash.xxh32_intdigest(target.encode(), seed)
    return xxhash.xxh32_intdigest((line & 0xFFFFFFFF).to_bytes(4, "little"), seed)


@dataclass(frozen=True)
class Scope:
    """A span's scope: where the span is declared."""

    name: str
    filename: str
    target: str
    line: int

    @property
    def hash(self) -> int:
        """The scope's xxh32 hash, as micromegas stores it."""
        return scope_hash(self.name, self.filename, self.target, self.line)


def span_desc_scope(desc: Value, what: str) -> Scope:
    """The scope of a static span: its `SpanRecord` descriptor (name, file, target, line)."""
    return Scope(
        string_member(desc, "name", what),
        string_member(desc, "file", what),
        string_member(desc, "target", what),
        integer_member(desc, "line", what),
    )


def span_location_scope(location: Value, name: Value, what: str) -> Scope:
    """The scope of a named span: its `SpanLocationRecord` (file, target, line) and its dynamic name."""
    if not isinstance(name, str):
        raise BlockRowsError(f"{what}.name: expected a string, got {name!r}")
    return Scope(
        name,
        string_member(location, "file", f"{what}.span_location"),
        string_member(location, "target", f"{what}.span_location"),
        integer_member(location, "line", f"{what}.span_location"),
    )
