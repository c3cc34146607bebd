"""Trace facts in a cpu block, in a form micromegas's decoder skips.

A block's spans carry their trace in one extra `StaticString` dependency with the reserved id
`FACTS_ID`, which no object references: micromegas's `read_dependencies` stores it in its id map like
any string and nothing ever looks it up; the stream metadata and the objects are exactly the Rust SDK's.

The text is `MAGIC;<trace high>;<roots>;<spans>;<links>;[<threads>;]<facts JSON>`: the process's trace id
prefix (decimal int64), then each part's records (ids are the 64 bits read as signed, as in `async_events`)
column by column, delta-coded (`encode_records`: `<count>,` then per column `<first>,<base>,<width>`, `:`,
then base64 of every column's deltas less its base, `width` bytes each, little-endian; an empty part is
empty), so the trace index reads a block's traces and times from its dependencies alone. A
`StaticString` must be UTF-8 for micromegas's `read_dependencies` (`str::from_utf8`), hence base64; span
ids count up and times grow, so a root costs 0 bytes of id and 2 or 4 of time instead of 16 (the
`spanlake.trace_facts/2` layout, base64 of whole records, which `views.span_traces` still reads):

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

Encoding is vectorized (numpy over all columns at once, base64); the reader is `views.span_traces` (which may
not import the SDK: the constants are restated there, and a test checks that both agree).
"""

from __future__ import annotations

import base64

import numpy as np

FACTS_ID = (1 << 64) - 2
MAGIC = "spanlake.trace_facts/3"
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


_WIDTHS = np.array([0, 1, 2, 4, 8])
_LIMITS = np.array([1, 1 << 8, 1 << 16, 1 << 32], np.uint64)  # the delta ranges the widths below 8 hold


def encode_records(records: np.ndarray) -> str:
    """A part's text: the records (int64 fields) column by column, each as its first value, the smallest
    delta between consecutive values (`base`, int64) and the deltas less it in the fewest bytes that hold
    them all (0, 1, 2, 4 or 8): ids counting up or times growing cost one or a few bytes a record."""
    count = len(records)
    if not count:
        return ""
    columns = np.ascontiguousarray(records).view(np.uint64).reshape(count, -1)  # every field 8 bytes, packed
    deltas = columns[1:] - columns[:-1]  # modulo 2**64: lossless whatever the order
    bases = deltas.view(np.int64).min(axis=0) if count > 1 else np.zeros(columns.shape[1], np.int64)
    offsets = deltas - bases.view(np.uint64)
    widths = _WIDTHS[np.searchsorted(_LIMITS, offsets.max(axis=0, initial=0), side="right")].tolist()
    body = b"".join(offsets[:, i].astype(f"<u{width}").tobytes() for i, width in enumerate(widths) if width)
    firsts = columns[0].view(np.int64).tolist()
    header = ",".join(f"{c[0]},{c[1]},{c[2]}" for c in zip(firsts, bases.tolist(), widths, strict=True))
    return f"{count},{header}:{base64.b64encode(body).decode()}"


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
    # A part never holds '[': a reader tells the threads part from the facts JSON by its first character.
    thread_part = f"{encode_records(threads)};" if threads is not None and len(threads) else ""
    parts = ";".join(map(encode_records, (roots, spans, links)))
    return f"{MAGIC};{trace_high};{parts};{thread_part}[{facts_json}]"
