"""Trace facts in a cpu block, in a form micromegas's decoder skips.

A block's spans carry their trace in one extra `StaticString` dependency with the reserved id
`FACTS_ID`, which no object references: micromegas's `read_dependencies` stores it in its id map like
any string and nothing ever looks it up; the stream metadata and the objects are exactly the Rust SDK's.

The text is `MAGIC;<base64 records>;<JSON>`: one `RECORD` per async span begun in the block (span id,
trace id halves, hand-off or remote parent span id or 0, begin ticks; all int64, the ids' 64 bits read
as signed, as in `async_events`) and a JSON list of `[span_id, {"kind", "attributes", "links"}]` for
the spans that ended in the block with facts. Encoding is vectorized (numpy, base64); the reader is
`views.span_traces` (which may not import the SDK: the constants are restated there, and a test checks
that both agree).
"""

from __future__ import annotations

import base64

import numpy as np

FACTS_ID = (1 << 64) - 2
MAGIC = "spanlake.trace_facts/1"
RECORD = np.dtype([("span_id", "<i8"), ("trace_high", "<i8"), ("trace_low", "<i8"), ("link", "<i8"), ("time", "<i8")])


def encode(records: np.ndarray, facts_span_ids: np.ndarray, facts: list[str]) -> str:
    """The dependency text: `records` (dtype `RECORD`) and the facts JSON of the spans `facts_span_ids`."""
    facts_json = ",".join(f"[{span_id},{text}]" for span_id, text in zip(facts_span_ids.tolist(), facts, strict=True))
    return f"{MAGIC};{base64.b64encode(records.astype(RECORD, copy=False).tobytes()).decode()};[{facts_json}]"
