-- The partition catalog (micromegas lakehouse schema v9). micromegas forbids overlapping partitions
-- of one instance with a btree_gist exclusion constraint; stock PostgreSQL builds such as the
-- embedded one have no contrib extensions, so spanlake's partition writer enforces the rule in its
-- write transaction under a per-instance advisory lock instead.
CREATE TABLE lakehouse_partitions (
    view_set_name VARCHAR(255) NOT NULL,
    view_instance_id VARCHAR(255) NOT NULL,
    begin_insert_time TIMESTAMPTZ NOT NULL,
    end_insert_time TIMESTAMPTZ NOT NULL,
    min_event_time TIMESTAMPTZ,
    max_event_time TIMESTAMPTZ,
    updated TIMESTAMPTZ NOT NULL,
    file_path VARCHAR(2047),
    file_size BIGINT NOT NULL,
    file_schema_hash BYTEA NOT NULL,
    source_data_hash BYTEA NOT NULL,
    num_rows BIGINT NOT NULL,
    partition_format_version INTEGER NOT NULL DEFAULT 2,
    sort_order TEXT[],
    max_sort_key_time TIMESTAMPTZ
);
CREATE INDEX lh_part_begin_insert ON lakehouse_partitions (view_set_name, view_instance_id, begin_insert_time);
CREATE INDEX lh_part_end_insert ON lakehouse_partitions (view_set_name, view_instance_id, end_insert_time);
CREATE INDEX lh_part_min_time ON lakehouse_partitions (view_set_name, view_instance_id, min_event_time);
CREATE INDEX lh_part_max_time ON lakehouse_partitions (view_set_name, view_instance_id, max_event_time);
CREATE INDEX lakehouse_partitions_file_path ON lakehouse_partitions (file_path);

-- Files of replaced partitions, deleted by maintenance once queries that may read them are done.
CREATE TABLE temporary_files (
    file_path VARCHAR(2047) NOT NULL,
    file_size BIGINT NOT NULL,
    expiration TIMESTAMPTZ NOT NULL
);
CREATE INDEX temporary_files_expiration ON temporary_files (expiration);
