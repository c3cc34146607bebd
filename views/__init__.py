"""What each view is: its Arrow schema, its instance kind, and how a block becomes its rows (pure:
arrays in, arrays out). Each view file exports one `VIEW` (the contract in `view.py`).

Modules:

    view          the view contract: `View`, and the block inputs its rows functions take
    async_events  async span begin/end events (transit `cpu` blocks, OTLP spans with their depths)
    thread_spans  a thread stream's call tree, one row per span
    call_tree_merge  thread call trees of consecutive partitions joined from their rows and footer notes
    span_traces   the SDK's spans of traces with their trace facts (trace id, hand-off parent, kind, links)
    log_entries   log events (transit `log` blocks, OTLP logs)
    measures      metric events (transit `metrics` blocks, OTLP metrics)
    log_stats     log entries counted per minute, process, level and target (global)
    otel_spans    OTLP spans as micromegas exposes them
    traces        one row per trace across processes: root, begin, end, span and process counts (global)
    images        images sent by `image` streams
    net_spans     network bandwidth spans of `net` streams (Unreal network tracing)
    blocks        one row per block: blocks ⋈ streams ⋈ processes
    processes     one row per process, from the blocks' rows
    streams       one row per stream, from the blocks' rows
    meta          the process, stream and block rows a view is built from
    decoded       a decoded transit block, as the views see it
    merge_query   rows of several partitions as one, by a SQL query over them
    columns       coded (dictionary-style) values and Arrow column helpers
    properties    properties columns: flat string maps in databend-jsonb, `property_get`
    jsonb         the databend-jsonb codec
    schema_types  Arrow types shared by the view schemas
    scope         span scopes and their xxh32 hash
    time          tick → time conversion
    perfetto      the Perfetto trace writer (a package)
"""
