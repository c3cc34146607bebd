"""Where and when spanlake stores data: settings, catalog, object store, decoding, partitions,
materialization and queries.

Modules:

    settings           every setting: an environment variable with a matching flag
    lake               `Lake`: what a process opens once (database, object store, loop) and its services
    loop               the process's one asyncio loop, on a dedicated thread
    catalog            the PostgreSQL catalog: ingestion rows, API keys
    catalog_changes    changes announced by writers (NOTIFY), followed by each querying process; being the only writer
    embedded_postgres  the private PostgreSQL of the embedded default (pgserver), restarted when it stops
    migrate            applying the numbered SQL files of `migrations/`
    object_store       block payloads and parquet partitions, on a local directory or S3
    records            the ingestion tables' rows, and the blob key of a block payload
    ingest             storing an ingested block: the payload first, then the row
    block_traces       the traces of an ingested block (OTLP spans, SDK trace facts), for the trace index
    trace_catch_up     indexing the traces of blocks stored before they could be read (the daemon's step)
    protobuf_wire      protobuf varints and length-delimited fields, written or walked by hand
    timestamps         RFC3339 timestamps with nanosecond precision
    errors             the lakehouse's exceptions
    source_blocks      the blocks a view instance is built from (blocks ⋈ streams ⋈ processes)
    view_sets          the views spanlake materializes: the `VIEW` of each file of `views/`
    view_rows          feeding a view its blocks: payloads read, decoded or parsed, bad blocks skipped
    partitions         partition files and catalog rows: writing, replacing and retiring them
    jit                just-in-time materialization of a process or stream instance
    jit_layout         how an instance's blocks are cut into partitions, and which small ones merge
    settle_queue       the lake's background merges of small partitions, finished when it closes
    live_refresh       live instances materialized in the background as their process's blocks arrive
    decode_ahead       a live process's blocks decoded as they arrive, for its next late query
    batch_update       scheduled materialization of the global views, bucket by bucket
    sql_views          SQL-defined views: `CREATE MATERIALIZED VIEW` parsed, stored definitions per lake
    sql_view_rows      a SQL-defined view's count, extract and merge queries, run for a bucket
    retention          deleting expired telemetry, partitions and retired files
    orphan_files       the daily sweep of objects no catalog row names (left by interrupted writes)
    bulk_ingest        replicated processes, streams, blocks and payloads rows (Flight SQL ingest)
    query_denials      the query deny list: rules in PostgreSQL, a snapshot per lake, their matching
    transit            micromegas transit blocks: type metadata and the decoder (a package)
    otlp               OTLP data: identities, bounds, the stored envelope, Rust text, decoding (a package)
    query              the DataFusion session of a query, view instances, table functions (a package)
    cluster            long-range scans of global views on Daft over Ray (a package, the `cluster` extra)
"""
