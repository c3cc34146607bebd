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
_U64 = (1 << 64) - 1


def encode_records(records: np.ndarray) -> str:
    """A part's text: the records (int64 fields) column by column, each as its first value, the smallest
    delta between consecutive values (`base`, int64) and the deltas less it in the fewest bytes that hold
    them all (0, 1, 2, 4 or 8): ids counting up or times growing cost one or a few bytes a record."""
    if not len(records):
        return ""
    columns = [_column(records[name]) for name in records.dtype.names]  # a few columns, each in numpy
    header = ",".join(text for text, _ in columns)
    return f"{len(records)},{header}:{base64.b64encode(b''.join(body for _, body in columns)).decode()}"


def _column(values: np.ndarray) -> tuple[str, bytes]:
    """One column's `first,base,width` and its deltas less the base, `width` bytes each. In place after
    the one difference: a block's column is ~240 KB, and every new array of that size costs page faults."""
    deltas = np.subtract(values[1:].view(np.uint64), values[:-1].view(np.uint64))  # modulo 2**64: any order
    base = int(deltas.view(np.int64).min()) if len(deltas) else 0
    np.subtract(deltas, np.uint64(base & _U64), out=deltas)
    width = int(_WIDTHS[np.searchsorted(_LIMITS, deltas.max(initial=0), side="right")])
    body = deltas.astype(f"<u{width}").tobytes() if width else b""
    return f"{int(values[0])},{base},{width}", body


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
