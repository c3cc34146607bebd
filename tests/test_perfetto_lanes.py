"""The async lane assigner (views/perfetto/lanes.py): the numpy chains give the lanes of the span by
span rules (tests/lane_reference.py) on random span sets cut into random batches, through both ways
of laying out outermost spans (lane rounds, busy-lane heap)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from lane_reference import SequentialLaneAssigner

from spanlake.views.perfetto import lanes as lanes_module
from spanlake.views.perfetto.lanes import AsyncLaneAssigner

HEAP_ALWAYS, HEAP_DEFAULT, HEAP_NEVER = 0, lanes_module._HEAP_STEP_COST, 10**9


def random_spans(seed: int, count: int) -> dict[str, np.ndarray]:
    """Spans in begin order with unique ids (increasing or not): `overlap` of them open at a time on average, parents
    mostly among the few spans before (so children overlap, outlive or share ends with them), some
    parents unknown, null, or beginning later; begins and ends often tied."""
    rng = np.random.default_rng(seed)
    overlap = int(rng.choice([1, 3, 10, 60]))
    grid = int(rng.choice([1, 50]))  # 50: many tied instants
    begins = np.sort(rng.integers(0, count * 100 // overlap + 1, count)) // grid * grid
    durations = rng.integers(1, 200, count) * rng.choice([1, 1, 4], count)
    ends = np.maximum((begins + durations) // grid * grid, begins + 1)
    ids = rng.permutation(3 * count)[:count] + 1
    if rng.random() < 0.5:  # ids increasing in begin order, as counters give them
        ids.sort()
    parent_rows = np.clip(np.arange(count) - rng.integers(-2, 6, count), 0, count - 1)
    parents = np.where(rng.random(count) < 0.85, ids[parent_rows], rng.integers(0, 10 * count, count))
    nulls = rng.random(count) < 0.05
    return {"ids": ids, "parents": parents, "nulls": nulls, "begins": begins, "ends": ends}


def batch_cuts(seed: int, count: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed + 1000)
    cuts = np.sort(rng.integers(0, count + 1, int(rng.integers(0, 8))))
    bounds = [0, *cuts.tolist(), count]
    return list(itertools.pairwise(bounds))


def reference_lanes(spans: dict[str, np.ndarray], cuts: list[tuple[int, int]]) -> list[int]:
    assigner = SequentialLaneAssigner()
    parents = [None if null else parent for parent, null in zip(spans["parents"].tolist(), spans["nulls"], strict=True)]
    lanes: list[int] = []
    for start, stop in cuts:
        columns = (spans["ids"].tolist(), parents, spans["begins"].tolist(), spans["ends"].tolist())
        lanes += assigner.assign(*(column[start:stop] for column in columns)).tolist()
    return lanes


def numpy_lanes(spans: dict[str, np.ndarray], cuts: list[tuple[int, int]]) -> list[int]:
    assigner = AsyncLaneAssigner()
    parents = pa.array(spans["parents"], mask=spans["nulls"])
    lanes: list[int] = []
    for start, stop in cuts:
        lanes += assigner.assign(
            pa.array(spans["ids"][start:stop]),
            parents.slice(start, stop - start),
            spans["begins"][start:stop],
            spans["ends"][start:stop],
        ).tolist()
    return lanes


@pytest.mark.parametrize("heap_step_cost", [HEAP_ALWAYS, HEAP_DEFAULT, HEAP_NEVER])
def test_numpy_lanes_are_the_span_by_span_lanes(heap_step_cost: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes_module, "_HEAP_STEP_COST", heap_step_cost)
    nested = lane_counts = 0
    for seed in range(40):
        count = int(np.random.default_rng(seed).integers(1, 1500))
        spans, cuts = random_spans(seed, count), batch_cuts(seed, count)
        expected = reference_lanes(spans, cuts)
        assert numpy_lanes(spans, cuts) == expected, f"seed {seed}"
        lane_counts += max(expected) + 1
        nested += sum(1 for lane in expected if lane > 0)
    assert lane_counts > 40 * 3 and nested > 0  # the random sets do spread over many lanes


def test_many_lanes_open_at_once_take_the_heap() -> None:
    """Outermost spans all overlapping: each lane takes one span per batch, so the rounds hand over
    to the busy-lane heap; lanes are reused once free."""
    count = 3000
    begins = np.arange(count) * 10
    ends = begins + 5000 - (np.arange(count) % 7)
    spans = {
        "ids": np.arange(1, count + 1),
        "parents": np.zeros(count, dtype=np.int64),
        "nulls": np.zeros(count, dtype=bool),
        "begins": begins,
        "ends": ends,
    }
    cuts = [(0, 1000), (1000, 2000), (2000, count)]
    lanes = numpy_lanes(spans, cuts)
    assert lanes == reference_lanes(spans, cuts)
    assert 490 < max(lanes) < 510 and lanes[:500] == list(range(500))


@pytest.mark.parametrize("cut", [4, 2])
def test_a_duplicate_span_id_names_the_latest_span(cut: int) -> None:
    """Two open spans with id 7: children of 7 nest under the later one. (The span-by-span assigner
    forgets the later 7 when the first one leaves its lane, so it is not the judge here.)"""
    ids, begins, ends = np.array([7, 7, 9, 10]), np.array([0, 10, 70, 80]), np.array([50, 400, 100, 90])
    parents = pa.array([None, None, 7, 7], pa.int64())
    assigner = AsyncLaneAssigner()
    lanes = [
        *assigner.assign(pa.array(ids[:cut]), parents[:cut], begins[:cut], ends[:cut]),
        *assigner.assign(pa.array(ids[cut:]), parents[cut:], begins[cut:], ends[cut:]),
    ]
    # 9 nests under the second 7 (lane 1); 10 overlaps its nested sibling 9, so it takes lane 0,
    # free since the first 7 ended.
    assert lanes == [0, 1, 1, 0]


def test_parent_columns_of_other_types() -> None:
    """uint64 ids (64-bit values wrap to int64, staying distinct) and an all-null parent column."""
    assigner = AsyncLaneAssigner()
    big = 2**64 - 5
    first = assigner.assign(pa.array([1, 2, 3]), pa.nulls(3), np.array([0, 1, 2]), np.array([50, 60, 70]))
    second = assigner.assign(
        pa.array([big, 4], pa.uint64()), pa.array([None, big], pa.uint64()), np.array([3, 4]), np.array([40, 30])
    )
    assert first.tolist() == [0, 1, 2] and second.tolist() == [3, 3]
