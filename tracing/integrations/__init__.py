"""Ready-made trace propagation for HTTP libraries: server spans that continue the caller's trace,
client spans that pass theirs on (W3C `traceparent`, see `tracing.propagation`).

Modules:

    aiohttp  a server middleware (`middleware`) and a client `TraceConfig` (`client_trace_config()`)
    httpx    event hooks for `httpx.Client` (`event_hooks()`) and `httpx.AsyncClient` (`async_event_hooks()`)
"""
