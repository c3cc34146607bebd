"""The views spanlake materializes: each one's contract is the `VIEW` of its file in `views/`."""

from __future__ import annotations

from spanlake.views import (
    async_events,
    blocks,
    images,
    log_entries,
    log_stats,
    measures,
    net_spans,
    otel_spans,
    processes,
    span_traces,
    streams,
    thread_spans,
    traces,
)
from spanlake.views.view import View

VIEW_SETS: dict[str, View] = {
    view.name: view
    for view in (
        log_entries.VIEW,
        measures.VIEW,
        async_events.VIEW,
        thread_spans.VIEW,
        blocks.VIEW,
        processes.VIEW,
        streams.VIEW,
        log_stats.VIEW,
        otel_spans.VIEW,
        images.VIEW,
        net_spans.VIEW,
        span_traces.VIEW,
        traces.VIEW,
    )
}
GLOBAL_TABLES = ("log_entries", "measures", "processes", "streams", "blocks", "log_stats", "traces")
# The order the maintenance daemon materializes micromegas's global views in (metadata first, as its groups).
MAINTAINED = ("blocks", "processes", "streams", "log_entries", "measures", "log_stats")
# spanlake's own global views, which the daemon materializes after micromegas's.
SPANLAKE_MAINTAINED = ("traces",)
