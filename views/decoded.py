"""What a decoded transit block looks like to the views (the decoder lives in `lakehouse.transit`).

A block is decoded once into one `ObjectGroup` per object type present. A group holds the positions of
its objects within the block (0-based, counting every object of the block, whatever its type) and one
column per member:

* numeric members (u8, u32, u64, i64, f64) are numpy arrays, one value per object;
* every other member (strings, references to dependencies such as a `SpanRecord` or a property set,
  image bytes) is a `ValueColumn`: per-object indices into the list of its distinct values. A block
  references few distinct descriptors, so views derive their columns from the distinct values once
  and take them by index, which is also exactly an Arrow dictionary.

Nested structures are flattened: the member `b` of a nested member `a` is the column `"a.b"`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


class U8(int):
    """An integer read from a u8 member (micromegas keeps the distinction when printing values)."""


@dataclass(frozen=True)
class TransitObject:
    """A structured value: a dependency (e.g. `SpanRecord`), a property set, or one decoded object."""

    type_name: str
    members: Mapping[str, Value]

    def __getitem__(self, name: str) -> Value:
        return self.members[name]


Value = str | int | float | bytes | TransitObject | None


@dataclass(frozen=True)
class ValueColumn:
    """A non-numeric member: row i holds `values[indices[i]]`."""

    indices: np.ndarray
    values: Sequence[Value]

    def to_list(self) -> list[Value]:
        """The rows as a list of values."""
        return [self.values[index] for index in self.indices.tolist()]


Column = np.ndarray | ValueColumn


@dataclass(frozen=True)
class ObjectGroup:
    """All objects of one type within a block, as columns."""

    type_name: str
    positions: np.ndarray  # int64, ascending
    columns: Mapping[str, Column]
    # Type names of nested structured members, by flattened path prefix (e.g. {"a": "Inner"}).
    nested_type_names: Mapping[str, str] = field(default_factory=dict)
    # A reference type decodes to the dependency it points to (its "id" column), not to an object.
    is_reference: bool = False

    def __len__(self) -> int:
        return len(self.positions)

    def numeric(self, name: str) -> np.ndarray:
        """The numeric column `name` (BlockRowsError if it holds strings or references)."""
        column = self.columns[name]
        if not isinstance(column, np.ndarray):
            raise BlockRowsError(f"{self.type_name}.{name} is not a numeric member")
        return column

    def values(self, name: str) -> ValueColumn:
        """The string or reference column `name` (BlockRowsError if it is numeric)."""
        column = self.columns[name]
        if not isinstance(column, ValueColumn):
            raise BlockRowsError(f"{self.type_name}.{name} is not a string or reference member")
        return column


@dataclass(frozen=True)
class RunPart:
    """Where a block decoded with others (`lakehouse.transit.decode_blocks`) sits in their decoding:
    its objects are the run's objects `start` to `stop`."""

    run: DecodedBlock
    start: int
    stop: int


@dataclass(frozen=True)
class DecodedBlock:
    """The objects of one block, grouped by type, and the dependencies they were resolved against."""

    nb_objects: int
    groups: Mapping[str, ObjectGroup]
    dependencies: Mapping[int, Value]
    part_of: RunPart | None = None  # set when decoded with other blocks: its groups are sliced on demand

    def group(self, type_name: str) -> ObjectGroup | None:
        """The objects of type `type_name`, or None if the block has none."""
        return self.groups.get(type_name)

    def part(self, start: int, stop: int, dependencies: Mapping[int, Value]) -> DecodedBlock:
        """Objects `start` to `stop` as a block of their own (their groups built on first use)."""
        whole = start == 0 and stop == self.nb_objects
        groups = self.groups if whole else _SlicedGroups(self, start, stop)
        return DecodedBlock(stop - start, groups, dependencies, RunPart(self, start, stop))


class _SlicedGroups(Mapping[str, ObjectGroup]):
    """The groups of a range of objects of a decoded run, sliced when first read: the value columns keep
    only the values of the range, so a bad value of another block of the run is never this block's."""

    def __init__(self, run: DecodedBlock, start: int, stop: int) -> None:
        self._run, self._start, self._stop = run, start, stop

    @functools.cached_property
    def _groups(self) -> dict[str, ObjectGroup]:
        sliced = (_slice_group(group, self._start, self._stop) for group in self._run.groups.values())
        return {group.type_name: group for group in sliced if len(group)}

    def __getitem__(self, name: str) -> ObjectGroup:
        return self._groups[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)


def _slice_group(group: ObjectGroup, start: int, stop: int) -> ObjectGroup:
    low, high = np.searchsorted(group.positions, [start, stop]).tolist()
    columns = {name: _slice_column(column, low, high) for name, column in group.columns.items()}
    positions = group.positions[low:high] - start
    return ObjectGroup(group.type_name, positions, columns, group.nested_type_names, group.is_reference)


def _slice_column(column: Column, low: int, high: int) -> Column:
    if isinstance(column, np.ndarray):
        return column[low:high]
    used, indices = np.unique(column.indices[low:high], return_inverse=True)
    return ValueColumn(indices.reshape(-1), [column.values[index] for index in used.tolist()])


def concat_blocks(blocks: Sequence[DecodedBlock]) -> tuple[DecodedBlock, np.ndarray]:
    """Several decoded blocks as one, so views build their rows once for many blocks: each block's
    object positions shifted past the objects of the blocks before it, the distinct values of each value
    column merged (a value shared by several blocks once, by identity). Consecutive blocks decoded
    together are taken as the range of their run, not merged again. Also returns each block's first
    position. BlockRowsError if a member is numeric in one block and not in another."""
    starts = np.cumsum([0] + [block.nb_objects for block in blocks[:-1]], dtype=np.int64)
    pieces = _run_ranges(blocks)
    if len(pieces) == 1:
        return pieces[0], starts
    piece_starts = np.cumsum([0] + [piece.nb_objects for piece in pieces[:-1]], dtype=np.int64)
    by_type: dict[str, list[tuple[int, ObjectGroup]]] = {}
    for start, block in zip(piece_starts.tolist(), pieces, strict=True):
        for name, group in block.groups.items():
            by_type.setdefault(name, []).append((start, group))
    groups = {name: _concat_groups(parts) for name, parts in by_type.items()}
    distinct = {id(block.dependencies): block.dependencies for block in pieces}  # blocks may share theirs
    dependencies = {key: value for shared in distinct.values() for key, value in shared.items()}
    return DecodedBlock(sum(block.nb_objects for block in pieces), groups, dependencies), starts


def _run_ranges(blocks: Sequence[DecodedBlock]) -> list[DecodedBlock]:
    """The blocks with each sequence of adjacent parts of one decoded run replaced by its range."""
    pieces: list[DecodedBlock] = []
    for block in blocks:
        previous = pieces[-1].part_of if pieces else None
        part = block.part_of
        if previous and part and part.run is previous.run and part.start == previous.stop:
            pieces[-1] = part.run.part(previous.start, part.stop, part.run.dependencies)
        else:
            pieces.append(block)
    return pieces


def _concat_groups(parts: Sequence[tuple[int, ObjectGroup]]) -> ObjectGroup:
    first = parts[0][1]
    names = first.columns.keys()
    if any(group.columns.keys() != names for _, group in parts):
        raise BlockRowsError(f"{first.type_name} has other members in another block")
    columns = {
        name: _concat_column(first.type_name, name, [group.columns[name] for _, group in parts]) for name in names
    }
    positions = np.concatenate([group.positions + start for start, group in parts])
    return ObjectGroup(first.type_name, positions, columns, first.nested_type_names, first.is_reference)


def _concat_column(type_name: str, name: str, columns: Sequence[Column]) -> Column:
    if all(isinstance(column, np.ndarray) for column in columns):
        return np.concatenate(columns)
    if not all(isinstance(column, ValueColumn) for column in columns):
        raise BlockRowsError(f"{type_name}.{name} is numeric in one block and not in another")
    index_of: dict[int, int] = {}
    values: list[Value] = []
    remaps: dict[tuple[int, ...], np.ndarray] = {}  # blocks sharing their dependencies list the same values
    indices = []
    for column in columns:
        identities = tuple(map(id, column.values))
        remap = remaps.get(identities)
        if remap is None:
            for identity, value in zip(identities, column.values, strict=True):
                if identity not in index_of:
                    index_of[identity] = len(values)
                    values.append(value)
            remap = remaps[identities] = np.array([index_of[identity] for identity in identities], dtype=np.int64)
        indices.append(remap[column.indices])
    return ValueColumn(np.concatenate(indices), values)


class BlockRowsError(ValueError):
    """A decoded block whose content cannot become view rows (missing member, bad level name...)."""


def string_member(value: Value, name: str, what: str) -> str:
    """`value.name` as a string (micromegas's `obj.get::<&str>(name)`), else BlockRowsError."""
    member = value.members.get(name) if isinstance(value, TransitObject) else None
    if not isinstance(member, str):
        raise BlockRowsError(f"{what}: expected a string member {name!r}, got {member!r}")
    return member


def integer_member(value: Value, name: str, what: str) -> int:
    """`value.name` as an integer (micromegas's `obj.get::<u32>(name)` and friends), else BlockRowsError."""
    member = value.members.get(name) if isinstance(value, TransitObject) else None
    if not isinstance(member, int):
        raise BlockRowsError(f"{what}: expected an integer member {name!r}, got {member!r}")
    return member


def object_members(value: Value, what: str) -> dict[str, str]:
    """The string members of a property set (non-string members are ignored, as in micromegas)."""
    if not isinstance(value, TransitObject):
        raise BlockRowsError(f"{what}: expected a property set, got {value!r}")
    return {key: member for key, member in value.members.items() if isinstance(member, str)}
