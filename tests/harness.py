"""Real parts for the tests: PostgreSQL databases, an S3 server, and `spanlake` server processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
RUST_FIXTURES = FIXTURES / "micromegas-rust"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen | None, grace: float = 20) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def query(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Runs one SQL statement on a fresh connection and returns the rows as dicts."""

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


class PostgresServer:
    """One PostgreSQL for the test session: `SPANLAKE_DATABASE_URL` if set, else an embedded one."""

    def __init__(self) -> None:
        configured = os.environ.get("SPANLAKE_DATABASE_URL")
        if configured:
            self.admin_url = configured
        else:
            from spanlake.lakehouse.embedded_postgres import start_embedded_postgres

            self._dir = tempfile.TemporaryDirectory(prefix="spanlake-pg-")
            self.admin_url = start_embedded_postgres(Path(self._dir.name))

    def new_database(self) -> str:
        """Creates an empty database and returns its URL: each test gets a clean catalog."""
        name = f"spanlake_test_{uuid.uuid4().hex[:12]}"
        query(self.admin_url, f'CREATE DATABASE "{name}"')
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


class S3Server:
    """An S3-compatible server (moto) on a loopback port, with one bucket."""

    def __init__(self, bucket: str = "lake") -> None:
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(self.env)
        self.client = boto3.client("s3", endpoint_url=self.endpoint)
        wait_until(self._up, 30, "moto server")
        self.client.create_bucket(Bucket=bucket)

    def _up(self) -> bool:
        try:
            self.client.list_buckets()
            return True
        except Exception:
            return False

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


PORT_ATTEMPTS = 3
PORT_TAKEN = "is already in use (another spanlake serve?)"  # server/startup.py's message


class PortTaken(RuntimeError):
    """The server exited because one of its ports was taken."""


@dataclass
class SpanlakeServer:
    """A `spanlake` server process on free loopback ports, with direct access to its storage."""

    database_url: str
    data_dir: Path
    object_store_uri: str
    api_key: str | None = None
    command: str = "serve"
    extra_env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    flightsql_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def flightsql_url(self) -> str:
        return f"grpc://127.0.0.1:{self.flightsql_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPANLAKE_")}
        env.update(
            {
                "SPANLAKE_DATABASE_URL": self.database_url,
                "SPANLAKE_DATA_DIR": str(self.data_dir),
                "SPANLAKE_OBJECT_STORE_URI": self.object_store_uri,
                "SPANLAKE_HTTP_PORT": str(self.http_port),
                "SPANLAKE_FLIGHTSQL_PORT": str(self.flightsql_port),
                "SPANLAKE_SELF_TRACING": "false",
            }
        )
        if self.api_key:
            env["SPANLAKE_API_KEYS"] = f'[{{"name": "tests", "key": "{self.api_key}"}}]'
        env.update(self.extra_env)
        return env

    def start(self) -> SpanlakeServer:
        """Starts the server and waits for /health. On a first start whose port another process took
        between `free_port` and the server's bind (a Ray worker, a client's connection), starts again on
        new free ports: a port given for a restart is kept."""
        attempts = PORT_ATTEMPTS if self.process is None else 1
        while True:
            try:
                return self._start_once()
            except PortTaken:
                attempts -= 1
                if attempts == 0:
                    raise
                self.stop()
                self.http_port, self.flightsql_port = free_port(), free_port()

    def _start_once(self) -> SpanlakeServer:
        log_path = self.data_dir / f"{self.command}-{self.http_port}.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spanlake.server.cli", self.command],
            env=self.env(),
            cwd=PROJECT_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._healthy, 60, f"spanlake {self.command} to answer /health")
        return self

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = self.log_text()
            failure = PortTaken if PORT_TAKEN in log else RuntimeError
            raise failure(f"spanlake exited with {self.process.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"{self.http_url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def log_text(self) -> str:
        return (self.data_dir / f"{self.command}-{self.http_port}.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()

    # -- direct reads of what the server stored ---------------------------------------------------

    def sql(self, statement: str, *args: Any) -> list[dict[str, Any]]:
        return query(self.database_url, statement, *args)

    def process_row(self, process_id: str | uuid.UUID) -> dict[str, Any] | None:
        rows = self.sql("SELECT * FROM processes WHERE process_id = $1", uuid.UUID(str(process_id)))
        return rows[0] if rows else None

    def stream_rows(self, process_id: str | uuid.UUID) -> list[dict[str, Any]]:
        return self.sql(
            "SELECT * FROM streams WHERE process_id = $1 ORDER BY insert_time, stream_id", uuid.UUID(str(process_id))
        )

    def block_rows(self, process_id: str | uuid.UUID) -> list[dict[str, Any]]:
        return self.sql(
            "SELECT * FROM blocks WHERE process_id = $1 ORDER BY insert_time, block_id", uuid.UUID(str(process_id))
        )

    def read_object(self, key: str) -> bytes:
        from spanlake.lakehouse.object_store import ObjectStore

        return ObjectStore(self.object_store_uri, self.extra_env.get("SPANLAKE_S3_ENDPOINT")).get(key)

    def stored_blocks(self, process_id: str | uuid.UUID) -> list[tuple[dict[str, Any], bytes]]:
        """Each block row of the process with its stored payload (CBOR {dependencies, objects})."""
        return [
            (row, self.read_object(f"blobs/{row['process_id']}/{row['stream_id']}/{row['block_id']}"))
            for row in self.block_rows(process_id)
        ]


@contextlib.contextmanager
def running_server(postgres: PostgresServer, tmp_path: Path, **kwargs: Any) -> Iterator[SpanlakeServer]:
    kwargs.setdefault("object_store_uri", (tmp_path / "lake").as_uri())
    server = SpanlakeServer(database_url=postgres.new_database(), data_dir=tmp_path / "data", **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) for error statuses too."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return http("POST", url, body, headers)


def _cpu_seconds(server: SpanlakeServer) -> float:
    assert server.process is not None
    times = psutil.Process(server.process.pid).cpu_times()
    return times.user + times.system


def wait_idle(server: SpanlakeServer, within: float) -> float:
    """Seconds until the server uses under a fifth of a core over half a second; fails past `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        before = _cpu_seconds(server)
        time.sleep(0.5)
        if _cpu_seconds(server) - before < 0.1:
            return time.monotonic() - started
    raise AssertionError(f"the server was still busy {within} s later")
