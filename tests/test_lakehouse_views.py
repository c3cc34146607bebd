"""Views materialized just in time from the genuine Rust telemetry, checked against its ground truth."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import PostgresServer
from lakehouse_support import (
    EXPECTED,
    PROCESS_ID,
    LocalLake,
    cpu_streams,
    latest_frequency,
    local_lake,
    stream_events,
    ticks_to_ns,
)


@pytest.fixture(scope="module")
def loaded(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLake]:
    with local_lake(postgres, tmp_path_factory.mktemp("lake")) as lake:
        lake.upload()
        lake.maintain()
        yield lake


ASYNC_TYPES = {
    "BeginAsyncSpanEvent": "begin",
    "EndAsyncSpanEvent": "end",
    "BeginAsyncNamedSpanEvent": "begin",
    "EndAsyncNamedSpanEvent": "end",
}


def test_async_events_match_ground_truth(loaded: LocalLake) -> None:
    expected = collections.Counter()
    for stream in cpu_streams():
        for event in stream_events(stream):
            if event["type"] in ASYNC_TYPES:
                name = event.get("name") or event["span_desc"]["name"]
                expected[
                    (
                        stream["stream_id"],
                        ASYNC_TYPES[event["type"]],
                        event["span_id"],
                        event["parent_span_id"],
                        event["depth"],
                        name,
                        ticks_to_ns(event["time"], latest_frequency()),
                    )
                ] += 1
    table = loaded.sql(
        f"SELECT stream_id, event_type, span_id, parent_span_id, depth, name,"
        f" CAST(time AS BIGINT) AS t FROM view_instance('async_events', '{PROCESS_ID}')"
    )
    actual = collections.Counter(tuple(row.values()) for row in table.to_pylist())
    assert sum(actual.values()) == 2 * 562
    assert actual == expected
    names = set(table.column("name").to_pylist())
    assert {"process_user_1", "requête_42"} <= names or any(n.startswith("process_user_") for n in names)


def test_async_spans_pair_and_nest(loaded: LocalLake) -> None:
    rows = loaded.sql(f"""
        SELECT b.span_id, b.depth, b.parent_span_id, CAST(e.time AS BIGINT) - CAST(b.time AS BIGINT) AS duration
        FROM (SELECT * FROM view_instance('async_events', '{PROCESS_ID}') WHERE event_type = 'begin') b
        JOIN (SELECT * FROM view_instance('async_events', '{PROCESS_ID}') WHERE event_type = 'end') e
        ON b.span_id = e.span_id""").to_pylist()
    assert len(rows) == 562
    assert all(r["duration"] >= 0 for r in rows)
    by_id = {r["span_id"]: r for r in rows}
    for row in rows:
        if row["parent_span_id"] in by_id:
            assert row["depth"] == by_id[row["parent_span_id"]]["depth"] + 1
        else:
            assert row["depth"] == 0 or row["parent_span_id"] != 0


def reference_thread_spans(stream: dict) -> list[tuple[str, int, int, int]]:
    """(name, depth, begin, end) of every closed span, from a plain stack over the ground truth."""
    spans, stack = [], []
    for event in stream_events(stream):
        kind = event["type"]
        if kind in ("BeginThreadSpanEvent", "BeginThreadNamedSpanEvent"):
            name = event.get("name") or event.get("thread_span_desc", {}).get("name")
            stack.append((name, ticks_to_ns(event["time"], latest_frequency())))
        elif kind in ("EndThreadSpanEvent", "EndThreadNamedSpanEvent") and stack:
            name, begin = stack.pop()
            spans.append((name, len(stack) + 1, begin, ticks_to_ns(event["time"], latest_frequency())))
    return sorted(spans)


@pytest.mark.parametrize("stream", cpu_streams(), ids=lambda s: s["properties"].get("thread-name", "?"))
def test_thread_spans_match_a_reference_call_tree(loaded: LocalLake, stream: dict) -> None:
    table = loaded.sql(
        f'SELECT id, parent, depth, name, CAST(begin AS BIGINT) AS b, CAST("end" AS BIGINT) AS e,'
        f" duration FROM view_instance('thread_spans', '{stream['stream_id']}')"
    )
    rows = table.to_pylist()
    expected = reference_thread_spans(stream)
    roots = [r for r in rows if r["id"] == -1]
    assert len(roots) == 1 and roots[0]["depth"] == 0
    assert roots[0]["name"].startswith(stream["properties"]["thread-name"])
    assert sorted((r["name"], r["depth"], r["b"], r["e"]) for r in rows if r["id"] != -1) == expected
    assert all(r["duration"] == r["e"] - r["b"] for r in rows)
    assert [r["b"] for r in rows] == sorted(r["b"] for r in rows)
    ids = {r["id"]: r for r in rows}
    for row in rows:
        if row["id"] != -1:
            parent = ids[row["parent"]]
            assert parent["depth"] == row["depth"] - 1
            assert parent["b"] <= row["b"] and row["e"] <= parent["e"]


LEVELS = {"fatal": 1, "error": 2, "warn": 3, "info": 4, "debug": 5, "trace": 6}


def expected_log_row(event: dict) -> tuple[int, str, str]:
    """(level, target, msg); a TaggedLogString's `level` / `target` properties override its descriptor's."""
    properties = dict(event.get("properties", {}).get("properties", []))
    level = LEVELS.get(properties.get("level", ""), event["level"])
    return level, properties.get("target", event["target"]), event["msg"]


def test_log_entries_match_ground_truth(loaded: LocalLake) -> None:
    stream = next(s for s in EXPECTED["streams"] if "log" in s["tags"])
    expected = sorted(expected_log_row(e) for e in stream_events(stream))
    table = loaded.sql(
        f"SELECT level, target, msg, property_get(process_properties, 'scenario') AS scenario"
        f" FROM view_instance('log_entries', '{PROCESS_ID}')"
    )
    assert sorted((r["level"], r["target"], r["msg"]) for r in table.to_pylist()) == expected
    assert set(table.column("scenario").to_pylist()) == {"generator-like-v1"}
    global_count = loaded.sql("SELECT count(*) AS n FROM log_entries").column("n")[0].as_py()
    assert global_count == len(expected)


def expected_measure_row(event: dict) -> tuple[str, str, float | None]:
    """(name, unit, value); tagged properties override name/unit; integer ticks become seconds (value
    then depends on the block's frequency estimate and is left out)."""
    properties = dict((event.get("properties") or {}).get("properties", []))
    name = properties.get("name", event["desc"]["name"])
    unit = properties.get("unit", event["desc"]["unit"])
    if "Integer" in event["type"] and unit == "ticks":
        return name, "seconds", None
    return name, unit, float(event["value"])


def test_measures_match_ground_truth(loaded: LocalLake) -> None:
    stream = next(s for s in EXPECTED["streams"] if "metrics" in s["tags"])
    expected = collections.Counter(expected_measure_row(e) for e in stream_events(stream))
    rows = loaded.sql(f"SELECT name, unit, value FROM view_instance('measures', '{PROCESS_ID}')").to_pylist()
    actual = collections.Counter(
        (
            r["name"],
            r["unit"],
            None if r["unit"] == "seconds" and (r["name"], "seconds", None) in expected else r["value"],
        )
        for r in rows
    )
    assert sum(actual.values()) == 412
    assert actual == expected
    assert {r["unit"] for r in rows if r["name"] == "Frame Time"} == {"seconds", "ticks"}


def test_global_metadata_views(loaded: LocalLake) -> None:
    info = EXPECTED["process"]["process_info"]
    processes = loaded.sql(
        "SELECT process_id, exe, computer, tsc_frequency, last_block_end_ticks,"
        " property_get(properties, 'fixture') AS fixture FROM processes"
    ).to_pylist()
    assert processes == [
        {
            "process_id": PROCESS_ID,
            "exe": info["exe"],
            "computer": info["computer"],
            "tsc_frequency": 0,
            "last_block_end_ticks": EXPECTED["process"]["latest_timing"]["end_ticks"],
            "fixture": "micromegas-rust-genuine",
        }
    ]
    streams = loaded.sql("SELECT stream_id, tags FROM streams ORDER BY stream_id").to_pylist()
    assert [(s["stream_id"], s["tags"]) for s in streams] == sorted(
        (s["stream_id"], s["tags"]) for s in EXPECTED["streams"]
    )
    blocks = loaded.sql('SELECT block_id, nb_objects, "processes.exe" AS exe FROM blocks').to_pylist()
    assert len(blocks) == 34 and sum(b["nb_objects"] for b in blocks) == 3203
    assert {b["exe"] for b in blocks} == {info["exe"]}


def test_second_query_reuses_partitions(loaded: LocalLake, tmp_path: Path) -> None:
    query = f"SELECT count(*) AS n FROM view_instance('async_events', '{PROCESS_ID}')"
    loaded.sql(query)
    before = loaded.catalog("SELECT file_path, updated FROM lakehouse_partitions ORDER BY file_path")
    assert loaded.sql(query).column("n")[0].as_py() == 1124
    assert loaded.catalog("SELECT file_path, updated FROM lakehouse_partitions ORDER BY file_path") == before


def test_list_functions(loaded: LocalLake) -> None:
    loaded.sql(f"SELECT count(*) FROM view_instance('measures', '{PROCESS_ID}')")
    partitions = loaded.sql(
        "SELECT view_set_name, view_instance_id, num_rows, file_path FROM list_partitions()"
        " WHERE view_set_name = 'measures'"
    ).to_pylist()
    assert {(p["view_instance_id"], p["num_rows"]) for p in partitions} >= {(PROCESS_ID, 412)}
    assert all(p["file_path"].startswith(f"views/measures/{p['view_instance_id']}/") for p in partitions)
    view_sets = {r["view_set_name"]: r for r in loaded.sql("SELECT * FROM list_view_sets()").to_pylist()}
    assert view_sets["async_events"]["has_view_maker"] and not view_sets["async_events"]["global_instance_available"]
    assert view_sets["log_entries"]["current_schema_hash"] == b"\x06"
