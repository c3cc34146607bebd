"""Ingestion against S3, storage failures, the embedded default, migrations and startup rules."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from harness import (
    PROJECT_ROOT,
    RUST_FIXTURES,
    PostgresServer,
    S3Server,
    SpanlakeServer,
    http,
    post,
    query,
    running_server,
)
from test_ingestion import EXPECTED, PROCESS_ID, all_blocks, upload_fixture

from spanlake.lakehouse.migrate import available_migrations


def spanlake(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs the command line with these settings on top of an environment free of SPANLAKE_*."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SPANLAKE_")} | env
    return subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", *args],
        cwd=PROJECT_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_s3_object_store(postgres: PostgresServer, s3_server: S3Server, tmp_path: Path) -> None:
    prefix = f"s3://{s3_server.bucket}/tenant-{uuid.uuid4().hex[:8]}"
    with running_server(
        postgres,
        tmp_path,
        object_store_uri=prefix,
        extra_env={"SPANLAKE_S3_ENDPOINT": s3_server.endpoint, **s3_server.env},
    ) as server:
        upload_fixture(server)
        assert http("GET", server.http_url + "/ready") == (200, b"ready")
        key_prefix = prefix.removeprefix(f"s3://{s3_server.bucket}/") + "/"
        # Only the payloads: the maintenance daemon may already have written partitions (views/...) too.
        keys = s3_server.keys(key_prefix + "blobs/")
        assert len(keys) == 34
        for block in all_blocks():
            key = f"{key_prefix}blobs/{PROCESS_ID}/{block['stream_id']}/{block['block_id']}"
            assert s3_server.get(key) == (RUST_FIXTURES / block["files"]["stored_payload_blob"]).read_bytes()
        assert not (tmp_path / "lake").exists()


def test_object_store_down_is_503_and_leaves_no_row(postgres: PostgresServer, tmp_path: Path) -> None:
    s3 = S3Server(bucket="flaky")
    try:
        with running_server(
            postgres,
            tmp_path,
            object_store_uri="s3://flaky/lake",
            extra_env={"SPANLAKE_S3_ENDPOINT": s3.endpoint, **s3.env},
        ) as server:
            block = all_blocks()[0]
            body = (RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes()
            s3.stop()
            status, text = post(server.http_url + "/ingestion/insert_block", body)
            assert status == 503, text
            assert server.block_rows(PROCESS_ID) == []
            assert http("GET", server.http_url + "/ready")[0] == 503
            assert http("GET", server.http_url + "/health")[0] == 200
    finally:
        s3.stop()


def test_database_failure_is_503_and_retry_stores_once(spanlake_server: SpanlakeServer) -> None:
    block = all_blocks()[5]
    body = (RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes()
    spanlake_server.sql("ALTER TABLE blocks RENAME TO blocks_away")
    status, _ = post(spanlake_server.http_url + "/ingestion/insert_block", body)
    assert status == 503
    spanlake_server.sql("ALTER TABLE blocks_away RENAME TO blocks")
    assert post(spanlake_server.http_url + "/ingestion/insert_block", body)[0] == 200
    assert [str(r["block_id"]) for r in spanlake_server.block_rows(PROCESS_ID)] == [block["block_id"]]


def test_concurrent_migrations_apply_each_file_once(database_url: str) -> None:
    env = {"SPANLAKE_DATABASE_URL": database_url}
    results: list[subprocess.CompletedProcess] = []
    workers = [threading.Thread(target=lambda: results.append(spanlake("migrate", env=env))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    applied = query(database_url, "SELECT version, name FROM spanlake_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in applied] == [(m.version, m.name) for m in available_migrations()]
    tables = {r["tablename"] for r in query(database_url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"processes", "streams", "blocks", "lakehouse_partitions", "temporary_files", "api_keys"} <= tables


def test_embedded_default_keeps_data_across_restarts() -> None:
    # Not under tmp_path: pytest resets its base temp dir to mode 0700 whenever a session starts,
    # which locks out the system user pgserver runs PostgreSQL as under root.
    with tempfile.TemporaryDirectory(prefix="spanlake-embedded-") as tmp:
        _keeps_data_across_restarts(Path(tmp) / "data")


def _keeps_data_across_restarts(data_dir: Path) -> None:

    def start() -> SpanlakeServer:
        server = SpanlakeServer(database_url="", data_dir=data_dir, object_store_uri="")
        server.extra_env = {"SPANLAKE_DATABASE_URL": "", "SPANLAKE_OBJECT_STORE_URI": ""}
        return server.start()

    first = start()
    try:
        upload_fixture(first)
    finally:
        first.stop()
    blobs = list((data_dir / "lake" / "blobs").rglob("*"))
    assert sum(p.is_file() for p in blobs) == 34
    assert (data_dir / "postgres").is_dir()

    second = start()
    try:
        status, _ = post(second.http_url + "/ingestion/insert_process", (RUST_FIXTURES / "process.cbor").read_bytes())
        assert status == 200
    finally:
        second.stop()
    # The embedded database kept the rows of the first run.
    from spanlake.lakehouse.embedded_postgres import start_embedded_postgres

    url = start_embedded_postgres(data_dir)
    assert query(url, "SELECT count(*) AS n FROM blocks")[0]["n"] == 34
    assert query(url, "SELECT exe FROM processes")[0]["exe"] == EXPECTED["process"]["process_info"]["exe"]


def test_non_loopback_without_keys_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    env = {"SPANLAKE_DATABASE_URL": database_url, "SPANLAKE_DATA_DIR": str(tmp_path)}
    result = spanlake("ingest", "--host", "0.0.0.0", env=env)
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in result.stderr


def test_bad_setting_is_named(tmp_path: Path) -> None:
    result = spanlake("serve", env={"SPANLAKE_HTTP_PORT": "ninety"})
    assert result.returncode == 2
    assert "SPANLAKE_HTTP_PORT (--http-port)" in result.stderr


def test_database_api_key(postgres: PostgresServer, database_url: str, tmp_path: Path) -> None:
    env = {"SPANLAKE_DATABASE_URL": database_url}
    created = spanlake("api-key", "ci-robot", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    stored = query(database_url, "SELECT name, key_hash FROM api_keys")
    assert [r["name"] for r in stored] == ["ci-robot"]
    assert key.encode() not in stored[0]["key_hash"]

    server = SpanlakeServer(
        database_url=database_url, data_dir=tmp_path / "data", object_store_uri=(tmp_path / "lake").as_uri()
    ).start()
    try:
        url = server.http_url + "/ingestion/insert_process"
        body = (RUST_FIXTURES / "process.cbor").read_bytes()
        assert post(url, body)[0] == 401
        assert post(url, body, {"Authorization": f"Bearer {key}"})[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("route", ["insert_process", "insert_stream", "insert_block"])
def test_server_keeps_serving_after_garbage(spanlake_server: SpanlakeServer, route: str) -> None:
    for garbage in (b"\xff" * 64, b"\x9f" * 1000, b"\xbf\x61a"):
        assert post(f"{spanlake_server.http_url}/ingestion/{route}", garbage)[0] == 400
    upload_fixture(spanlake_server)
    assert len(spanlake_server.block_rows(PROCESS_ID)) == 34
