"""How spanlake is served: HTTP ingestion, Flight SQL, the maintenance daemon, the command line.

Modules:

    cli               the `spanlake` command line: the roles, migrate, api-key, client tools
    startup           start-up checks (ports, data-directory lock) and what `spanlake` prints
    ingestion         the HTTP ingestion API (native and OTLP routes)
    native_http       the lean HTTP/1.1 path of the native ingestion routes, aiohttp behind it
    ingestion_workers  the ingestion worker processes sharing the HTTP port (the parent's side)
    ingestion_worker   one ingestion worker process
    wire              the CBOR bodies of the native ingestion API
    otlp              OTLP/HTTP requests: content types, gzip, protobuf or JSON, status bodies
    webhook           `/ingestion/webhook`: a webhook request as one OTLP log record
    firehose          the Firehose HTTP delivery routes (CloudWatch metric streams and logs)
    cloudwatch        CloudWatch metric stream and logs subscription records as OTLP exports
    auth              bearer API keys for both APIs: legacy, ingestion and analytics keys, their principals
    oidc              OIDC bearer tokens (JWTs) validated against the issuer's JWKS; groups to audiences
    write_audience    ingestion stamps the key's audience on processes; no writes into another audience's
    maintenance       the maintenance daemon: schedules, merges, retention
    self_tracing      spanlake tracing itself into its own lake
    query_command     `spanlake query`
    perfetto_command  `spanlake perfetto`
    client_flags      the flags of `spanlake query` and `spanlake perfetto`, their server address and errors
    catalog_command   `spanlake api-key` and `spanlake migrate`: the catalog database alone, no lake
    http_body         request bodies read within SPANLAKE_REQUEST_BODY_TIMEOUT_S (408 and close otherwise)
    site_guard        no other site drives the HTTP server: Host, Origin, CSRF checks, security headers
    flightsql         the Arrow Flight SQL server (a package)
    web               the web UI: pages, span trees, SQL, Perfetto, micromegas query stream (a package)
"""
