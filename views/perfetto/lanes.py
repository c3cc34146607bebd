"""Lane layout of async spans: every lane (Perfetto track) holds properly nested slices only.

Perfetto pairs the begin and end events of one track with a stack, so the slices of a track must nest
strictly. Async spans overlap freely (concurrent futures), so spanlake spreads them over lanes, taking
spans in `begin` order:

- a span's parent is the latest span begun before it whose `span_id` is its `parent_span_id`;
- a span nests on its parent's lane when the parent outlives it (`parent.end > span.end`, strictly:
  equal ends would make the two end events tie in Perfetto's timestamp sort and close the parent
  first) and no child nested on the parent before it is still open (`end > span.begin`); it then
  shows as a child of its parent;
- every other span (root, parent unknown, a nested sibling still open, a child outliving its parent)
  is an outermost span: it goes on the lowest-numbered lane whose last outermost span has ended
  (`end <= span.begin`), a new lane if none has.

Both rules are greedy interval chains, which is what makes them fast without a Python step per span:
the children nested on a parent are the chain "first child, then the first child beginning once the
previous one ended"; lane 0 holds the chain of all outermost spans, lane 1 the chain of the rest, and
so on. A chain is followed through next-pointers found with one `searchsorted`, so Python steps only
from one chained span to the next; lanes inherit down the nesting by pointer jumping. When a lane
takes few of the spans left (many lanes open at once), the remaining outermost spans go through a
heap of busy lanes instead, O(log lanes) each. Between batches only the open spans are kept, so
memory is bounded by the number of open spans.
"""

from __future__ import annotations

import heapq

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NONE = np.iinfo(np.int64).min  # a time before every span: "no nested child yet", "lane never used"
# A lane round costs a few numpy passes over the batch's outermost spans; a heap step costs about as
# much as this many of them.
_HEAP_STEP_COST = 64


class AsyncLaneAssigner:
    """Assigns a lane to each async span, batch after batch, spans in `begin` order."""

    def __init__(self) -> None:
        self._lane_free_at: list[int] = []  # per lane: end of its last outermost span
        # Spans still open after the last batch (possible parents), sorted by id.
        self._open_ids = np.empty(0, dtype=np.int64)
        self._open_ends = np.empty(0, dtype=np.int64)
        self._open_lanes = np.empty(0, dtype=np.int64)
        self._open_child_ends = np.empty(0, dtype=np.int64)  # end of the last child nested on each

    @property
    def lane_count(self) -> int:
        """Number of lanes used so far."""
        return len(self._lane_free_at)

    def assign(self, span_ids: pa.Array, parent_ids: pa.Array, begins: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Lane of each span (int64); requires begin < end, begins sorted across calls, non-null span ids."""
        ids = _int64(span_ids)
        begins = np.asarray(begins, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        if not len(ids):
            return np.empty(0, dtype=np.int64)
        parents = self._parent_indices(ids, parent_ids)
        # Spans are indexed as the open spans carried over, then this batch's rows.
        all_ends = np.concatenate([self._open_ends, ends])
        child_ends = np.concatenate([self._open_child_ends, np.full(len(ids), _NONE, dtype=np.int64)])
        nested = _nested_rows(parents, begins, ends, all_ends, child_ends)
        lanes = np.concatenate([self._open_lanes, np.full(len(ids), -1, dtype=np.int64)])
        carried = len(self._open_ids)
        outermost = np.ones(len(ids), dtype=bool)
        outermost[nested] = False
        outermost_rows = np.flatnonzero(outermost)
        lanes[carried + outermost_rows] = self._outermost_lanes(begins[outermost_rows], ends[outermost_rows])
        # A nested span is on the lane of its nearest outermost (or carried) ancestor.
        up = np.arange(len(lanes))
        up[carried + nested] = parents[nested]
        lanes = lanes[_topmost(up)]
        self._keep_open(np.concatenate([self._open_ids, ids]), all_ends, lanes, child_ends, int(begins[-1]))
        return lanes[carried:]

    def _parent_indices(self, ids: np.ndarray, parent_ids: pa.Array) -> np.ndarray:
        """Index of each span's parent (open spans, then this batch's rows), -1 if none."""
        valid = pc.is_valid(parent_ids).to_numpy(zero_copy_only=False)
        if pa.types.is_null(parent_ids.type):  # no parent at all
            parents = np.zeros(len(ids), dtype=np.int64)
        else:
            parents = _int64(pc.fill_null(parent_ids, 0))
        row = _latest_earlier_row(ids, parents)
        in_batch = valid & (row >= 0)
        result = np.where(in_batch, len(self._open_ids) + row, -1)
        if len(self._open_ids):
            carried = np.minimum(np.searchsorted(self._open_ids, parents), len(self._open_ids) - 1)
            found = valid & ~in_batch & (self._open_ids[carried] == parents)
            result = np.where(found, carried, result)
        return result

    def _outermost_lanes(self, begins: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Lanes of the outermost spans: lane by lane, each takes the chain of the spans left that
        begin once its previous span ended."""
        lanes = np.empty(len(begins), dtype=np.int64)
        rows = np.arange(len(begins))  # the spans left
        left_begins = begins
        # Per span left, the position among the spans left of the first one beginning once it ended.
        following = np.searchsorted(begins, ends)
        lane = 0
        free_at = self._lane_free_at
        while len(rows):
            start = free_at[lane] if lane < len(free_at) else _NONE
            if start > left_begins[-1]:  # busy through the whole batch
                lane += 1
                continue
            chain = _chains([int(np.searchsorted(left_begins, start))], memoryview(following), len(rows))
            lanes[rows[chain]] = lane
            last_end = int(ends[rows[chain[-1]]])
            if lane < len(free_at):
                free_at[lane] = last_end
            else:
                free_at.append(last_end)
            lane += 1
            # Drop the chain; pointers move to the first span left at or after their target.
            left = np.ones(len(rows), dtype=bool)
            left[chain] = False
            left_before = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(left, out=left_before[1:])
            rows, left_begins, following = rows[left], left_begins[left], left_before[following[left]]
            if len(chain) * _HEAP_STEP_COST < len(rows):
                lanes[rows] = self._heap_lanes(lane, begins[rows].tolist(), ends[rows].tolist())
                break
        return lanes

    def _heap_lanes(self, first_lane: int, begins: list[int], ends: list[int]) -> list[int]:
        """Lanes (first_lane and up) of outermost spans through a heap of busy lanes."""
        free_at = self._lane_free_at
        busy = [(free_at[lane], lane) for lane in range(first_lane, len(free_at))]
        heapq.heapify(busy)
        free: list[int] = []
        heappush, heappop = heapq.heappush, heapq.heappop
        lanes = []
        for begin, end in zip(begins, ends, strict=True):
            while busy and busy[0][0] <= begin:
                heappush(free, heappop(busy)[1])
            if free:
                lane = heappop(free)
                free_at[lane] = end
            else:
                lane = len(free_at)
                free_at.append(end)
            heappush(busy, (end, lane))
            lanes.append(lane)
        return lanes

    def _keep_open(
        self, ids: np.ndarray, ends: np.ndarray, lanes: np.ndarray, child_ends: np.ndarray, last_begin: int
    ) -> None:
        """Keep the spans that can still parent a later span: the latest of each id, if still open."""
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        latest = np.ones(len(ids), dtype=bool)
        latest[:-1] = sorted_ids[1:] != sorted_ids[:-1]
        keep = order[latest]
        keep = keep[ends[keep] > last_begin]
        self._open_ids = ids[keep]
        self._open_ends = ends[keep]
        self._open_lanes = lanes[keep]
        self._open_child_ends = child_ends[keep]


def _topmost(up: np.ndarray) -> np.ndarray:
    """Where each index ends following `up` (an index pointing to itself ends), by pointer jumping:
    log2(depth) numpy passes."""
    while True:
        jumped = up[up]
        if np.array_equal(jumped, up):
            return up
        up = jumped


def _int64(values: pa.Array) -> np.ndarray:
    """An integer id column as int64 (uint64 ids wrap, keeping them distinct)."""
    return np.asarray(values.to_numpy(zero_copy_only=False)).astype(np.int64, copy=False)


def _latest_earlier_row(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each row i, the last row before i whose id is `wanted[i]`, -1 if none."""
    rows = len(ids)
    increasing = bool((ids[1:] > ids[:-1]).all())
    order = np.arange(rows) if increasing else np.argsort(ids, kind="stable")
    sorted_ids = ids if increasing else ids[order]
    start = np.minimum(np.searchsorted(sorted_ids, wanted), rows - 1)
    found = sorted_ids[start] == wanted
    if increasing or (sorted_ids[1:] != sorted_ids[:-1]).all():  # unique ids: the one row found
        return np.where(found & (order[start] < np.arange(rows)), order[start], -1)
    # Rows sorted by (id, row) are searched for (wanted id, i).
    block = np.concatenate(([0], np.cumsum(sorted_ids[1:] != sorted_ids[:-1])))
    keys = block * (rows + 1) + order
    before = np.searchsorted(keys, block[start] * (rows + 1) + np.arange(rows)) - 1
    return np.where(found & (before >= start), order[np.maximum(before, 0)], -1)


def _nested_rows(
    parents: np.ndarray, begins: np.ndarray, ends: np.ndarray, all_ends: np.ndarray, child_ends: np.ndarray
) -> np.ndarray:
    """Rows that nest on their parent's lane, in order; updates `child_ends` of their parents.

    Candidates (the parent outlives them) are grouped by parent; in each group the nested children
    are the chain from the first candidate beginning once the last nested child ended."""
    rows = len(begins)
    candidates = np.flatnonzero(parents >= 0)
    candidates = candidates[all_ends[parents[candidates]] > ends[candidates]]
    if not len(candidates):
        return candidates
    candidates = candidates[np.argsort(parents[candidates], kind="stable")]
    groups = parents[candidates]
    keys = groups * (rows + 1) + candidates
    after = groups * (rows + 1) + np.searchsorted(begins, ends[candidates])
    following = np.searchsorted(keys, after)
    capped = np.minimum(following, len(keys) - 1)
    following = np.where((following < len(keys)) & (groups[capped] == groups), following, len(keys))
    firsts = np.flatnonzero(np.diff(groups, prepend=-1) != 0)
    group_ids = groups[firsts]
    heads = np.searchsorted(keys, group_ids * (rows + 1) + np.searchsorted(begins, child_ends[group_ids]))
    capped = np.minimum(heads, len(keys) - 1)
    heads = heads[(heads < len(keys)) & (groups[capped] == group_ids)]
    nested_positions = _chains(heads.tolist(), memoryview(following), len(keys))
    nested = candidates[nested_positions]
    np.maximum.at(child_ends, parents[nested], ends[nested])
    return np.sort(nested)


def _chains(heads: list[int], following: memoryview, stop: int) -> np.ndarray:
    """Positions of the chains from every head (`following[p] == stop` ends a chain); `following`
    is read in place (a memoryview of int64) since chains visit few of its entries."""
    positions = []
    append = positions.append
    for position in heads:
        while position < stop:
            append(position)
            position = following[position]
    return np.array(positions, dtype=np.int64)
