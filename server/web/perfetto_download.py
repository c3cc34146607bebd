"""`GET /api/perfetto/{process_id}?spans=both&begin=…&end=…`: a process's Perfetto trace, as a download.

The trace is `perfetto_trace_chunks(...)` run in the lakehouse session (the query `spanlake perfetto`
sends over Flight SQL, with the same query range), and each chunk is written to the response as it is
generated, so the browser sees progress from the first chunk and a cancelled download stops the work
(the query runs as every web query: limits, deny list, time limit, query thread, audit).
Errors found before the first chunk (bad id, unknown process, bad range) answer with their status;
one after the first byte can only cut the response short, which the page reports as a failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.runner import Query, ResultBatches
from spanlake.lakehouse.timestamps import format_rfc3339_ns, parse_rfc3339_ns
from spanlake.server.web import html
from spanlake.server.web.auth_cookie import principal_of
from spanlake.server.web.process_pages import load_process
from spanlake.server.web.queries import WebQueries, WebQuery, WebQueryError

SPAN_TYPES = ("thread", "async", "both")
log = logging.getLogger(__name__)


def trace_sql(process_id: str, spans: str, begin_ns: int, end_ns: int) -> str:
    """The `perfetto_trace_chunks` query of a process's trace over [begin, end)."""
    return (
        f"SELECT chunk_id, chunk_data FROM perfetto_trace_chunks('{process_id}', '{spans}',"
        f" TIMESTAMP '{format_rfc3339_ns(begin_ns)}', TIMESTAMP '{format_rfc3339_ns(end_ns)}')"
    )


def _instant(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if not text:
        return default
    try:
        return parse_rfc3339_ns(text)
    except ValueError:
        raise html.PageError(400, "Bad time range", f"'{name}' must be an RFC3339 timestamp, given '{text}'") from None


class PerfettoDownload:
    """The download route; the trace's query runs as every web query (`queries.WebQueries`)."""

    def __init__(self, lake: Lake, queries: WebQueries) -> None:
        """Reads processes from the lake's catalog; runs the trace's query with `queries`."""
        self.lake = lake
        self.queries = queries

    async def trace(self, request: web.Request) -> web.StreamResponse:
        """The trace as an attachment, written chunk by chunk as the query makes them."""
        process = await load_process(self.lake.catalog, request.match_info["process_id"], principal_of(request))
        spans = request.query.get("spans", "both")
        if spans not in SPAN_TYPES:
            raise html.PageError(400, "Bad request", f"'spans' must be thread, async or both, given '{spans}'")
        begin = _instant(request, "begin", process.first_ns)
        end = _instant(request, "end", process.last_ns + 1_000_000)
        if begin >= end:
            raise html.PageError(400, "Bad time range", "the time range is empty: 'begin' must be before 'end'")
        sql = trace_sql(process.process_id, spans, begin, end)
        sent = Sent()
        async with self.queries.open(request, "perfetto", sql, (begin, end)) as query:
            batches = await query.run(_execute, query.query)
            try:
                first = await query.run(batches.next_batch)
                response = web.StreamResponse(
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Disposition": f'attachment; filename="{process.process_id}-{spans}.pftrace"',
                        "Cache-Control": "no-store",
                    }
                )
                await response.prepare(request)
                await _sent_or_cut(request, response, query, first, batches, sent, process.process_id)
                return response
            finally:
                batches.close()  # ends the query: its chunk generator is dropped with it


def _execute(query: Query) -> ResultBatches:
    """The trace's chunks as a stream; a step."""
    return query.execute(query.plan())


async def _sent_or_cut(
    request: web.Request,
    response: web.StreamResponse,
    query: WebQuery,
    first: pa.RecordBatch | None,
    batches: ResultBatches,
    sent: Sent,
    process_id: str,
) -> None:
    """Writes the chunks; a failure after the first byte can only cut the response short."""
    try:
        await _send(response, query, first, batches, sent)
        await response.write_eof()
        log.info("perfetto download of %s: %s", process_id, sent)
    except WebQueryError as err:
        log.warning("perfetto trace of %s cut short after %s: %s", process_id, sent, err.message)
        if request.transport is not None:
            request.transport.close()
    except ConnectionError:  # the client cancelled (or went away): no more chunks are asked for
        log.info("perfetto download of %s cancelled by the client after %s", process_id, sent)
        query.query.audit.incomplete()


@dataclass
class Sent:
    """What a download has written so far (its log line)."""

    chunks: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.chunks} chunks ({self.bytes} bytes)"


async def _send(
    response: web.StreamResponse, query: WebQuery, batch: pa.RecordBatch | None, rest: ResultBatches, sent: Sent
) -> None:
    while batch is not None:
        for chunk in batch.column("chunk_data"):
            data = chunk.as_buffer().to_pybytes()
            await response.write(data)  # raises ConnectionError once the client has gone
            sent.chunks += 1
            sent.bytes += len(data)
        batch = await query.run(rest.next_batch)
