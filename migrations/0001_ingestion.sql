-- Ingestion tables, column for column as micromegas has them (data-lake schema v7),
-- so the same rows and queries work. No foreign keys: a block may arrive before its stream.
CREATE TYPE micromegas_property AS (key TEXT, value TEXT);

CREATE TABLE processes (
    process_id UUID NOT NULL,
    exe VARCHAR(255),
    username VARCHAR(255),
    realname VARCHAR(255),
    computer VARCHAR(255),
    distro VARCHAR(255),
    cpu_brand VARCHAR(255),
    tsc_frequency BIGINT,
    start_time TIMESTAMPTZ,
    start_ticks BIGINT,
    insert_time TIMESTAMPTZ,
    parent_process_id UUID,
    properties micromegas_property[]
);
CREATE UNIQUE INDEX processes_process_id_unique ON processes (process_id);
CREATE INDEX parent_process_id ON processes (parent_process_id);
CREATE INDEX process_start_time ON processes (start_time);
CREATE INDEX process_insert_time ON processes (insert_time);

CREATE TABLE streams (
    stream_id UUID NOT NULL,
    process_id UUID,
    dependencies_metadata BYTEA,
    objects_metadata BYTEA,
    tags TEXT[],
    properties micromegas_property[],
    insert_time TIMESTAMPTZ,
    format TEXT NOT NULL DEFAULT 'micromegas-transit'
);
CREATE UNIQUE INDEX streams_stream_id_unique ON streams (stream_id);
CREATE INDEX stream_process_id ON streams (process_id);
CREATE INDEX stream_insert_time ON streams (insert_time);

CREATE TABLE blocks (
    block_id UUID NOT NULL,
    stream_id UUID,
    process_id UUID,
    begin_time TIMESTAMPTZ,
    begin_ticks BIGINT,
    end_time TIMESTAMPTZ,
    end_ticks BIGINT,
    nb_objects INT,
    object_offset BIGINT,
    payload_size BIGINT,
    insert_time TIMESTAMPTZ
);
CREATE UNIQUE INDEX blocks_block_id_unique ON blocks (block_id);
CREATE INDEX block_stream_id ON blocks (stream_id);
CREATE INDEX block_begin_time ON blocks (begin_time);
CREATE INDEX block_end_time ON blocks (end_time);
CREATE INDEX block_insert_time ON blocks (insert_time);
CREATE INDEX block_process_id ON blocks (process_id);
