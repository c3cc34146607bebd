"""thread_spans merges from partition rows: random streams cut into random blocks and random partitions
give, merged from the partitions' rows and notes, exactly the rows their blocks give built at once."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from test_views_thread_spans import STREAM, Event, _encode, _random_blocks

from spanlake.views import thread_spans
from spanlake.views.call_tree_merge import NOTES_KEY, PartitionNotes
from spanlake.views.meta import ProcessMeta
from spanlake.views.time import TickConverter
from spanlake.views.view import PartitionRows, TransitBlock

PROCESS = ProcessMeta("process-1", "exe", "user", "host", 0, 0, 1_000_000_000)
CONVERT = TickConverter(0, 0, 1_000_000_000)  # 1 tick = 1 ns


def _transit(blocks: list[tuple[int, int, list[Event]]]) -> list[TransitBlock]:
    return [TransitBlock(decoded, meta, STREAM, PROCESS, CONVERT) for meta, decoded in _encode(blocks)]


def _built(blocks: list[TransitBlock]) -> pa.Table:
    """The rows of the blocks built at once, as a partition of them holds them (none: no partition file)."""
    return pa.Table.from_batches(list(thread_spans.VIEW.rows_from_transit(blocks)), thread_spans.SCHEMA)


def _partition(blocks: list[TransitBlock]) -> PartitionRows | None:
    batches = list(thread_spans.VIEW.rows_from_transit(blocks))
    if not batches or not batches[0].num_rows:
        return None  # no rows: no file, so no notes (the merge decodes)
    return PartitionRows(pa.Table.from_batches(batches), batches[0].schema.metadata)


def _rows(table: pa.Table) -> list[dict]:
    return table.cast(thread_spans.SCHEMA).to_pylist()


def _cut(rng: random.Random, blocks: list[TransitBlock]) -> list[list[TransitBlock]]:
    """Consecutive runs of the blocks (insert order), 1 to 5 of them."""
    cuts = sorted(rng.sample(range(1, len(blocks)), min(len(blocks) - 1, rng.randint(0, 4))))
    return [blocks[lo:hi] for lo, hi in zip([0, *cuts], [*cuts, len(blocks)], strict=True)]


def _merged_or_none(parts: list[list[TransitBlock]]) -> pa.Table | None:
    rows = [_partition(part) for part in parts]
    if any(part is None for part in rows):
        return None
    return thread_spans.VIEW.merge_rows([part for part in rows if part is not None])


def _well_formed_blocks(rng: random.Random) -> list[tuple[int, int, list[Event]]]:
    """A thread's spans nesting across many blocks: ends of spans begun before the stream, spans left open,
    blocks back to back or after a gap, every event inside its block."""
    names = ["a", "b", "c", "d"]
    stack: list[str] = []
    blocks = []
    tick = 0
    for _ in range(rng.randint(2, 12)):
        if rng.random() < 0.1:
            tick += rng.randint(1, 30)  # a gap: a new chain
        begin = tick
        events = []
        for _ in range(rng.randint(0, 12)):
            tick += rng.randint(1, 3)
            named = rng.random() < 0.3
            if rng.random() < 0.5:
                stack.append(rng.choice(names))
                events.append(Event(True, tick, 0, stack[-1], named))
            elif stack:
                events.append(Event(False, tick, 0, stack.pop(), named))
            elif rng.random() < 0.3:
                events.append(Event(False, tick, 0, rng.choice(names), named))  # began before the stream
        tick += rng.randint(1, 3)
        blocks.append((begin, tick, events))
    return blocks


def _stream(seed: int) -> list[TransitBlock]:
    rng = random.Random(seed)
    return _transit(_well_formed_blocks(rng) if seed % 2 else _random_blocks(rng))


@pytest.mark.parametrize("seed", range(300))
def test_merged_rows_equal_the_blocks_built_at_once(seed: int) -> None:
    blocks = _stream(seed)
    merged = _merged_or_none(_cut(random.Random(-seed), blocks))
    if merged is not None:
        assert _rows(merged) == _rows(_built(blocks))


def test_merges_of_well_formed_streams_need_no_decoding() -> None:
    """Merges of well-formed streams join from rows whenever each partition has rows (a file with notes),
    and they do join chains, closing spans across partitions."""
    joined, closed_across = 0, 0
    for seed in range(1, 300, 2):
        blocks = _stream(seed)
        parts = _cut(random.Random(-seed), blocks)
        if any(_partition(part) is None for part in parts):
            continue
        merged = _merged_or_none(parts)
        assert merged is not None
        joined += len(parts) > 1
        notes = PartitionNotes.decode(merged.schema.metadata)
        assert notes is not None and notes.first.rows + (notes.chains > 1) * notes.last.rows <= merged.num_rows
        alone = sum(_built(part).num_rows for part in parts)
        closed_across += merged.num_rows < alone  # wrappers of later parts closed earlier open spans
    assert joined > 100 and closed_across > 30, (joined, closed_across)


def test_a_span_open_across_partitions_ends_where_the_next_one_closes_it() -> None:
    blocks = _transit(
        [
            (0, 100, [Event(True, 10, 0, "frame"), Event(True, 20, 0, "work"), Event(False, 30, 0, "work")]),
            (100, 200, [Event(True, 120, 0, "work"), Event(False, 130, 0, "work"), Event(False, 150, 0, "frame")]),
            (200, 300, [Event(True, 210, 0, "frame")]),
        ]
    )
    alone = [_partition([block]) for block in blocks]
    assert alone[0] is not None  # alone, the frame is open: it ends with its partition's blocks
    assert [(row["name"], row["end"].value) for row in _rows(alone[0].table)] == [("frame", 100), ("work", 30)]
    merged = thread_spans.VIEW.merge_rows(alone)
    rows = _rows(merged)
    assert rows == _rows(_built(blocks))
    assert [(r["id"], r["parent"], r["depth"], r["name"]) for r in rows] == [
        (-1, 0, 0, "worker-42"),
        (0, -1, 1, "frame"),
        (1, 0, 2, "work"),
        (3, 0, 2, "work"),
        (6, -1, 1, "frame"),
    ]
    assert [r["end"].value for r in rows] == [300, 150, 30, 130, 300]
    notes = PartitionNotes.decode(merged.schema.metadata)
    assert notes is not None and notes.last.open_ids == (6,) and notes.chains == 1


def test_a_partition_without_notes_is_decoded() -> None:
    blocks = _transit([(0, 100, [Event(True, 10, 0, "a"), Event(False, 20, 0, "a")])] * 1)
    part = _partition(blocks)
    assert part is not None and NOTES_KEY in (part.metadata or {})
    assert thread_spans.VIEW.merge_rows([part, PartitionRows(part.table, None)]) is None


def test_closing_a_span_of_another_scope_gives_no_rows_as_built_at_once() -> None:
    blocks = _transit(
        [(0, 100, [Event(True, 10, 0, "a")]), (100, 200, [Event(False, 150, 0, "b")])],
    )
    assert _built(blocks).num_rows == 0
    merged = thread_spans.VIEW.merge_rows([_partition([block]) for block in blocks])
    assert merged is not None and merged.num_rows == 0
