"""`perfetto_trace_of('<trace id>')`: one trace across processes as a Perfetto trace, in
`perfetto_trace_chunks`' columns (`chunk_id`, `chunk_data`): one Perfetto process per spanlake
process, flow arrows for parents in another process and hand-offs (views/perfetto/trace.py), in chunks
of SPANLAKE_PERFETTO_CHUNK_KIB as `perfetto_trace_chunks`'.

The spans are `trace_spans`' (the trace index names the processes to read); an unknown trace has no
chunks. The trace is written whole in memory: its size is the trace's, not the lake's.
"""

from __future__ import annotations

import pyarrow as pa

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.perfetto_trace import chunking
from spanlake.lakehouse.query.read_scope import ReadScope
from spanlake.lakehouse.query.trace_spans import trace_spans
from spanlake.views.perfetto.trace import trace_chunks

SCHEMA = pa.schema(
    [pa.field("chunk_id", pa.int32(), nullable=False), pa.field("chunk_data", pa.binary(), nullable=False)]
)


def perfetto_trace_of(lake: Lake, trace_id: str, read_scope: ReadScope | None = None) -> pa.Table:
    """The chunks of the trace's Perfetto trace (none for an unknown trace); QueryError for a bad id.
    With a read scope, only its readable processes' spans (`trace_spans`)."""
    spans = trace_spans(lake, trace_id, read_scope)
    chunk_threshold, spans_per_flush = chunking(lake.settings.perfetto_chunk_kib * 1024)
    chunks = list(trace_chunks(spans, chunk_threshold, spans_per_flush)) if spans.num_rows else []
    return pa.table([pa.array(range(len(chunks)), pa.int32()), pa.array(chunks, pa.binary())], schema=SCHEMA)
