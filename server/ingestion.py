"""The HTTP ingestion API, compatible with the micromegas sink and with OTLP/HTTP exporters.

Every block is stored by `lakehouse.ingest.BlockRowGroups`: the payload first and the row second, both
idempotent on the client's ids, so a retried request stores things once and no row ever points at a
missing payload; a request is answered once its row's group is committed. Process and stream rows are
idempotent inserts too. The native routes' plain requests are read and answered by a lean HTTP path
(`server.native_http`), everything else on the port by aiohttp. With ingestion workers
(`server.ingestion_workers`), worker processes serve these routes on the HTTP port and this process
serves the web UI's connections they hand over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from spanlake import tracing
from spanlake.lakehouse.block_traces import TransitBlockTraces
from spanlake.lakehouse.errors import STORAGE_FAILURES, IngestRejected, cut
from spanlake.lakehouse.ingest import REFUSED_VALUES, BlockContexts, BlockRowGroups
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock
from spanlake.lakehouse.transit.decode import InflationLimit
from spanlake.server import firehose, otlp, webhook, wire
from spanlake.server.auth import INGESTION, Authenticator, AuthError, LookupNeeded
from spanlake.server.http_body import BodyTimeout, answer_and_close, read_body, read_body_buffer
from spanlake.server.ingestion_workers import IngestionWorkers, forwarded_client
from spanlake.server.native_http import Answer, NativeHttpServer, NativeRoutes, Route, StagedBody, Staging
from spanlake.server.site_guard import install_site_guard
from spanlake.server.write_audience import check_process_audience, scoped_otlp_block, stamped, write_audience

if TYPE_CHECKING:  # the web UI's imports (DataFusion's runner among them) only where it is served
    from spanlake.lakehouse.query.context import Principal
    from spanlake.lakehouse.query.runner import QueryRunner

log = logging.getLogger(__name__)

NATIVE_BODY_LIMIT = 100 * 1024 * 1024
OTLP_BODY_LIMIT = 20 * 1024 * 1024
_READY_CACHE_SECONDS = 1.0
_READY_TIMEOUT_SECONDS = 2.0
# Values PostgreSQL refuses (lakehouse.ingest.REFUSED_VALUES) are the client's error (400). Anything else
# from storage (lakehouse.errors.STORAGE_FAILURES) is an outage (unreachable, restarting, broken schema):
# 503, retry later.
ANSWERED_FAILURES = (IngestRejected, *REFUSED_VALUES, *STORAGE_FAILURES)
# Inline parsing (on the loop) up to this body size; larger bodies are parsed on a worker thread.
_INLINE_PARSE_LIMIT = 64 * 1024
# A staged payload's frames are checked on the loop up to this many inflated bytes, the rest on a worker
# thread: the hop cost more than a 4 MiB check (8 senders of 4 MiB blocks, alternated: 3.5 against 3.9 ms
# of server CPU a block), while a frame inflating far more (to 64 MiB) stalls the loop only this long.
_INLINE_INFLATE_BYTES = 8 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class IngestionService:
    """The HTTP routes of the ingestion API (and the web UI when enabled) over one lake."""

    def __init__(
        self,
        lake: Lake,
        authenticator: Authenticator | None,
        ingestion: bool = True,
        web_ui: bool = False,
        runner: QueryRunner | None = None,
    ) -> None:
        self.lake = lake
        self.runner = runner
        self.authenticator = authenticator
        self.ingestion = ingestion
        self.web_ui = web_ui
        self._ready_at = 0.0
        self._ready_error: str | None = None
        self.block_contexts = BlockContexts(lake)
        self.block_traces = TransitBlockTraces(lake)
        self.block_rows = BlockRowGroups(lake)

    def app(self) -> web.Application:
        """The aiohttp application: health, readiness, the enabled ingestion routes and the web UI."""
        app = web.Application(
            client_max_size=NATIVE_BODY_LIMIT, middlewares=[self._errors_middleware, self._auth_middleware]
        )
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        if self.ingestion:
            app.router.add_post("/ingestion/insert_process", self.insert_process)
            app.router.add_post("/ingestion/insert_stream", self.insert_stream)
            app.router.add_post("/ingestion/insert_block", self.insert_block)
            app.router.add_post("/ingestion/otlp/v1/{signal:logs|metrics|traces}", self.otlp_export)
            app.router.add_post("/ingestion/webhook", webhook.route(self.store_otlp_blocks))
            firehose.add_routes(app, self.store_otlp_blocks, self.authenticator)
        if self.web_ui:
            from spanlake.lakehouse.query.admission import lakehouse_runner
            from spanlake.server.web.routes import mount_web_ui

            runner = self.runner if self.runner is not None else lakehouse_runner(self.lake)
            mount_web_ui(app, self.lake, self.authenticator, runner)
        return app

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            self.authenticator is not None
            and request.path.startswith("/ingestion/")
            and request.path not in firehose.PATHS  # Firehose sends its own access key header
        ):
            header = request.headers.get("Authorization")
            try:
                request["principal"] = await ingestion_principal(self.authenticator, header, request.remote)
            except AuthError as err:
                return web.Response(status=401, text=f"unauthorized: {err}", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BodyTimeout as err:
            log.info("closed %s: %s", request.path, err)
            return await answer_and_close(request, web.Response(status=408, text=str(err)))
        except ANSWERED_FAILURES as err:
            status, text, headers = failure_answer(request.path, err)
            return web.Response(status=status, text=text, headers=headers)

    async def health(self, request: web.Request) -> web.Response:
        """200 while the process serves."""
        return web.Response(text="ok")

    async def ready(self, request: web.Request) -> web.Response:
        """200 when the catalog database and the object store answer (checked at most once a second), else 503."""
        now = time.monotonic()
        if now - self._ready_at > _READY_CACHE_SECONDS:
            self._ready_error = await self._check_ready()
            self._ready_at = now
        if self._ready_error:
            return web.Response(status=503, text=f"not ready: {self._ready_error}")
        return web.Response(text="ready")

    async def _check_ready(self) -> str | None:
        try:
            await asyncio.wait_for(self.lake.catalog.ping(), _READY_TIMEOUT_SECONDS)
        except Exception as err:
            return f"database: {err.__class__.__name__}"
        try:
            await asyncio.wait_for(asyncio.to_thread(self.lake.store.ping), _READY_TIMEOUT_SECONDS)
        except Exception as err:
            return f"object store: {err.__class__.__name__}"
        return None

    async def _body(self, request: web.Request) -> bytes:
        """The request body, within SPANLAKE_REQUEST_BODY_TIMEOUT_S (`http_body.read_body`)."""
        return await read_body(request, self.lake.settings.request_body_timeout_s)

    def native_routes(self) -> dict[str, Route]:
        """The native routes' work by path, for the lean HTTP path (`server.native_http`)."""
        return {
            "/ingestion/insert_process": self.store_process,
            "/ingestion/insert_stream": self.store_stream,
            "/ingestion/insert_block": self.store_block,
        }

    def cached_principal(self, authorization: str | None, peer: str | None) -> Principal | None:
        """The writer of a native request (None without auth) from what the authenticator has cached;
        `LookupNeeded` when the key tables must be asked (`looked_up_principal`), `AuthError` when refused."""
        if self.authenticator is None:
            return None
        return self.authenticator.authenticate(authorization, INGESTION, peer, database=False)

    async def looked_up_principal(self, authorization: str | None, peer: str | None) -> Principal | None:
        """The writer of a native request, asking the key tables off the loop thread; `AuthError` when refused."""
        assert self.authenticator is not None  # else `cached_principal` answers
        return await asyncio.to_thread(self.authenticator.authenticate, authorization, INGESTION, peer)

    async def insert_process(self, request: web.Request) -> web.Response:
        """The micromegas sink's process row (CBOR), inserted idempotently."""
        await self.store_process(await self._body(request), request.get("principal"))
        return web.Response()

    async def insert_stream(self, request: web.Request) -> web.Response:
        """The micromegas sink's stream row (CBOR), inserted idempotently."""
        await self.store_stream(await self._body(request), request.get("principal"))
        return web.Response()

    async def insert_block(self, request: web.Request) -> web.Response:
        """The micromegas sink's block (CBOR): checked against its process and stream, then stored."""
        body = await read_body_buffer(request, self.lake.settings.request_body_timeout_s)
        await self.store_block(body, request.get("principal"))
        return web.Response()

    @tracing.span_fn(name="ingestion.insert_process")
    async def store_process(self, body: bytes | bytearray, principal: Principal | None) -> None:
        """A process row (CBOR body), inserted idempotently in the writer's audience."""
        record = wire.parse_process(body)
        await self.lake.catalog.insert_process(stamped(record, write_audience(principal)))

    @tracing.span_fn(name="ingestion.insert_stream")
    async def store_stream(self, body: bytes | bytearray, principal: Principal | None) -> None:
        """A stream row (CBOR body) of a process of the writer's audience, inserted idempotently."""
        record = wire.parse_stream(body)
        await check_process_audience(self.lake, record.process_id, write_audience(principal))
        await self.lake.catalog.insert_stream(record)

    @tracing.span_fn(name="ingestion.insert_block")
    async def store_block(self, body: bytes | bytearray | StagedBody, principal: Principal | None) -> None:
        """A block (CBOR body): checked against its process and stream, then its payload and row stored
        (a staged payload is checked in its file and linked under its key)."""
        settings = self.lake.settings
        inflation = InflationLimit(settings.max_inflated_block_bytes, settings.max_inflation_ratio)
        if isinstance(body, StagedBody):
            staged = body.staged.view()
            record, payload, frames = wire.parse_block_parts(body.prefix, staged, body.tail, inflation)
            if not wire.run_check(frames, _INLINE_INFLATE_BYTES):
                await asyncio.to_thread(wire.run_check, frames)
        elif len(body) <= _INLINE_PARSE_LIMIT:
            record, payload = wire.parse_block(body, inflation)
        else:  # inflating the buffers to check them takes a while: off the loop thread
            record, payload = await asyncio.to_thread(wire.parse_block, body, inflation)
        # The staged file is the payload unless it had to be encoded again (not as the sink writes it).
        stored = body.staged if isinstance(body, StagedBody) and payload is staged else payload
        process = await self.block_contexts.check(record, write_audience(principal))
        traces = await self.block_traces.of(record, payload, process)
        await self.block_rows.store(self.lake, record, stored, traces)
        self.lake.decode_ahead.stored(record)  # a live process's block, decoded for its next query

    @tracing.span_fn(name="ingestion.otlp_export")
    async def otlp_export(self, request: web.Request) -> web.Response:
        """OTLP/HTTP export (logs, metrics or traces; protobuf or JSON, gzip or not): stored as OTLP blocks."""
        signal = request.match_info["signal"]
        content_type = request.headers.get("Content-Type")
        if request.content_length is not None and request.content_length > OTLP_BODY_LIMIT:
            return self._otlp_error(413, f"body over {OTLP_BODY_LIMIT} bytes", content_type)
        body = await self._body(request)
        if len(body) > OTLP_BODY_LIMIT:
            return self._otlp_error(413, f"body over {OTLP_BODY_LIMIT} bytes", content_type)
        try:
            encoding = request.headers.get("Content-Encoding")
            ratio = self.lake.settings.max_inflation_ratio
            blocks = await asyncio.to_thread(otlp.blocks_from_request, signal, body, content_type, encoding, ratio)
        except otlp.OtlpRequestError as err:
            log.info("rejected OTLP %s: %s", signal, err.message)
            return self._otlp_error(err.status, err.message, content_type)
        await self.store_otlp_blocks(request, blocks)
        data, response_type = otlp.response_body(signal, content_type)
        return web.Response(body=data, content_type=response_type)

    async def store_otlp_blocks(self, request: web.Request, blocks: list[OtlpResourceBlock]) -> None:
        """Stores each block with its process and stream rows (all idempotent), in the request's audience."""
        audience = write_audience(request.get("principal"))
        for block in (scoped_otlp_block(b, audience) for b in blocks):
            await self.lake.catalog.insert_process(block.process)
            await self.lake.catalog.insert_stream(block.stream)
            await self.block_rows.store(self.lake, block.block, block.payload, block.traces)

    @staticmethod
    def _otlp_error(status: int, message: str, content_type: str | None) -> web.Response:
        data, response_type = otlp.error_body(status, message, content_type)
        return web.Response(status=status, body=data, content_type=response_type)


def failure_answer(path: str, err: Exception) -> Answer:
    """The status, text and headers answering (and logging) a request of `path` that failed with one of
    ANSWERED_FAILURES: the client's error (400) or a storage outage (503, retry later)."""
    if isinstance(err, IngestRejected):
        log.info("rejected %s: %s", path, err)
        return 400, f"bad request: {err}", {}
    if isinstance(err, REFUSED_VALUES):
        log.info("rejected %s: the database refuses a value: %s", path, cut(str(err)))
        return 400, f"bad request: the database refuses a value: {cut(str(err))}", {}
    log.warning("storage failure on %s: %s", path, cut(str(err)))
    return 503, "storage unavailable, retry later", {"Retry-After": "5"}


def native_failure_answer(path: str, err: Exception) -> Answer | None:
    """`failure_answer` for the lean path's routes; None for any other error (a 500)."""
    return failure_answer(path, err) if isinstance(err, ANSWERED_FAILURES) else None


async def ingestion_principal(authenticator: Authenticator, header: str | None, peer: str | None) -> Principal | None:
    """The ingestion principal of `header`: from the cache on the loop (a sender's steady key costs no
    thread hop), else asking the key tables off the loop thread (they are read through the loop)."""
    try:
        return authenticator.authenticate(header, INGESTION, peer, database=False)
    except LookupNeeded:
        return await asyncio.to_thread(authenticator.authenticate, header, INGESTION, peer)


async def make_app_runner(service: IngestionService, outer: Middleware | None = None) -> web.AppRunner:
    """The service's application behind its site guard (and the `outer` middleware before it), set up in
    a runner with no site yet."""
    # auto_decompress=False: OTLP bodies are gunzipped (with their size limit) by server.otlp itself.
    # keepalive_timeout: aiohttp closes a connection that has not sent a whole request head within it
    # (the clock starts at connect and after each response; bytes dribbling in do not reset it), so
    # slow headers are bounded by the body's time limit too.
    app = service.app()
    install_site_guard(app, service.lake.settings)  # first middleware: Host, Origin and CSRF checks, security headers
    if outer is not None:
        app.middlewares.insert(0, outer)
    runner = web.AppRunner(
        app,
        access_log=None,
        auto_decompress=False,
        keepalive_timeout=service.lake.settings.request_body_timeout_s,
    )
    await runner.setup()
    return runner


async def start_ingestion(
    lake: Lake,
    authenticator: Authenticator | None,
    host: str,
    port: int,
    ingestion: bool = True,
    web_ui: bool = False,
    runner: QueryRunner | None = None,
    workers: int = 0,
) -> web.AppRunner | IngestionWorkers | NativeHttpServer:
    """Starts the HTTP server (ingestion API, web UI or both) on the running loop; returns what stops it
    with `cleanup()`. The ingestion API is served by `workers` worker processes (none: by this process),
    the web UI by this process. The web UI's queries run with the query `runner` (the process's; one of
    its own when None)."""
    service = IngestionService(lake, authenticator, ingestion, web_ui, runner)
    if ingestion and workers:
        web_runner = await make_app_runner(service, forwarded_client) if web_ui else None
        pool = IngestionWorkers(lake, workers, (host, port), web_runner)
        await pool.start()
        log.debug("ingestion API listening on http://%s:%d (%d worker processes)", host, port, workers)
        return pool
    app_runner = await make_app_runner(service)
    if not ingestion:
        await web.TCPSite(app_runner, host, port).start()  # no SO_REUSEPORT: a port in use is an error
        log.debug("HTTP server listening on http://%s:%d", host, port)
        return app_runner
    server = NativeHttpServer(app_runner, native_routes(service, app_runner))
    await server.start(host, port)
    log.debug("HTTP server listening on http://%s:%d (native routes on the lean path)", host, port)
    return server


def native_routes(service: IngestionService, runner: web.AppRunner) -> NativeRoutes:
    """The lean path's routes of `service`, with `runner`'s aiohttp server for everything else."""
    assert runner.server is not None  # set up
    return NativeRoutes(
        service.native_routes(),
        service.cached_principal,
        service.looked_up_principal,
        native_failure_answer,
        runner.server,
        NATIVE_BODY_LIMIT,
        service.lake.settings.request_body_timeout_s,
        payload_staging(service.lake),
    )


def payload_staging(lake: Lake) -> Staging | None:
    """`insert_block`'s payloads staged in files of a local store (None for S3, whose client takes bytes,
    and where the system has no splice(2))."""
    if lake.store.scheme != "file" or not hasattr(os, "splice"):
        return None
    return Staging("/ingestion/insert_block", wire.locate_payload, lake.store.stage)
