"""The PostgreSQL catalog: every statement spanlake runs against its database (schema migrations
aside, `lakehouse/migrate.py`), one module per area, all reached through `Catalog`'s typed methods.
Every value travels as a query parameter.

Modules:

    ingestion         processes, streams and blocks as the ingestion API inserts them
    api_keys          the API keys stored in the database (hashes only): legacy, ingestion, analytics
    audience_grants   who may read or mint into an audience, and groups with their members
    processes         the process, stream and block lookups of the web pages and table functions
    source_blocks     the blocks a partition is built from, and their counts
    partitions        the partition rows: live partitions, retirements, the one partition swap
    deny_list         the query deny list's rules and hits
    retention         deleting what is past the retention period
    view_definitions  the stored definitions of SQL-defined views (`CREATE MATERIALIZED VIEW`)
    trace_index       the trace index: the processes holding a trace's spans, and when
    screens           the web UI's saved screens (notebooks) and their folders
"""

from __future__ import annotations

import asyncpg

from spanlake.lakehouse.catalog.api_keys import ApiKeys
from spanlake.lakehouse.catalog.audience_grants import AudienceGrantRows
from spanlake.lakehouse.catalog.deny_list import DenyListRows
from spanlake.lakehouse.catalog.ingestion import IngestionRows
from spanlake.lakehouse.catalog.partitions import PartitionRows
from spanlake.lakehouse.catalog.processes import ProcessReads
from spanlake.lakehouse.catalog.retention import RetentionRows
from spanlake.lakehouse.catalog.screens import ScreenRows
from spanlake.lakehouse.catalog.source_blocks import SourceBlockReads
from spanlake.lakehouse.catalog.trace_index import TraceIndexRows
from spanlake.lakehouse.catalog.view_definitions import ViewDefinitionRows
from spanlake.lakehouse.timestamps import datetime_to_ns, ns_to_datetime

__all__ = ["Catalog", "datetime_to_ns", "ns_to_datetime"]


class Catalog(
    IngestionRows,
    ApiKeys,
    AudienceGrantRows,
    ProcessReads,
    SourceBlockReads,
    PartitionRows,
    DenyListRows,
    RetentionRows,
    ViewDefinitionRows,
    TraceIndexRows,
    ScreenRows,
):
    """The catalog of one lake, over its connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
