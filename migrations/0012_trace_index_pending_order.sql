-- The trace index's catch-up takes first tries before retries, the newest first
-- (lakehouse/catalog/trace_index.py `due_trace_blocks`): an index in that order keeps the pick a short
-- index scan however long an upgrade's backlog is.
CREATE INDEX trace_index_pending_first_tries ON trace_index_pending (attempts, queued_at DESC);
