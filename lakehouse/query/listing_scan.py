"""One parquet scan over a list of files: a DataFusion listing table of several paths.

DataFusion reads a list of files as one table (one scan, its files split over its partitions, one
listing and planning for all), but datafusion-python only opens a listing table of one path. A union of
one scan per file costs a physical planning per file: 50 hourly partitions planned as a union take
7-16 ms before a row is read, where one scan of the same files takes 2 ms (benchmarks/row_groups.py).

DataFusion's logical plan protobuf holds a listing table scan with its paths (`ListingTableScanNode`,
field 2, repeated), and DataFusion rebuilds a multi-path listing table from it. So the scan of the
first file is serialized, its paths replaced by every file's, and the plan read back. Only the
protobuf wire format is handled here (varints and length-delimited fields): the rest of the node —
schema, format options, table name — goes through untouched.

A partition file that lies alone in its own directory (`partitions.own_directory`) is named by that
directory (`scan_url`): DataFusion asks the store about each named file at every planning (a HEAD, on
one of tokio's blocking threads for a local store: ~25 us each, 1.0-1.5 ms for 50 partitions) but
lists a named directory once per session, in its runtime's list-files cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
from datafusion import DataFrame, SessionContext
from datafusion.plan import LogicalPlan

from spanlake.lakehouse.object_store import ObjectStore
from spanlake.lakehouse.partitions import own_directory
from spanlake.lakehouse.protobuf_wire import LENGTH_DELIMITED, length_delimited, read_varint

LISTING_SCAN = 1  # LogicalPlanNode.listing_scan
PATHS = 2  # ListingTableScanNode.paths
VARINT, FIXED64, FIXED32 = 0, 1, 5


def listing_scan(ctx: SessionContext, urls: Sequence[str], schema: pa.Schema) -> DataFrame:
    """One scan of these parquet files (at least one) as `schema`, in `ctx`."""
    single = ctx.read_parquet(urls[0], schema=schema)
    node = _only_field(single.logical_plan().to_bytes(), LISTING_SCAN)
    kept = b"".join(raw for number, raw in _fields(node) if number != PATHS)
    paths = b"".join(length_delimited(PATHS, url.encode()) for url in urls)
    plan = length_delimited(LISTING_SCAN, kept + paths)
    return ctx.create_dataframe_from_logical_plan(LogicalPlan.from_bytes(ctx, plan))


def scan_url(store: ObjectStore, key: str) -> str:
    """The URL a scan names a partition file by: its own directory's (listed once per session), else its own."""
    directory = own_directory(key)
    return store.url(key) if directory is None else f"{store.url(directory)}/"


def _only_field(message: bytes, number: int) -> bytes:
    """The payload of a message made of one length-delimited field of this number."""
    fields = list(_fields(message))
    if len(fields) != 1 or fields[0][0] != number:
        raise ValueError(f"not a plan of one listing table scan: fields {[n for n, _ in fields]}")
    raw = fields[0][1]
    _, start = read_varint(raw, 0)  # the key
    length, start = read_varint(raw, start)
    return raw[start : start + length]


def _fields(message: bytes) -> Iterator[tuple[int, bytes]]:
    """(field number, the field's raw bytes, key included) of each field of a message."""
    position = 0
    while position < len(message):
        start = position
        key, position = read_varint(message, position)
        wire_type = key & 7
        if wire_type == VARINT:
            _, position = read_varint(message, position)
        elif wire_type == LENGTH_DELIMITED:
            length, position = read_varint(message, position)
            position += length
        elif wire_type in (FIXED64, FIXED32):
            position += 8 if wire_type == FIXED64 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
        yield key >> 3, message[start:position]
