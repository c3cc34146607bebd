"""Thread call trees of consecutive partitions merged from their rows, as a build from all their blocks
would give them, without decoding the blocks again.

A stream's call tree is built per chain of contiguous blocks (`thread_spans`), and a chain may run
across partitions: a span begun in one partition ends in a later one. Each partition therefore notes,
in its file's footer (`NOTES_KEY`), what its first and last chains leave open at their edges
(`ChainNote`): the spans still open at the end (they end at the chain's range end), the ends met with
nothing open (each became a wrapper span enclosing everything before it), whether the synthetic
thread root exists, and the chain's tick and time range.

Joining chain A with the chain B that continues it is then a fix-up of their rows, vectorized:

* B's first unmatched ends close A's open spans, innermost first (their scopes must agree, as when
  building at once); A's spans left open end at B's range end;
* B's ends beyond A's open spans stay unmatched, wrapping A's spans too;
* the nesting level of B's rows rises by the A spans still open around them; a B span at its own top
  level under an open A span becomes that span's child;
* depths follow (root, wrappers after the span, level) as `thread_spans` defines them.

A partition's rows say, for each span, its level and the unmatched ends before it once its wrappers
are known: top-level spans hang under the next unmatched end (or the root), and a span's depth is its
level plus the unmatched ends after it. When a note cannot vouch for that (events clipped by the
chain's range, event ids not increasing) or the chains overlap, the merge answers None and the
caller decodes the blocks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from spanlake.views.columns import timestamp_array
from spanlake.views.decoded import BlockRowsError
from spanlake.views.view import PartitionRows

NOTES_KEY = b"spanlake.thread_spans.chains"


@dataclass(frozen=True)
class ChainNote:
    """What a chain of blocks leaves at its edges: see the module docstring."""

    begin_ticks: int
    end_ticks: int
    begin_ns: int  # the chain's range, as its tree used it
    end_ns: int
    rows: int  # the chain's rows in the partition
    wrappers: int  # ends met with nothing open
    root: bool  # the synthetic thread root exists
    open_ids: tuple[int, ...]  # spans still open at the chain's end, outermost first
    exact: bool  # no event clipped by the range, event ids non-negative and increasing


@dataclass(frozen=True)
class PartitionNotes:
    """A partition's first and last chains (the same one when it holds one chain) and its chain count."""

    first: ChainNote
    last: ChainNote
    chains: int

    def encode(self) -> dict[bytes, bytes]:
        """The notes as a file footer's key-value metadata."""
        notes = {"first": asdict(self.first), "last": asdict(self.last), "chains": self.chains}
        return {NOTES_KEY: json.dumps(notes).encode()}

    @staticmethod
    def decode(metadata: dict[bytes, bytes] | None) -> PartitionNotes | None:
        """The notes of a file's footer, or None when it has none."""
        if not metadata or NOTES_KEY not in metadata:
            return None
        notes = json.loads(metadata[NOTES_KEY])

        def chain(fields: dict) -> ChainNote:
            return ChainNote(**{**fields, "open_ids": tuple(fields["open_ids"])})

        return PartitionNotes(chain(notes["first"]), chain(notes["last"]), notes["chains"])


def merge_partitions(parts: Sequence[PartitionRows]) -> pa.Table | None:
    """The rows of consecutive partitions (insert order) as one, with their notes in the schema metadata;
    None when some partition has no notes or chains overlap. Raises BlockRowsError when joined chains
    close a span with an end of another scope (a build from the blocks fails the same way)."""
    merged: tuple[pa.Table, PartitionNotes] | None = None
    for part in parts:
        notes = PartitionNotes.decode(part.metadata)
        if notes is None:
            return None
        merged = (part.table, notes) if merged is None else _append(*merged, part.table, notes)
        if merged is None:
            return None
    assert merged is not None
    table, notes = merged
    return table.replace_schema_metadata(notes.encode())


def _append(
    table: pa.Table, notes: PartitionNotes, next_table: pa.Table, next_notes: PartitionNotes
) -> tuple[pa.Table, PartitionNotes] | None:
    last, first = notes.last, next_notes.first
    if first.begin_ticks > last.end_ticks:  # a gap: the chains stay apart
        joined = PartitionNotes(notes.first, next_notes.last, notes.chains + next_notes.chains)
        return pa.concat_tables([table, next_table]), joined
    if first.begin_ticks < last.end_ticks or not (last.exact and first.exact):
        return None  # overlapping blocks are dropped by tick order, or a range clipped events: decode
    last_start = table.num_rows - last.rows
    joined = join_chains(table.slice(last_start), last, next_table.slice(0, first.rows), first)
    if joined is None:
        return None
    rows, note = joined
    pieces = [table.slice(0, last_start), rows, next_table.slice(first.rows)]
    fused = PartitionNotes(
        note if notes.chains == 1 else notes.first,
        note if next_notes.chains == 1 else next_notes.last,
        notes.chains + next_notes.chains - 1,
    )
    return pa.concat_tables(pieces), fused


@dataclass(frozen=True)
class _Chain:
    """A chain's rows read back: the ids of its unmatched ends (event order) and its spans (neither root
    nor wrapper): their rows, levels, and the unmatched ends before each."""

    table: pa.Table
    note: ChainNote
    wrapper_ids: np.ndarray
    span_rows: np.ndarray
    level: np.ndarray
    ends_before: np.ndarray

    @staticmethod
    def of(table: pa.Table, note: ChainNote) -> _Chain:
        """The chain of `table` (its rows only) and its note."""
        first_span = note.wrappers + note.root
        wrapper_ids = table.column("id").to_numpy()[1 : 1 + note.wrappers][::-1]  # rows: outermost (latest) first
        span_rows = np.arange(first_span, table.num_rows)
        depth = table.column("depth").to_numpy().astype(np.int64)[first_span:]
        if not note.root:
            return _Chain(table, note, wrapper_ids, span_rows, depth + 1, np.zeros(len(span_rows), np.int64))
        parent = table.column("parent").to_numpy()[first_span:]
        # A top-level span hangs under the next unmatched end, or the root once all ends are behind it;
        # deeper spans follow their top-level ancestor, the latest top-level row before them (pre-order).
        ends = np.full(len(parent), note.wrappers, np.int64)
        if note.wrappers:
            by_id = np.argsort(wrapper_ids)
            slot = by_id[np.minimum(np.searchsorted(wrapper_ids, parent, sorter=by_id), note.wrappers - 1)]
            ends = np.where(wrapper_ids[slot] == parent, slot, ends)
        top = (parent == -1) | (ends < note.wrappers)
        ends_before = np.maximum.accumulate(np.where(top, ends, -1)) if len(parent) else ends
        return _Chain(table, note, wrapper_ids, span_rows, depth - note.wrappers + ends_before, ends_before)

    def ids(self) -> np.ndarray:
        """Ids of the chain's spans and unmatched ends (the root excluded)."""
        return self.table.column("id").to_numpy()[int(self.note.root) :]

    def wrapper_column(self, name: str) -> np.ndarray:
        """A column of the unmatched ends' rows, in event order."""
        return _int64(self.table, name)[1 : 1 + self.note.wrappers][::-1]


def _int64(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).cast(pa.int64()).to_numpy()


def join_chains(
    rows: pa.Table, note: ChainNote, next_rows: pa.Table, next_note: ChainNote
) -> tuple[pa.Table, ChainNote] | None:
    """The rows of chain `rows` continued by chain `next_rows` (see the module docstring) and their note;
    None when event ids do not increase from one chain to the next (ids would be ambiguous)."""
    chain, after = _Chain.of(rows, note), _Chain.of(next_rows, next_note)
    ids, next_ids = chain.ids(), after.ids()
    if len(ids) and len(next_ids) and next_ids.min() <= ids.max():
        return None
    opened = len(note.open_ids)
    open_spans = np.flatnonzero(np.isin(ids[note.wrappers :], note.open_ids))  # outermost first
    closes = min(opened, next_note.wrappers)
    _check_closing_scopes(chain, chain.span_rows[open_spans], after, closes)

    unmatched = np.concatenate([chain.wrapper_ids, after.wrapper_ids[opened:]]).astype(np.int64)
    closed_top = (after.level == 1) & ~np.isin(next_ids[next_note.wrappers :], next_note.open_ids)
    root = note.root or next_note.wrappers >= max(opened, 1) or bool(np.any(closed_top & (after.ends_before >= opened)))
    under_open = (after.level == 1) & (after.ends_before < opened)  # next-chain spans inside a still open span
    level = np.concatenate([chain.level, after.level + np.maximum(opened - after.ends_before, 0)])
    ends_before = np.concatenate([chain.ends_before, note.wrappers + np.maximum(after.ends_before - opened, 0)])
    depth = level + len(unmatched) - ends_before if root else level - 1

    both = pa.concat_tables([rows, next_rows])
    span_rows = np.concatenate([chain.span_rows, after.span_rows + rows.num_rows])
    top_parent = np.append(unmatched, -1 if root else 0)[np.minimum(ends_before, len(unmatched))]
    parent = np.where(level == 1, top_parent, both.column("parent").to_numpy()[span_rows])
    parent[len(chain.span_rows) :][under_open] = np.asarray(note.open_ids, np.int64)[
        opened - 1 - after.ends_before[under_open]
    ]
    end = _int64(both, "end")[span_rows]
    # Open spans, outermost first: those the next chain does not close end where it ends.
    end[open_spans] = np.concatenate(
        [np.full(opened - closes, next_note.end_ns), after.wrapper_column("end")[:closes][::-1]]
    )

    head_rows = np.array(_head_rows(chain, after, root, opened), np.int64)
    head_ids = np.concatenate([[-1] if root else [], unmatched[::-1]]).astype(np.int64)
    head_parent = np.append(0, head_ids[:-1]) if root else head_ids
    head_end = _int64(both, "end")[head_rows]
    if root:
        head_end[0] = next_note.end_ns
    begin = np.concatenate([np.full(len(head_rows), note.begin_ns, np.int64), _int64(both, "begin")[span_rows]])
    end = np.concatenate([head_end, end])
    table = _with_columns(
        both.take(pa.array(np.concatenate([head_rows, span_rows]))),
        id=pa.array(np.concatenate([head_ids, both.column("id").to_numpy()[span_rows]]), pa.int64()),
        parent=pa.array(np.concatenate([head_parent, parent]), pa.int64()),
        depth=pa.array(np.concatenate([np.arange(len(head_rows)), depth]).astype(np.uint32), pa.uint32()),
        begin=timestamp_array(begin),
        end=timestamp_array(end),
        duration=pa.array(end - begin, pa.int64()),
    )
    joined = ChainNote(
        note.begin_ticks,
        next_note.end_ticks,
        note.begin_ns,
        next_note.end_ns,
        table.num_rows,
        len(unmatched),
        root,
        note.open_ids[: opened - closes] + next_note.open_ids,
        note.exact and next_note.exact,
    )
    return table, joined


def _head_rows(chain: _Chain, after: _Chain, root: bool, opened: int) -> list[int]:
    """Rows (in both chains' tables) of the joined chain's root and unmatched ends, outermost end first."""
    if not root:
        return []
    offset = chain.table.num_rows
    later = [offset + after.note.wrappers - k for k in range(after.note.wrappers - 1, opened - 1, -1)]
    return [0 if chain.note.root else offset, *later, *range(1, 1 + chain.note.wrappers)]


def _check_closing_scopes(chain: _Chain, open_rows: np.ndarray, after: _Chain, closes: int) -> None:
    """The next chain's first unmatched ends must close open spans of their scope, as when built at once."""
    open_hashes = chain.table.column("hash").to_numpy()[open_rows][::-1][:closes]  # innermost first
    wrong = np.flatnonzero(open_hashes != after.wrapper_column("hash")[:closes])
    if len(wrong):
        raise BlockRowsError(f"top scope mismatch joining chains: {len(wrong)} span(s) closed by another scope")


def _with_columns(table: pa.Table, **columns: pa.Array) -> pa.Table:
    for name, column in columns.items():
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(name), column)
    return table
