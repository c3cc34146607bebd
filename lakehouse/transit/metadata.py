"""Transit type metadata: the `Vec<UserDefinedType>` a stream carries, compiled into flat layouts.

A stream stores two CBOR arrays of `{name, size, members, is_reference}` (members are
`{name, type_name, offset, size, is_reference}`): one for its dependencies buffer, one for its objects
buffer. The 1-byte type index on the wire is the position in that list. `size == 0` marks a
dynamically sized type, framed with a u32 byte count.

A fixed-size type compiles to `Leaf`s: one per primitive value, with its absolute offset in the
object and its path of member names (nested structs flattened). A nested *reference* type such as
`StringId {id: *const u8}` compiles to a single `ref` leaf: the value of the member is the dependency
its id points to. Compilation follows micromegas's `parse_pod_instance` checks (bounds, sizes, known
types) and raises `TransitError` — but only when a block actually holds an object of a bad type,
as micromegas does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import cbor2
import numpy as np

from spanlake.lakehouse.errors import BadBlockError


class TransitError(BadBlockError):
    """A transit payload or its metadata is malformed; the message says what and where."""


@dataclass(frozen=True)
class Member:
    """One member of a user-defined type: its name, type, byte offset and size."""

    name: str
    type_name: str
    offset: int
    size: int
    is_reference: bool


@dataclass(frozen=True)
class UserDefinedType:
    """A transit type as the stream metadata declares it."""

    name: str
    size: int  # 0 = dynamically sized
    members: tuple[Member, ...]
    is_reference: bool


# kind → (numpy format, byte size). `ref` is a u64 dependency id.
PRIMITIVES: dict[str, tuple[str, int]] = {
    "u8": ("u1", 1),
    "u32": ("<u4", 4),
    "u64": ("<u8", 8),
    "i64": ("<i8", 8),
    "f64": ("<f8", 8),
    "ref": ("<u8", 8),
}
# Member type names (Rust spellings and Unreal's) → kind.
INTRINSIC_KINDS = {
    "u8": "u8",
    "uint8": "u8",
    "u32": "u32",
    "uint32": "u32",
    "u64": "u64",
    "uint64": "u64",
    "i64": "i64",
    "int64": "i64",
    "f64": "f64",
}


@dataclass(frozen=True)
class Leaf:
    """One primitive within a flattened type: its member path, primitive kind and byte offset."""

    path: tuple[str, ...]
    kind: str  # a PRIMITIVES key
    offset: int

    @cached_property
    def column(self) -> str:
        """Column name of the leaf: its member path joined with dots."""
        return ".".join(self.path)


@dataclass(frozen=True)
class Layout:
    """A fixed-size type flattened to primitive leaves, ready to be read with one numpy dtype."""

    udt: UserDefinedType
    leaves: tuple[Leaf, ...]
    nested_type_names: tuple[tuple[str, str], ...]  # (path prefix, type name) of nested structs

    @cached_property
    def dtype(self) -> np.dtype:
        """The numpy structured dtype that reads every leaf of one object in a single view."""
        return np.dtype(
            {
                "names": [leaf.column for leaf in self.leaves],
                "formats": [PRIMITIVES[leaf.kind][0] for leaf in self.leaves],
                "offsets": [leaf.offset for leaf in self.leaves],
                "itemsize": self.udt.size,
            }
        )


_MAX_NESTING = 16


def parse_udts(metadata: bytes, what: str = "metadata") -> tuple[UserDefinedType, ...]:
    """Decode a CBOR `Vec<UserDefinedType>` as stored in `streams.*_metadata`."""
    try:
        raw = cbor2.loads(metadata)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as error:
        raise TransitError(f"{what}: not valid CBOR ({error})") from error
    return udts_from_list(raw, what)


def udts_from_list(raw: object, what: str = "metadata") -> tuple[UserDefinedType, ...]:
    """Validate a decoded CBOR list of UDT maps (as found in a `StreamInfo` body)."""
    if not isinstance(raw, list):
        raise TransitError(f"{what}: expected an array of user-defined types, got {type(raw).__name__}")
    return tuple(_udt(entry, f"{what}[{index}]") for index, entry in enumerate(raw))


def _udt(entry: object, where: str) -> UserDefinedType:
    fields = _fields(entry, where, {"name": str, "size": int, "members": list, "is_reference": bool})
    members = tuple(_member(member, f"{where}.members[{index}]") for index, member in enumerate(fields["members"]))
    return UserDefinedType(fields["name"], fields["size"], members, fields["is_reference"])


def _member(entry: object, where: str) -> Member:
    fields = _fields(entry, where, {"name": str, "type_name": str, "offset": int, "size": int, "is_reference": bool})
    return Member(fields["name"], fields["type_name"], fields["offset"], fields["size"], fields["is_reference"])


def _fields(entry: object, where: str, expected: dict[str, type]) -> dict:
    if not isinstance(entry, dict):
        raise TransitError(f"{where}: expected a map, got {type(entry).__name__}")
    for key, type_ in expected.items():
        value = entry.get(key)
        # bool is an int in Python: keep them apart both ways.
        if not isinstance(value, type_) or (type_ is int and isinstance(value, bool)):
            raise TransitError(f"{where}.{key}: expected {type_.__name__}, got {value!r}")
        if type_ is int and value < 0:
            raise TransitError(f"{where}.{key}: negative value {value}")
    return entry


def compile_layout(udts: tuple[UserDefinedType, ...], type_index: int) -> Layout:
    """Flatten the fixed-size type `udts[type_index]` (raises TransitError for an unreadable layout)."""
    udt = udts[type_index]
    if udt.size == 0:
        raise TransitError(f"type {udt.name} is dynamically sized and has no fixed layout")
    by_name = {candidate.name: candidate for candidate in reversed(udts)}  # first of a name wins
    leaves, nested = _flatten(udt, by_name, (), 0, udt.size, 0)
    if udt.is_reference:
        leaves = (_reference_id(udt, leaves, ()),)
    columns = [leaf.column for leaf in leaves]
    if len(set(columns)) != len(columns):
        raise TransitError(f"type {udt.name}: two members have the same name")
    return Layout(udt, leaves, nested)


def _flatten(
    udt: UserDefinedType,
    by_name: dict[str, UserDefinedType],
    prefix: tuple[str, ...],
    base: int,
    window: int,
    depth: int,
) -> tuple[tuple[Leaf, ...], tuple[tuple[str, str], ...]]:
    if depth > _MAX_NESTING:
        raise TransitError(f"type {udt.name}: members nested deeper than {_MAX_NESTING} levels")
    leaves: list[Leaf] = []
    nested: list[tuple[str, str]] = []
    for member in udt.members:
        path = (*prefix, member.name)
        if member.offset + member.size > window:
            raise TransitError(
                f"type {udt.name}: member {member.name} (offset {member.offset}, size {member.size}) "
                f"exceeds the {window}-byte object"
            )
        offset = base + member.offset
        if member.is_reference:
            if member.size < 8:
                raise TransitError(f"type {udt.name}: reference member {member.name} is smaller than 8 bytes")
            leaves.append(Leaf(path, "ref", offset))
        elif member.type_name in INTRINSIC_KINDS:
            kind = INTRINSIC_KINDS[member.type_name]
            if PRIMITIVES[kind][1] != member.size:
                raise TransitError(
                    f"type {udt.name}: member {member.name} of type {member.type_name} has size {member.size}"
                )
            leaves.append(Leaf(path, kind, offset))
        else:
            inner = by_name.get(member.type_name)
            if inner is None:
                raise TransitError(f"type {udt.name}: unknown member type {member.type_name}")
            if member.offset + inner.size > window:
                raise TransitError(
                    f"type {udt.name}: nested member {member.name} ({inner.name}, {inner.size} bytes) "
                    f"exceeds the {window}-byte object"
                )
            inner_leaves, inner_nested = _flatten(inner, by_name, path, offset, inner.size, depth + 1)
            if inner.is_reference:
                leaves.append(_reference_id(inner, inner_leaves, path))
            else:
                leaves.extend(inner_leaves)
                nested.append((".".join(path), inner.name))
                nested.extend(inner_nested)
    return tuple(leaves), tuple(nested)


def _reference_id(udt: UserDefinedType, leaves: tuple[Leaf, ...], path: tuple[str, ...]) -> Leaf:
    """A reference type's value is its `id` member (normally the pointer to a dependency)."""
    for leaf in leaves:
        if leaf.path[len(path) :] == ("id",):
            return Leaf(path, leaf.kind, leaf.offset)
    raise TransitError(f"reference type {udt.name} has no 'id' member")


class TypeTable(Sequence[UserDefinedType]):
    """One of a stream's type lists, with its layouts compiled on first use (once per stream)."""

    def __init__(self, udts: tuple[UserDefinedType, ...]) -> None:
        self.udts = udts
        self._layouts: dict[int, Layout] = {}
        self._index_by_name: dict[str, int] = {}
        for index, udt in enumerate(udts):
            self._index_by_name.setdefault(udt.name, index)  # the first type of a name wins

    def __len__(self) -> int:
        return len(self.udts)

    def __getitem__(self, index: int) -> UserDefinedType:
        return self.udts[index]

    def index_of(self, name: str) -> int | None:
        """Index of the first type named `name`, or None."""
        return self._index_by_name.get(name)

    def layout(self, index: int) -> Layout:
        """The flat layout of the fixed-size type at `index` (TransitError if it is unreadable)."""
        if index not in self._layouts:
            self._layouts[index] = compile_layout(self.udts, index)
        return self._layouts[index]

    def layout_of(self, name: str, what: str) -> Layout:
        """The flat layout of the type named `name` (TransitError naming `what` if there is none)."""
        index = self.index_of(name)
        if index is None:
            raise TransitError(f"{what}: no metadata for {name}")
        return self.layout(index)
