"""Trace facts in a cpu block, in a form micromegas's decoder skips.

A block's spans carry their trace in one extra `StaticString` dependency with the reserved id
`FACTS_ID`, which no object references: micromegas's `read_dependencies` stores it in its id map like
any string and nothing ever looks it up; the stream metadata and the objects are exactly the Rust SDK's.

The text is `MAGIC;<trace high>;<roots>;<spans>;<links>;[<threads>;]<facts JSON>`: the process's trace id prefix
(decimal int64), then base64 of little-endian records (ids are the 64 bits read as signed, as in
`async_events`), so the trace index reads a block's traces and times from its dependencies alone:

* roots, one `ROOT_RECORD` per span begun in the block that starts a trace of this process: its id
  (its trace id is the prefix followed by it) and begin ticks;
* spans, one `SPAN_RECORD` per other async span begun in the block: its id, its trace id's two
  halves, its begin ticks;
* links, one `LINK_RECORD` per span begun with a hand-off or remote parent: its id, the parent's id;
* threads (left out, with its `;`, when the block has none: blocks without thread spans in a trace read
  as before), one `THREAD_RECORD` per run of consecutive thread span begins that ran under the same
  async span of a trace: the object index of the run's first begin in the block, the number of begins
  in the run, the async span's id (the parent of the run's outermost spans), its trace id's halves, the
  first and last begin ticks;
* a JSON list of `[span_id, {"kind", "attributes", "links"}]` for the spans that ended in the block
  with facts.

Encoding is vectorized (numpy, base64); the reader is `views.span_traces` (which may not import the
SDK: the constants are restated there, and a test checks that both agree).
"""

from __future__ import annotations

import base64

import numpy as np

FACTS_ID = (1 << 64) - 2
MAGIC = "spanlake.trace_facts/2"
ROOT_RECORD = np.dtype([("span_id", "<i8"), ("time", "<i8")])
SPAN_RECORD = np.dtype([("span_id", "<i8"), ("trace_high", "<i8"), ("trace_low", "<i8"), ("time", "<i8")])
LINK_RECORD = np.dtype([("span_id", "<i8"), ("link", "<i8")])
THREAD_RECORD = np.dtype(
    [
        ("first", "<i8"),
        ("count", "<i8"),
        ("parent", "<i8"),
        ("trace_high", "<i8"),
        ("trace_low", "<i8"),
        ("first_time", "<i8"),
        ("last_time", "<i8"),
    ]
)


def _b64(records: np.ndarray) -> str:
    return base64.b64encode(records.tobytes()).decode()


def encode(
    trace_high: int,
    roots: np.ndarray,
    spans: np.ndarray,
    links: np.ndarray,
    facts_span_ids: np.ndarray,
    facts: list[str],
    threads: np.ndarray | None = None,
) -> str:
    """The dependency text from the record arrays and the facts JSON of the spans `facts_span_ids`."""
    facts_json = ",".join(f"[{span_id},{text}]" for span_id, text in zip(facts_span_ids.tolist(), facts, strict=True))
    # Base64 never holds '[': a reader tells the threads part from the facts JSON by its first character.
    thread_part = f"{_b64(threads)};" if threads is not None and len(threads) else ""
    return f"{MAGIC};{trace_high};{_b64(roots)};{_b64(spans)};{_b64(links)};{thread_part}[{facts_json}]"
