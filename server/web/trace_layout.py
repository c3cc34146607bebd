"""A trace's waterfall: the rows of `trace_spans` laid out one band per process, each band a tree in
depth-first order, with the trace's critical path and its cross-process parents and hand-offs.

Everything is computed with numpy over whole columns: depths by pointer jumping, then level by level
over slices of one sort by depth (a level is one vectorised step, never one per span):

* a span's parent is found by its `parent_span_id` among the trace's `span_id`s; within its band a span
  hangs under its parent only when both ran in the same process (else it is a root of its band, and
  its parent is drawn as a link across bands);
* rows: the bands in order of their first begin; in a band, the trees in begin order, each depth first
  (children in begin order): a span's row is its parent's + 1 + the sizes of its earlier siblings'
  subtrees;
* the critical path, the chain of spans the root actually waited on: from the trace's root (the earliest
  span with no parent in the trace), repeatedly the child whose end is the latest not after its parent's
  end;
* a link: `remote` when the parent ran in another process, `handoff` when the child began after its
  parent ended (a queue or an executor took the work over).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views.async_events import chain_depths

NO_PARENT = -1
LINK_KINDS = ("", "remote", "handoff")  # the names of `Waterfall.link`'s codes
REMOTE, HANDOFF = LINK_KINDS.index("remote"), LINK_KINDS.index("handoff")


@dataclass(frozen=True)
class Band:
    """The rows of one process: its header is the row before `first_row`."""

    process_id: str
    exe: str
    first_row: int
    spans: int


@dataclass(frozen=True)
class Waterfall:
    """The trace's spans in row order (`spans`, a table) and, per span, what the page draws."""

    table: pa.Table  # trace_spans' rows, as given
    order: np.ndarray  # the index in `table` of each row's span, in row order
    rows: np.ndarray  # the row of each span (its band's header rows counted)
    band_depth: np.ndarray  # depth within its band's tree
    parent: np.ndarray  # index (in `spans`) of the parent anywhere in the trace, NO_PARENT if none
    link: np.ndarray  # index into LINK_KINDS
    critical: np.ndarray  # bool: on the critical path
    bands: tuple[Band, ...]
    begin_ns: int
    end_ns: int

    @property
    def row_count(self) -> int:
        """Rows of the whole waterfall, one header per band included."""
        return len(self.order) + len(self.bands)

    @functools.cached_property
    def spans(self) -> pa.Table:
        """trace_spans' rows, sorted by row (a page needs only its slice: `page`)."""
        return self.table.take(self.order)

    def page(self, offset: int, stop: int) -> pa.Table:
        """The spans of rows `offset`..`stop` (in row order), taken from the table alone."""
        return self.table.take(self.order[offset:stop])

    def index_of(self, span_id: str) -> int:
        """The position (in row order) of the span of this id, -1 if none."""
        found = pc.index(self.table.column("span_id"), span_id).as_py()
        return -1 if found < 0 else int(np.flatnonzero(self.order == found)[0])


def _ns(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Timestamps as int64 ns (a missing end: -1, mended by the caller)."""
    return pc.fill_null(column.cast(pa.int64()), -1).to_numpy()


def parents(span_ids: pa.ChunkedArray, parent_ids: pa.ChunkedArray) -> np.ndarray:
    """Index of each span's parent among `span_ids`, NO_PARENT when absent from the trace."""
    found = pc.index_in(parent_ids, value_set=pa.chunked_array(span_ids).combine_chunks())
    return pc.fill_null(found, NO_PARENT).to_numpy().astype(np.int64)


def _by_level(depth: np.ndarray) -> list[np.ndarray]:
    """The indices of the spans at each depth, shallowest first (one sort, then slices)."""
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(int(depth.max(initial=0)) + 2))
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


def _subtree_sizes(parent: np.ndarray, levels: list[np.ndarray]) -> np.ndarray:
    """Spans in each span's subtree (itself included), summed up one level at a time."""
    size = np.ones(len(parent), dtype=np.int64)
    for at in reversed(levels[1:]):
        np.add.at(size, parent[at], size[at])
    return size


def _exclusive_group_cumsum(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per element (already sorted by group), the sum of the values before it in its group."""
    total = np.cumsum(values) - values
    starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
    first_of_group = np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    return total - total[first_of_group]


def _preorder(parent: np.ndarray, depth: np.ndarray, band: np.ndarray, begin: np.ndarray) -> np.ndarray:
    """Each span's position within its band, depth first, siblings (and a band's roots) in begin order."""
    levels = _by_level(depth)
    size = _subtree_sizes(parent, levels)
    position = np.zeros(len(parent), dtype=np.int64)
    for level, at in enumerate(levels):
        group = band if level == 0 else parent
        at = at[np.lexsort((begin[at], group[at]))]
        offset = _exclusive_group_cumsum(group[at], size[at])
        position[at] = offset if level == 0 else position[parent[at]] + 1 + offset
    return position


def critical_path(parent: np.ndarray, begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Whether each span is on the chain the root waited on (see the module's docstring)."""
    on_path = np.zeros(len(parent), dtype=bool)
    roots = np.flatnonzero(parent == NO_PARENT)
    if not len(roots):
        return on_path
    fits = np.flatnonzero((parent != NO_PARENT) & (end <= end[np.maximum(parent, 0)]))
    fits = fits[np.lexsort((end[fits], parent[fits]))]  # the last of each parent's run ends latest
    last = fits[np.r_[parent[fits][1:] != parent[fits][:-1], True]] if len(fits) else fits
    waited_on = np.full(len(parent), NO_PARENT)
    waited_on[parent[last]] = last
    span = roots[np.argmin(begin[roots])]
    while span != NO_PARENT and not on_path[span]:  # as long as the chain: at most the trace's depth
        on_path[span] = True
        span = waited_on[span]
    return on_path


def lay_out(spans: pa.Table) -> Waterfall:
    """The waterfall of `trace_spans` rows (any order)."""
    begin = _ns(spans.column("begin"))
    end = _ns(spans.column("end"))
    end = np.where(end < 0, begin, end)
    process = pc.dictionary_encode(spans.column("process_id")).combine_chunks()
    process_code = process.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    parent = parents(spans.column("span_id"), spans.column("parent_span_id"))
    has_parent = parent != NO_PARENT
    same_process = has_parent & (process_code[np.maximum(parent, 0)] == process_code)
    band_parent = np.where(same_process, parent, NO_PARENT)
    band_depth = chain_depths(band_parent).astype(np.int64)
    band_parent = np.where(band_depth == 0, NO_PARENT, band_parent)  # cycles cut
    # Bands in order of their first begin.
    first_begin = np.full(len(process.dictionary), np.iinfo(np.int64).max)
    np.minimum.at(first_begin, process_code, begin)
    band_order = np.argsort(first_begin, kind="stable")
    band_of_code = np.empty_like(band_order)
    band_of_code[band_order] = np.arange(len(band_order))
    band = band_of_code[process_code]
    band_sizes = np.bincount(band, minlength=len(band_order))
    band_first_row = np.cumsum(band_sizes + 1) - band_sizes  # each band's header comes first
    rows = band_first_row[band] + _preorder(band_parent, band_depth, band, begin)
    handed_off = has_parent & (begin >= end[np.maximum(parent, 0)])
    link = np.where(has_parent & ~same_process, REMOTE, np.where(handed_off, HANDOFF, 0))
    critical = critical_path(parent, begin, end)
    order = np.argsort(rows, kind="stable")
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    exe = spans.column("exe")
    first_rows = pc.index_in(process.dictionary, value_set=spans.column("process_id").combine_chunks())
    exe_of_code = pc.take(exe, first_rows).to_pylist()
    bands = tuple(
        Band(str(process.dictionary[code]), exe_of_code[code] or "", int(band_first_row[b]), int(band_sizes[b]))
        for b, code in enumerate(band_order.tolist())
    )
    return Waterfall(
        table=spans,
        order=order,
        rows=rows[order],
        band_depth=band_depth[order],
        parent=np.where(parent[order] == NO_PARENT, NO_PARENT, new_index[np.maximum(parent[order], 0)]),
        link=link[order],
        critical=critical[order],
        bands=bands,
        begin_ns=int(begin.min()) if len(begin) else 0,
        end_ns=int(end.max()) if len(end) else 0,
    )
