-- Blocks whose traces are not in the trace index yet (issue 23): a native block stored before its
-- stream or process row (its trace facts cannot be read then), a block of bulk ingestion (replicated
-- tables arrive one by one), and every block a lake stored before the index could index it. The
-- maintenance daemon indexes them once their stream, process and payload are stored
-- (lakehouse/trace_catch_up.py), then deletes their row; a block not ready yet is tried again at
-- retry_at. Retention deletes the rows queued before its cutoff (their blocks are gone too).
CREATE TABLE trace_index_pending (
    block_id UUID PRIMARY KEY,
    queued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    retry_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts INT NOT NULL DEFAULT 0
);
CREATE INDEX trace_index_pending_due ON trace_index_pending (retry_at);
CREATE INDEX trace_index_pending_queued ON trace_index_pending (queued_at);

-- The upgrade: the blocks stored so far that may hold spans with trace ids (cpu and OTLP traces
-- streams, and blocks whose stream is not stored yet) are queued once. Indexing is idempotent, so
-- blocks indexed at ingestion since migration 0008 change nothing.
INSERT INTO trace_index_pending (block_id, queued_at)
SELECT b.block_id, coalesce(b.insert_time, now())
FROM blocks b LEFT JOIN streams s ON s.stream_id = b.stream_id
WHERE s.stream_id IS NULL OR 'cpu' = ANY (s.tags) OR s.format = 'otlp/v1/traces';
