"""Storing an ingested block: the payload first, then the row.

Both writes are idempotent on the client's ids (the payload is created only if absent, the row
inserted only if new), so a retried write stores things once, and no row ever points at a missing
payload. Used by the ingestion API (native and OTLP) and by self-tracing's sink.
"""

from __future__ import annotations

import asyncio

from spanlake.lakehouse.lake import Lake
from spanlake.lakehouse.records import BlockRecord, blob_key

INLINE_WRITE_LIMIT = 64 * 1024


async def store_block(lake: Lake, record: BlockRecord, payload: bytes) -> None:
    """Stores `payload` at the block's blob key (create-only), then inserts the block's row."""
    key = blob_key(record.process_id, record.stream_id, record.block_id)
    if lake.store.scheme == "file" and len(payload) <= INLINE_WRITE_LIMIT:
        # A small local write costs less than the hop to a worker thread (benchmarks/ingest.py).
        lake.store.put_if_absent(key, payload)
    else:
        await asyncio.to_thread(lake.store.put_if_absent, key, payload)
    await lake.catalog.insert_block(record)
