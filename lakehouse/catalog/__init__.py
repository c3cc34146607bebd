"""The PostgreSQL catalog: every statement spanlake runs against its database (schema migrations
aside, `lakehouse/migrate.py`), one module per area, all reached through `Catalog`'s typed methods.
Every value travels as a query parameter.

Modules:

    ingestion         ingestion's rows: processes, streams and blocks, one by one or in bulk
    api_keys          API keys: stored by SHA-256, revoked by date
    processes         reads of single processes, streams and blocks
    source_blocks     reads of the blocks views are built from, by instance and insert range
    partitions        partition rows: what is live, and the transactions that change it
    deny_list         the query deny list's rules and their last hits
    retention         deletes of expired telemetry rows and of temporary files past their grace
    view_definitions  the stored definitions of SQL-defined views
"""

from __future__ import annotations

import asyncpg

from spanlake.lakehouse.catalog.api_keys import ApiKeys
from spanlake.lakehouse.catalog.deny_list import DenyListRows
from spanlake.lakehouse.catalog.ingestion import IngestionRows
from spanlake.lakehouse.catalog.partitions import PartitionRows
from spanlake.lakehouse.catalog.processes import ProcessReads
from spanlake.lakehouse.catalog.retention import RetentionRows
from spanlake.lakehouse.catalog.source_blocks import SourceBlockReads
from spanlake.lakehouse.catalog.view_definitions import ViewDefinitionRows
from spanlake.lakehouse.timestamps import datetime_to_ns, ns_to_datetime

__all__ = ["Catalog", "datetime_to_ns", "ns_to_datetime"]


class Catalog(
    IngestionRows,
    ApiKeys,
    ProcessReads,
    SourceBlockReads,
    PartitionRows,
    DenyListRows,
    RetentionRows,
    ViewDefinitionRows,
):
    """The catalog of one lake, over its connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
