"""Lane layout of async spans: every lane (Perfetto track) holds properly nested slices only.

Perfetto pairs the begin and end events of one track with a stack, so the slices of a track must nest
strictly. Async spans overlap freely (concurrent futures), so spanlake spreads them over lanes:

- spans are taken in `begin` order; a lane is a stack of the spans still open on it, innermost last;
- a span goes on its parent's lane when the parent is the innermost open span there and outlives it
  (`parent.end > span.end`, strictly: equal ends would make the two end events tie in Perfetto's
  timestamp sort and close the parent first); it then shows as a child of its parent;
- otherwise (root span, parent unknown or closed, a sibling still open on the parent's lane, or a
  child outliving its parent) it goes on the lowest-numbered lane with nothing open, a new lane if
  none is free;
- a span that has ended leaves its lane's stack lazily, when the lane is next looked at or freed.

This is greedy interval partitioning with a heap of busy lanes keyed by the end of their outermost
span, O(n log lanes). It is sequential by nature (where a span goes depends on where every earlier
overlapping span went), so it runs as one tight Python loop per span; the benchmark
(benchmarks/perfetto.py) measures its cost. Memory is bounded by the number of open spans.
"""

from __future__ import annotations

import heapq

import numpy as np

_NEVER = float("inf")


class AsyncLaneAssigner:
    """Assigns a lane to each async span, batch after batch, spans in `begin` order."""

    def __init__(self) -> None:
        self._stacks: list[list[tuple[int, int]]] = []  # per lane: (end, span_id) of open spans
        self._busy: list[tuple[int, int]] = []  # heap of (end of the outermost open span, lane)
        self._free: list[int] = []  # heap of lanes with nothing open
        self._open_lane: dict[int, int] = {}  # span_id -> lane, for open spans

    @property
    def lane_count(self) -> int:
        return len(self._stacks)

    def assign(
        self, span_ids: list[int], parent_ids: list[int | None], begins: list[int], ends: list[int]
    ) -> np.ndarray:
        """Lane of each span (int64); requires begin < end and begins sorted across calls."""
        stacks, busy, free, open_lane = self._stacks, self._busy, self._free, self._open_lane
        heappush, heappop = heapq.heappush, heapq.heappop
        lanes = []
        next_release = busy[0][0] if busy else _NEVER
        for span_id, parent_id, begin, end in zip(span_ids, parent_ids, begins, ends, strict=True):
            if begin >= next_release:
                while busy and busy[0][0] <= begin:
                    released = heappop(busy)[1]
                    for _, closed_id in stacks[released]:
                        open_lane.pop(closed_id, None)
                    stacks[released].clear()
                    heappush(free, released)
                next_release = busy[0][0] if busy else _NEVER
            lane = open_lane.get(parent_id, -1)
            if lane >= 0:
                stack = stacks[lane]
                # The lane is busy, so its outermost span is still open and the loop stops on it.
                while stack[-1][0] <= begin:
                    open_lane.pop(stack.pop()[1], None)
                top_end, top_id = stack[-1]
                if top_id != parent_id or top_end <= end:
                    lane = -1
            if lane < 0:
                if free:
                    lane = heappop(free)
                else:
                    lane = len(stacks)
                    stacks.append([])
                heappush(busy, (end, lane))
                if end < next_release:
                    next_release = end
            stacks[lane].append((end, span_id))
            open_lane[span_id] = lane
            lanes.append(lane)
        return np.array(lanes, dtype=np.int64)
