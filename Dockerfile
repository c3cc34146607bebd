# spanlake in a container: the entrypoint is the `spanlake` command, so `docker run IMAGE ingest`
# runs `spanlake ingest` (also serve, flightsql, maintain, migrate, api-key, generate, query).
# Configuration comes from the SPANLAKE_* environment variables (docs/deployment.md).

# -- build: spanlake and its runtime dependencies (no test tools) in a virtualenv -----------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/spanlake
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrations ./migrations
COPY views ./views
COPY lakehouse ./lakehouse
COPY tracing ./tracing
COPY server ./server
# Optional extras, e.g. --build-arg SPANLAKE_EXTRAS=cluster (docker-compose.cluster.yml does).
ARG SPANLAKE_EXTRAS=""
RUN /opt/spanlake/bin/pip install ".${SPANLAKE_EXTRAS:+[$SPANLAKE_EXTRAS]}"

# -- runtime: only that virtualenv on a clean slim image, run by an unprivileged user -------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 spanlake \
 && useradd --system --uid 10001 --gid spanlake --create-home --home-dir /home/spanlake spanlake \
 && install -d -o spanlake -g spanlake /var/lib/spanlake
COPY --from=build /opt/spanlake /opt/spanlake
# SPANLAKE_DATA_DIR only matters for `spanlake serve` without a database URL (the embedded
# PostgreSQL and the local object store): mount a volume there for that mode.
ENV PATH=/opt/spanlake/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/spanlake \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPANLAKE_DATA_DIR=/var/lib/spanlake \
    SPANLAKE_HOST=0.0.0.0 \
    SPANLAKE_HTTP_PORT=9000 \
    SPANLAKE_FLIGHTSQL_PORT=50051
USER spanlake
WORKDIR /var/lib/spanlake
EXPOSE 9000 50051
# The ingestion API's readiness (PostgreSQL and the object store answer). Roles without the HTTP
# API (flightsql, maintain) get their own check in docker-compose.yml. Slim images have no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['SPANLAKE_HTTP_PORT'] + '/ready', timeout=4)"]
ENTRYPOINT ["spanlake"]
CMD ["serve"]
