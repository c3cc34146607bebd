"""`GET /api/perfetto/{process_id}?spans=both&begin=…&end=…`: a process's Perfetto trace, as a download.

The trace is `perfetto_trace_chunks(...)` run in the lakehouse session (the query `spanlake perfetto`
sends over Flight SQL, with the same query range), and each chunk is written to the response as it is
generated, so the browser sees progress from the first chunk and a cancelled download stops the work.
Errors found before the first chunk (bad id, unknown process, bad range) answer with their status;
one after the first byte can only cut the response short, which the page reports as a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.timestamps import format_rfc3339_ns, parse_rfc3339_ns
from spanlake.server.web import html, queries
from spanlake.server.web.auth_cookie import is_admin
from spanlake.server.web.process_pages import load_process

SPAN_TYPES = ("thread", "async", "both")
log = logging.getLogger(__name__)


def trace_sql(process_id: str, spans: str, begin_ns: int, end_ns: int) -> str:
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
    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    async def trace(self, request: web.Request) -> web.StreamResponse:
        process = await load_process(self.lake.catalog, request.match_info["process_id"])
        spans = request.query.get("spans", "both")
        if spans not in SPAN_TYPES:
            raise html.PageError(400, "Bad request", f"'spans' must be thread, async or both, given '{spans}'")
        begin = _instant(request, "begin", process.first_ns)
        end = _instant(request, "end", process.last_ns + 1_000_000)
        if begin >= end:
            raise html.PageError(400, "Bad time range", "the time range is empty: 'begin' must be before 'end'")
        sql = trace_sql(process.process_id, spans, begin, end)
        _, batches = await asyncio.to_thread(queries.stream, self.lake, sql, (begin, end), is_admin(request))
        sent = Sent()
        try:
            first = await asyncio.to_thread(next, batches, None)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Disposition": f'attachment; filename="{process.process_id}-{spans}.pftrace"',
                    "Cache-Control": "no-store",
                }
            )
            await response.prepare(request)
            try:
                await _send(response, first, batches, sent)
                await response.write_eof()
                log.info("perfetto download of %s: %s", process.process_id, sent)
            except queries.WebQueryError as err:  # after the first byte: cut the response short
                log.warning("perfetto trace of %s cut short after %s: %s", process.process_id, sent, err.message)
                if request.transport is not None:
                    request.transport.close()
            except ConnectionError:  # the client cancelled (or went away): no more chunks are asked for
                log.info("perfetto download of %s cancelled by the client after %s", process.process_id, sent)
            return response
        finally:
            batches.close()  # ends the query: its chunk generator is dropped with it


@dataclass
class Sent:
    """What a download has written so far (its log line)."""

    chunks: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.chunks} chunks ({self.bytes} bytes)"


async def _send(
    response: web.StreamResponse, batch: pa.RecordBatch | None, rest: Iterator[pa.RecordBatch], sent: Sent
) -> None:
    while batch is not None:
        for chunk in batch.column("chunk_data"):
            data = chunk.as_buffer().to_pybytes()
            await response.write(data)  # raises ConnectionError once the client has gone
            sent.chunks += 1
            sent.bytes += len(data)
        batch = await asyncio.to_thread(next, rest, None)
