"""How blocks are cut into partitions and which small partitions merge (lakehouse/jit_layout.py)."""

from __future__ import annotations

import itertools

import pytest

from spanlake.lakehouse import jit_layout
from spanlake.lakehouse.jit_layout import (
    INSERT_RESOLUTION_NS,
    MAX_PARTITION_BLOCKS,
    MERGE_FANIN,
    HeldCount,
    cut_blocks,
    plan_merges,
    plan_rebuild,
    tier,
)
from spanlake.lakehouse.partitions import Partition
from spanlake.lakehouse.source_blocks import HOUR_NS
from spanlake.views.log_entries import VIEW
from spanlake.views.meta import BlockMeta, ProcessMeta, SourceBlock, SourceProcess, SourceStream, StreamMeta

PROCESS = SourceProcess(ProcessMeta("p", "exe", "u", "c", 0, 0, 1), "", "", "", 0, "")
STREAM = SourceStream(StreamMeta("s", "p"), "micromegas-transit", b"", b"", 0)
HOUR = 1_000 * HOUR_NS  # an hour boundary


def block(insert_ns: int, objects: int = 10) -> SourceBlock:
    meta = BlockMeta(f"b{insert_ns}", "s", "p", 0, 0, 0, 0, objects, 0, insert_ns)
    return SourceBlock(meta, STREAM, PROCESS, 100)


def partition(blocks: list[SourceBlock]) -> Partition:
    begin, end = blocks[0].meta.insert_time_ns, blocks[-1].meta.insert_time_ns + INSERT_RESOLUTION_NS
    count = sum(b.meta.nb_objects for b in blocks)
    return Partition(VIEW.name, "p", begin, end, 0, 1, f"f{begin}", 1, VIEW.schema_hash, count, 1)


def test_cuts_are_bounded_inside_an_hour_and_never_split_an_insert_time() -> None:
    times = [HOUR - 500_000 + 1000 * i for i in range(3000)]  # crosses the hour at block 500
    times[2540:2600] = [times[2540]] * 60  # inserted in the same microsecond, across a size cut
    cuts = cut_blocks([block(t) for t in times])
    assert sum(len(cut) for cut in cuts) == 3000
    assert all(len({b.meta.insert_time_ns // HOUR_NS for b in cut}) == 1 for cut in cuts)
    assert max(len(cut) for cut in cuts) <= MAX_PARTITION_BLOCKS + 59  # only a tie may overflow
    for earlier, later in itertools.pairwise(cuts):
        assert earlier[-1].meta.insert_time_ns < later[0].meta.insert_time_ns
    assert [len(cut) for cut in cuts] == [500, MAX_PARTITION_BLOCKS, 2600 - 1524, 400]


def test_new_blocks_become_a_tail_and_a_late_block_rebuilds_its_partition() -> None:
    old = [block(HOUR + 1000 * i) for i in range(10)]
    first = partition(old[:5])
    second = partition(old[5:])
    tail = [block(HOUR + 100_000 + 1000 * i) for i in range(3)]
    [spec] = plan_rebuild(VIEW, "p", old + tail, [first, second])
    assert spec.blocks == tuple(tail) and spec.replaces == ()
    late = block(HOUR + 6500)  # inside the second partition's range
    blocks = sorted([*old, late], key=lambda b: b.meta.insert_time_ns)
    [spec] = plan_rebuild(VIEW, "p", blocks, [first, second])
    assert spec.replaces == (second,) and len(spec.blocks) == 6


def held(blocks_per_partition: list[int], hour: int = HOUR) -> list[HeldCount]:
    out, start = [], hour
    for blocks in blocks_per_partition:
        out.append(HeldCount(partition([block(start + 1000 * i) for i in range(blocks)]), blocks, 10 * blocks))
        start += 1000 * blocks + 1000
    return out


def test_merges_take_eight_of_a_tier_or_what_fits() -> None:
    assert [tier(n) for n in (1, 7, 8, 63, 64, 511, 512)] == [0, 0, 1, 1, 2, 2, 3]
    assert plan_merges(held([1] * (MERGE_FANIN - 1))) == []
    [group] = plan_merges(held([40] + [1] * MERGE_FANIN))
    assert [member.blocks for member in group] == [1] * MERGE_FANIN
    # Tier 2 partitions: as many as fit in MAX_PARTITION_BLOCKS, when the next one would not.
    [group] = plan_merges(held([300, 300, 300, 300]))
    assert [member.blocks for member in group] == [300, 300, 300]
    assert plan_merges(held([600, 600])) == []  # two that cannot merge: big enough as they are


def test_merges_never_cross_an_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jit_layout, "MERGE_FANIN", 2)
    before, after = held([1], HOUR - 10_000), held([1], HOUR)
    assert plan_merges(before + after) == []
    assert len(plan_merges(before + held([1], HOUR - 5000))) == 1
