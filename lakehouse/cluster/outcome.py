"""What the query cluster answers for a query: its result, or why DataFusion must run it instead.

Kept apart from the engine so the Flight SQL server can name these without importing Daft.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Declined:
    """The cluster does not run this query; DataFusion does. `reason` goes to the audit record."""

    reason: str


@dataclass(frozen=True)
class ClusterResult:
    """A query running on the cluster: DataFusion's result schema and the batches, already cast to it."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    scanned_bytes: int
