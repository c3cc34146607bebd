"""How fast the web UI opens a process's async span tree, through its real HTTP route.

A process with N async spans (2N begin/end events in cpu blocks, built like the Rust producer's; a
quarter of them top-level) is loaded, the web UI is served in process, and its span-tree route is timed
end to end with an HTTP client: the first open (which materializes the partitions just in time), then
the warm top-level level and one span's children, medians of R runs, side by side with plain DataFusion
answering the same level in one plain SQL query on the same parquet files (`register_parquet`), and the
ratio.

    python benchmarks/web_span_tree.py [--spans N] [--blocks B] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from datafusion import SessionContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PostgresServer, free_port
from materialize import load_process

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.session import session_config
from spanlake.lakehouse.settings import Settings
from spanlake.server.ingestion import start_ingestion
from spanlake.server.web.api import TREE_LIMIT


def get_json(url: str) -> tuple[float, dict]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = json.loads(response.read())
    return time.perf_counter() - start, body


def one_query_sql(events: str, parent: int | None, limit: int) -> str:
    """The level as one plain SQL query (the page, its ends, its children counts and the total):
    what a person would ask DataFusion, the baseline."""
    level = "depth = 0" if parent is None else f"parent_span_id = {parent}"
    return f"""WITH page AS (
  SELECT span_id, parent_span_id, depth, time AS begin, name, target, filename, line FROM {events}
  WHERE event_type = 'begin' AND {level} ORDER BY time, span_id LIMIT {limit}),
ends AS (SELECT span_id, time AS end FROM {events}
  WHERE event_type = 'end' AND span_id IN (SELECT span_id FROM page)),
kids AS (SELECT parent_span_id, count(*) AS children FROM {events}
  WHERE event_type = 'begin' AND parent_span_id IN (SELECT span_id FROM page) GROUP BY parent_span_id)
SELECT p.span_id AS id, p.parent_span_id AS parent, p.depth, p.begin, e.end, p.name, p.target, p.filename, p.line,
  coalesce(k.children, 0) AS children,
  (SELECT count(*) FROM {events} WHERE event_type = 'begin' AND {level}) AS total
FROM page p LEFT JOIN ends e ON p.span_id = e.span_id LEFT JOIN kids k ON p.span_id = k.parent_span_id
ORDER BY p.begin, p.span_id"""


def plain_datafusion(files: list[str], parent: int | None) -> float:
    """The same SQL on plain DataFusion over the same files (no catalog, no query range)."""
    ctx = SessionContext(session_config())
    start = time.perf_counter()
    for i, path in enumerate(files):
        ctx.register_parquet(f"p{i}", path)
    union = " UNION ALL ".join(f"SELECT * FROM p{i}" for i in range(len(files)))
    ctx.register_view("events", ctx.sql(union))
    ctx.sql(one_query_sql("events", parent, TREE_LIMIT)).to_arrow_table()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    postgres = PostgresServer()  # kept referenced: its embedded server lives as long as the object
    with tempfile.TemporaryDirectory(prefix="spanlake-bench-") as tmp:
        lake = Lake.open(Settings(database_url=postgres.new_database(), object_store_uri=Path(tmp).as_uri()))
        port = free_port()
        runner = lake.loop.run(start_ingestion(lake, None, "127.0.0.1", port, ingestion=False, web_ui=True))
        try:
            process_id = load_process(lake, args.spans * 2, args.blocks)
            base = f"http://127.0.0.1:{port}/api/process/{process_id}/async-spans"
            first_s, top = get_json(base)
            print(
                f"first open of {args.spans:,} spans ({top['total']:,} top-level), JIT materialization included:"
                f" {first_s:.2f} s"
            )
            parent = next(int(s["id"]) for s in top["spans"] if s["children"])
            files = [
                f"{tmp}/{r['file_path']}"
                for r in lake.loop.run(
                    lake.pool.fetch("SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'async_events'")
                )
            ]
            for label, url, level_parent in (
                ("top level", base, None),
                ("children", f"{base}?parent={parent}", parent),
            ):
                web = statistics.median(get_json(url)[0] for _ in range(args.runs))
                plain = statistics.median(plain_datafusion(files, level_parent) for _ in range(args.runs))
                print(
                    f"{label}: web route {web * 1000:.0f} ms, plain DataFusion {plain * 1000:.0f} ms,"
                    f" ratio {web / plain:.2f} (median of {args.runs}, {len(files)} partition files)"
                )
        finally:
            lake.loop.run(runner.cleanup())
            lake.close()


if __name__ == "__main__":
    main()
