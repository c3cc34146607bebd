"""Queries: the DataFusion session of one query, its view instances and table functions.

Modules:

    session            the per-query `SessionContext`: global tables, UDFs, table functions
    instances          a view instance as a table: JIT, then its partitions as one dataset
    catalog_functions  list_partitions, list_view_sets, retire_partitions, materialize_partitions
    perfetto_trace     `perfetto_trace_chunks(...)`: planned from the views, chunks generated as read
    perfetto_spans     the spans of a Perfetto trace, read in begin order from parquet a slab at a time
    off_runtime        running DataFusion calls from table functions off DataFusion's own threads
"""
