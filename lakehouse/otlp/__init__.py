"""OTLP data in the lakehouse, one idea per module.

Modules:

    identity   micromegas's deterministic ids, and the rows and object one resource stores
    bounds     the time range of a resource's logs, spans or metrics
    envelope   the stored bytes: the CBOR envelope, in prost field order
    rust_text  values rendered as micromegas's Rust code renders them
    decode     stored blocks → the columns their views take
    span_arrays  traces blocks → span columns, read from the wire format with numpy
    log_arrays  logs blocks → log_entries columns, read from the wire format with numpy
    metric_arrays  metrics blocks → their data points and measures rows, read from the wire format with numpy
    value_arrays  OTLP's common messages (attribute values, key-values, scopes) read as arrays
    wire       protobuf's wire format read with numpy: the fields of many messages at once
    jsonb_arrays  databend-jsonb values built many at once, as Arrow arrays
    block_objects  stored blocks → parse_block's objects: one per log record, span or data point
"""
