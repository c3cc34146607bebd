"""The waterfall's layout (server/web/trace_layout.py) on hand-made traces: rows depth first per process
band, the critical path's rule, links, open spans and corrupt parents (a cycle)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from spanlake.server.web.trace_layout import HANDOFF, REMOTE, critical_path, lay_out, parents

UTC_NS = pa.timestamp("ns", tz="UTC")


def trace(rows: list[tuple[str, str | None, str, int, int | None]]) -> pa.Table:
    """(span id, parent id, process, begin, end) rows as trace_spans' columns."""
    ids, parent_ids, processes, begins, ends = zip(*rows, strict=True)
    return pa.table(
        {
            "span_id": list(ids),
            "parent_span_id": list(parent_ids),
            "process_id": list(processes),
            "exe": [f"exe-{p}" for p in processes],
            "name": list(ids),
            "begin": pa.array(begins, pa.int64()).cast(UTC_NS),
            "end": pa.array(ends, pa.int64()).cast(UTC_NS),
        }
    )


def test_rows_are_depth_first_per_band_with_links_and_the_critical_path() -> None:
    waterfall = lay_out(
        trace(
            [
                ("a", None, "p", 0, 100),
                ("b", "a", "p", 10, 60),
                ("c", "a", "p", 20, 90),  # begins after b, ends last: the root waited on it
                ("b1", "b", "p", 30, 40),  # begins after c, but is b's child: listed under b
                ("r", "c", "q", 25, 80),  # c's child in another process: a root of q's band
                ("h", "c", "p", 95, 99),  # after c ended: a hand-off
                ("late", "a", "p", 50, 120),  # ends after its parent: never on the critical path
            ]
        )
    )
    names = waterfall.spans.column("span_id").to_pylist()
    assert list(zip(names, waterfall.rows.tolist(), waterfall.band_depth.tolist(), strict=True)) == [
        ("a", 1, 0),
        ("b", 2, 1),
        ("b1", 3, 2),
        ("c", 4, 1),
        ("h", 5, 2),
        ("late", 6, 1),
        ("r", 8, 0),
    ]
    assert [(b.process_id, b.exe, b.first_row, b.spans) for b in waterfall.bands] == [
        ("p", "exe-p", 1, 6),
        ("q", "exe-q", 8, 1),
    ]
    links = dict(zip(names, waterfall.link.tolist(), strict=True))
    assert {name: code for name, code in links.items() if code} == {"h": HANDOFF, "r": REMOTE}
    assert [names[i] if i >= 0 else None for i in waterfall.parent.tolist()] == [None, "a", "b", "a", "c", "a", "c"]
    assert [n for n, on in zip(names, waterfall.critical.tolist(), strict=True) if on] == ["a", "c", "r"]
    assert (waterfall.begin_ns, waterfall.end_ns, waterfall.row_count) == (0, 120, 9)


def test_open_spans_and_a_cycle_neither_fail_nor_loop() -> None:
    waterfall = lay_out(
        trace(
            [
                ("x", "y", "p", 5, 9),  # x and y are each other's parent: bad data
                ("y", "x", "p", 6, 8),
                ("root", None, "p", 0, None),  # never ended
                ("kid", "root", "p", 1, 3),
            ]
        )
    )
    names = waterfall.spans.column("span_id").to_pylist()
    assert sorted(names) == ["kid", "root", "x", "y"] and sorted(waterfall.rows.tolist()) == [1, 2, 3, 4]
    assert names[0] == "root" and waterfall.band_depth[names.index("kid")] == 1
    assert waterfall.critical.tolist()[0]  # the earliest root: the open span


def test_the_critical_path_of_a_deep_trace_is_computed_by_levels() -> None:
    n = 100_000
    index = np.arange(n)
    parent = np.where(index < 1000, index - 1, 999 + (index - 1000) // 2)
    begin = index * 10
    end = np.where(index < 1000, 10**9 - index, begin + 5)
    on_path = critical_path(parent, begin, end)  # speed: benchmarks/trace_page.py
    # The chain, then the one of the chain's last span's two children ending later: its own children
    # end after it does, so the root did not wait on them.
    assert np.flatnonzero(on_path).tolist() == [*range(1000), 1001]
    ids = pa.array([f"{i:016x}" for i in range(n)])
    assert (parents(ids, pa.array([f"{p:016x}" if p >= 0 else None for p in parent])) == parent).all()


def test_a_page_and_a_span_lookup_read_the_rows_in_row_order() -> None:
    """A page takes its rows from the trace's table as it came (the whole table is never reordered for
    a page); a span id is found at its row position."""
    waterfall = lay_out(
        trace(
            [
                ("late", None, "p", 50, 60),
                ("root", None, "p", 0, 100),
                ("kid", "root", "p", 1, 3),
                ("q1", "kid", "q", 2, 3),
            ]
        )
    )
    assert waterfall.page(0, 4).column("span_id").to_pylist() == ["root", "kid", "late", "q1"]
    assert waterfall.page(1, 3).equals(waterfall.spans.slice(1, 2))
    assert [waterfall.index_of(s) for s in ("root", "kid", "late", "q1", "absent")] == [0, 1, 2, 3, -1]
