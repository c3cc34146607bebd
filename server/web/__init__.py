"""The web UI: server-rendered pages (Jinja2 templates in templates/, autoescaped), plain JavaScript and CSS
(static/), served on the HTTP port.

Modules:

    routes             mounts the UI on an aiohttp app: routes, the auth middleware, static files
    auth_cookie        the login page and the HttpOnly cookie holding the API key
    oidc_signin        the OIDC sign-in: authorization code with PKCE, the ID token as the session cookie
    login_throttle     wrong-key sign-ins counted per client address and in total (429 past the limits)
    time_range         the `from` / `to` of every URL (`now-1h`, RFC3339) as a query range
    queries            SQL through the in-process lakehouse session, errors worded for people
    html               the templates' environment (built once), page rendering, the navigation, formats
    pages              the processes list and the SQL page; what every screen shares (bound SQL)
    process_pages      one process's screens: overview, logs, metrics, async spans, threads, Perfetto
    charts             the metrics chart's geometry, drawn as SVG by its template
    api                the JSON routes the pages' scripts call (span trees, SQL, health)
    span_levels        one level of a span tree, a page at a time: the spans, their ends and children
    span_find          a span found by name anywhere in a tree, with the path from its root
    perfetto_download  `GET /api/perfetto/{process_id}`: the trace streamed as an attachment
    query_stream       `POST /api/query-stream`: micromegas analytics-web-srv's Arrow IPC framing
    access_api         keys, audience grants and groups over HTTP (micromegas's WebClient routes)
    access_pages       `/access`: the admin page of keys, grants, groups and the query deny list
    trace_layout       a trace's waterfall: one band per process, rows depth first, critical path, links
    trace_pages        `/traces` and `/trace/{trace_id}`: the traces searched, a trace's waterfall paged
    slow_queries       `/slow-queries`: this server's own slow queries and the span tree of each
    screens_api        screens (notebooks) over HTTP: micromegas's WebClient routes, export and import
    screens_pages      `/screens`, `/screen/<name>` (a notebook) and `/api/screen-cell`, running one cell
    screens_starters   the fixed pages' questions as notebooks to start from (processes, logs, metrics)
    screens_macros     `$from`, `$to`, `$variable` and `$variable.column` in a cell's SQL, as micromegas expands them
"""
