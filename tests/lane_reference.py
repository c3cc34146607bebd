"""The previous async lane assigner (views/perfetto/lanes.py before it was vectorized): one Python
step per span, following the lane rules literally: a stack of open spans per lane, a heap of busy lanes
keyed by the end of their outermost span, a heap of free lanes. It is the oracle the numpy assigner is
checked against (tests/test_perfetto_lanes.py) and the baseline of benchmarks/perfetto.py.

It takes a parent id to be the latest span with that id still on a lane stack; with duplicate span ids
a span leaving a stack also forgets a later span of the same id, so it is compared on unique ids only.
"""

from __future__ import annotations

import heapq

import numpy as np

_NEVER = float("inf")


class SequentialLaneAssigner:
    """The lane rules applied span by span, with a stack of open spans per lane."""

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
