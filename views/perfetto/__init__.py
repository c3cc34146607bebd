"""The Perfetto trace writer: a process's thread and async spans as protobuf `Trace` chunks, as
micromegas writes them (docs/perfetto.md).

Modules:

    writer  emission order, interning, span packets, the public API
    wire    protobuf wire format: scalar fields, and whole columns of rows with numpy
    chunks  the micromegas chunking rule, applied to whole runs of writes
    lanes   the async lane layout: properly nested slices per track
    trace   one trace across processes: a Perfetto process each, flows for remote parents and hand-offs
"""
