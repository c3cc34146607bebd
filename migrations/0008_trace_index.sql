-- The trace index (issue 23): for each trace, the processes holding its spans and the time range of
-- its spans in each, so that finding a trace reads those processes only, never every process.
-- Maintained at ingestion, one upsert per block that carries spans with trace ids (OTLP traces,
-- SDK cpu blocks with trace facts); times widen, never shrink, so a retried block changes nothing.
CREATE TABLE trace_index (
    trace_id BYTEA NOT NULL,     -- the W3C trace id, 16 bytes
    process_id UUID NOT NULL,
    begin_ns BIGINT NOT NULL,    -- earliest span begin of the trace in the process (ns since the epoch)
    end_ns BIGINT NOT NULL,      -- latest span end (or begin, for SDK spans) of the trace in the process
    PRIMARY KEY (trace_id, process_id)
);
-- Retention deletes by time.
CREATE INDEX trace_index_end ON trace_index (end_ns);
