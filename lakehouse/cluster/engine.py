"""The query cluster: long-range scans of global views run by Daft on a Ray cluster.

A query goes there only when it reads global views alone, DataFusion plans it over them, every node
and expression of that plan has an exact Daft equivalent (`translate`), and the catalog's live
partitions it reads weigh at least the threshold. Otherwise — or when the cluster fails before the
first batch — it is declined with the reason, and DataFusion runs it as usual. The file list comes
from the PostgreSQL catalog, never from listing the store (retired files stay there for an hour).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import daft
import pyarrow as pa
from datafusion import SessionContext, SQLOptions

from spanlake.lakehouse.cluster.outcome import ClusterResult, Declined
from spanlake.lakehouse.cluster.translate import scanned_tables, translate_plan
from spanlake.lakehouse.errors import ClusterFailure, ClusterUnsupported
from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.query.instances import GLOBAL, collapsed
from spanlake.lakehouse.query.session import session_config
from spanlake.lakehouse.view_sets import GLOBAL_TABLES, VIEW_SETS
from spanlake.views.view import View

_log = logging.getLogger("spanlake.cluster")
_READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
_RECONNECT_SECONDS = 30.0


class QueryCluster:
    """Runs eligible queries on Daft over Ray (`address`: ray://head:10001 or a head's host:port)."""

    def __init__(self, lake: Lake, address: str, min_bytes: int) -> None:
        self.lake = lake
        self.address = address
        self.min_bytes = min_bytes
        self._lock = threading.Lock()
        self._connected = False
        self._failed_at: float | None = None

    def try_run(self, sql: str, query_range: tuple[int, int] | None, limit: int | None) -> ClusterResult | Declined:
        """The query's result from the cluster, or why it must run on DataFusion."""
        try:
            planned = _probe_session().sql_with_options(sql, _READ_ONLY)
            plan = planned.optimized_logical_plan()
        except Exception as err:  # any planning error: DataFusion will report it properly
            return Declined(f"not plannable over global views alone ({type(err).__name__})")
        views = scanned_tables(plan)
        if not views or not views <= set(GLOBAL_TABLES):
            return Declined("reads no global view" if not views else f"reads {sorted(views - set(GLOBAL_TABLES))}")
        files = {name: self._live_files(VIEW_SETS[name], query_range) for name in views}
        scanned = sum(size for listed in files.values() for _, size in listed)
        if scanned < self.min_bytes:
            return Declined(f"{scanned} bytes of partitions, below SPANLAKE_CLUSTER_MIN_BYTES ({self.min_bytes})")
        if not self._connect():
            return Declined(f"query cluster {self.address} unreachable")
        try:
            frame = translate_plan(plan, lambda name: self._scan(VIEW_SETS[name], files[name], query_range)).frame
        except ClusterUnsupported as err:
            return Declined(f"not expressible on the cluster: {err}")
        if limit is not None:
            frame = frame.limit(limit)
        return self._started(frame, planned.schema(), scanned)

    def _live_files(self, view: View, query_range: tuple[int, int] | None) -> list[tuple[str, int]]:
        partitions = self.lake.loop.run(
            self.lake.catalog.partitions_for_query(view.name, GLOBAL, view.schema_hash, query_range)
        )
        return [(p.file_path, p.file_size) for p in partitions]

    def _scan(
        self, view: View, files: list[tuple[str, int]], query_range: tuple[int, int] | None
    ) -> tuple[daft.DataFrame, pa.Schema]:
        """The view's rows for the query, as DataFusion's session sees them (merged, range-filtered)."""
        keys = [key for key, _ in files]
        merged = collapsed(view, self.lake, keys) if keys else None
        if merged is not None or not keys:
            table = merged if merged is not None else view.schema.empty_table()
            frame = daft.from_arrow(_undictionary(table))
        else:
            frame = daft.read_parquet([self.lake.store.url(key) for key in keys], io_config=_io_config(self.lake))
        if query_range is not None:
            earliest, latest = view.time_columns
            begin, end = query_range
            as_ns = daft.DataType.int64()
            frame = frame.where((daft.col(earliest).cast(as_ns) <= end) & (daft.col(latest).cast(as_ns) >= begin))
        return frame, view.schema

    def _connect(self) -> bool:
        with self._lock:
            if self._connected:
                return True
            if self._failed_at is not None and time.monotonic() - self._failed_at < _RECONNECT_SECONDS:
                return False
            try:
                daft.set_runner_ray(address=self.address, noop_if_initialized=True)
            except (ConnectionError, RuntimeError, ValueError) as err:
                self._failed_at = time.monotonic()
                _log.warning("query cluster %s unreachable: %s", self.address, err)
                return False
            self._connected = True
            return True

    def _started(self, frame: daft.DataFrame, schema: pa.Schema, scanned: int) -> ClusterResult | Declined:
        """Starts the query; a failure before the first batch declines it (DataFusion runs it)."""
        batches = _conformed(frame, schema)
        try:
            first = next(batches, None)
        except Exception as err:  # nothing was sent yet: DataFusion answers instead
            return Declined(f"the cluster failed before results: {type(err).__name__}: {str(err)[:300]}")

        def stream() -> Iterator[pa.RecordBatch]:
            if first is not None:
                yield first
            try:
                yield from batches
            except Exception as err:  # results were sent: the client must retry
                raise ClusterFailure(f"the query cluster failed mid-query: {str(err)[:300]}") from None

        return ClusterResult(schema, stream(), scanned)


def _conformed(frame: daft.DataFrame, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Daft's batches with DataFusion's column names and types (counts as int64, dictionaries, …)."""
    for batch in frame.to_arrow_iter():
        if batch.num_columns != len(schema):
            raise ClusterUnsupported(f"{batch.num_columns} columns where DataFusion plans {len(schema)}")
        columns = [column.cast(field.type) for column, field in zip(batch.columns, schema, strict=True)]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _undictionary(table: pa.Table) -> pa.Table:
    """Dictionary columns as their values: Daft reads them as plain strings from parquet too."""
    fields = [
        pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type, f.nullable)
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _probe_session() -> SessionContext:
    """A session whose only tables are the global views, empty: DataFusion plans, nothing is read."""
    ctx = SessionContext(session_config())
    for name in GLOBAL_TABLES:
        schema = VIEW_SETS[name].schema
        ctx.register_record_batches(name, [[pa.RecordBatch.from_pylist([], schema=schema)]])
    return ctx


def _io_config(lake: Lake) -> daft.io.IOConfig | None:
    """Daft's S3 settings from the lake's own (endpoint setting, AWS_* credentials)."""
    if lake.store.scheme != "s3":
        return None
    endpoint = lake.store.s3_endpoint
    return daft.io.IOConfig(
        s3=daft.io.S3Config(
            endpoint_url=endpoint,
            key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
            access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            use_ssl=not (endpoint or "").startswith("http://"),
        )
    )
