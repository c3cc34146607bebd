"""Queries: the query runner every door uses, the DataFusion session of one query, its view instances
and table functions.

Modules:

    runner             the query runner: admission, session, query thread, audit, spans, per query
    context            what a session factory knows of a query (`QueryContext`, `Principal`)
    admission          the deny-list check, the lakehouse's session factory and runner
    limits             what a query may ask: SQL size, depth and joins, plan size, time (`QueryLimits`)
    query_thread       each query's DataFusion work on a stoppable thread with a large stack
    heap_sweeps        what ended threads' DataFusion heaps hold, collected after the queries close
    audit              one structured JSON line per query, whichever door
    failures           failures classified: status code, client message without tracebacks or paths
    session            the per-query `SessionContext`: global tables, UDFs, table functions
    session_pool       sessions kept from one query to the next (parquet metadata read once)
    changed_sessions   sessions a query changed (settings, registrations): never reused
    kept_plans         statements' logical plans kept in their session while the catalog is unchanged
    table_function     a table function declared once: its arguments' kinds, its admin flag, its builder
    instances          a view instance as a table: JIT, then its partitions as one dataset
    read_scope         what a query may read by its principal's audiences (another audience's id is unknown)
    fresh_instances    instances' partition sets found up to date, reused while no change is announced
    scan_frames        partition files' parquet scans, built once per file list and reused
    listing_scan       one parquet scan over a list of files (a multi-path listing table)
    catalog_functions  list_partitions, list_view_sets, retire_partitions, materialize_partitions
    partition_admin    retire_partition_by_file/_by_metadata, regenerate_partitions
    deny_list_functions  deny_queries, list_query_denials, remove_query_denial
    process_spans      `process_spans(process_id, span_types)`: a process's thread and async spans
    trace_spans        `trace_spans(trace_id)`: every span of one trace across processes (the trace index)
    block_functions    parse_block(block_id), get_payload(process_id, stream_id, block_id)
    perfetto_trace     `perfetto_trace_chunks(...)`: planned from the views, chunks generated as read
    perfetto_spans     the spans of a Perfetto trace, read in begin order from parquet a slab at a time
    trace_perfetto     `perfetto_trace_of(trace_id)`: one trace across processes, with flows, as Perfetto chunks
    off_runtime        the lake's pool running DataFusion calls from table functions off DataFusion's threads
    rows_frames        rows in memory as DataFusion frames, in one shared context (made off the runtime)
    slow_queries       seed 003's rule: a query's spans kept only when it is slow, its figures as entries
    plan_spans         the executed plan streamed (all partitions at once) and its operators as spans
    loop_joins         cross and nested-loop joins planned with small batches, so that a stop reaches them
    view_ddl           CREATE/DROP MATERIALIZED VIEW (the runner's DDL hook), list_view_set_definitions
    result_buffer      result batches computed ahead of their client, bounded per stream and in total
    functions          micromegas's JSONB, properties, histogram and helper SQL functions
"""
