"""The query cluster: global-view scans on Daft over a real two-node Ray cluster, through Flight SQL.

One `spanlake serve` sends eligible queries to the cluster (threshold 1 byte); a second server on the
same catalog and bucket has no cluster. Every query must give identical results on both, the audit
must say where each ran and why, and a worker killed mid-query must never give a wrong answer.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import micromegas
import pandas as pd
import pyarrow.flight as flight
import pytest
import yaml
from harness import PROJECT_ROOT, PostgresServer, S3Server, SpanlakeServer, wait_until
from ray_cluster import RayCluster

from spanlake.lakehouse.settings import load_settings
from spanlake.server.cli import build_parser

GLOBAL_VIEWS = ("log_entries", "measures", "processes", "streams")
QUERIES = {
    "counts by level": "SELECT level, count(*) AS n FROM log_entries GROUP BY level ORDER BY level",
    "like top-k": (
        "SELECT target, count(*) AS n FROM log_entries WHERE msg LIKE '%task%' AND level <= 4"
        " GROUP BY target ORDER BY n DESC, target LIMIT 3"
    ),
    "distinct per day": (
        "SELECT date_trunc('day', time) AS day, count(DISTINCT msg) AS messages, count(DISTINCT process_id) AS p"
        " FROM log_entries GROUP BY date_trunc('day', time) ORDER BY day"
    ),
    "date_bin series": (
        "SELECT date_bin(INTERVAL '2 seconds', time) AS bin, name, min(value) AS low, max(value) AS high,"
        " count(*) AS n FROM measures GROUP BY date_bin(INTERVAL '2 seconds', time), name ORDER BY bin, name"
    ),
    "join with processes": (
        "SELECT p.exe, l.level, count(*) AS n, max(l.time) AS last FROM log_entries l"
        " JOIN processes p ON l.process_id = p.process_id GROUP BY p.exe, l.level ORDER BY p.exe, l.level"
    ),
}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    # Ray's socket paths must stay under 107 bytes: a short temp dir, not pytest's (deeper under xdist).
    with tempfile.TemporaryDirectory(prefix="ray-") as short:
        cluster = RayCluster(Path(short) / "t")
        yield cluster
        cluster.stop()


@pytest.fixture(scope="module")
def servers(
    postgres: PostgresServer, s3_server: S3Server, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SpanlakeServer, SpanlakeServer]]:
    """(on the cluster, DataFusion only): one catalog and bucket, telemetry generated and materialized."""
    lake = f"s3://{s3_server.bucket}/query-cluster"
    store_env = {"SPANLAKE_S3_ENDPOINT": s3_server.endpoint}
    database_url = postgres.new_database()
    clustered = SpanlakeServer(
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("clustered"),
        object_store_uri=lake,
        extra_env={
            **store_env,
            "SPANLAKE_QUERY_CLUSTER": ray_cluster.gcs_address,
            "SPANLAKE_CLUSTER_MIN_BYTES": "1",
            "SPANLAKE_LOG_LEVEL": "DEBUG",  # the audit lines, read by the tests
            "DAFT_PROGRESS_BAR": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        },
    ).start()
    single = SpanlakeServer(
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("single"),
        object_store_uri=lake,
        extra_env=store_env,
    )
    try:
        single.start()
        _generate(clustered)
        _materialize(micromegas.connect(single.flightsql_url))
        yield clustered, single
    finally:
        single.stop()
        clustered.stop()


def _generate(server: SpanlakeServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spanlake.server.cli", "generate", "--url", server.http_url, "--tasks", "200"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _materialize(client: micromegas.flightsql.client.FlightSQLClient) -> None:
    """Every global view's partitions over the last hours, written now (the daemon would, later)."""
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    begin = end - dt.timedelta(hours=3)
    for view in GLOBAL_VIEWS:
        client.query(
            f"SELECT * FROM materialize_partitions('{view}', '{begin.isoformat()}', '{end.isoformat()}', 3600)"
        )
    wait_until(lambda: len(client.query("SELECT 1 FROM log_entries LIMIT 1")) == 1, 30, "materialized log entries")


def _audits(server: SpanlakeServer) -> list[dict]:
    lines = server.log_text().splitlines()
    return [json.loads(line[line.index("{") :]) for line in lines if "flightsql_query_audit" in line]


def _last_audit(server: SpanlakeServer) -> dict:
    return [record for record in _audits(server) if record["rpc"] == "DoGet"][-1]


def _both(servers: tuple[SpanlakeServer, SpanlakeServer], sql: str, **range_args: str) -> pd.DataFrame:
    clustered, single = servers
    on_cluster = micromegas.connect(clustered.flightsql_url).query(sql, **range_args)
    on_datafusion = micromegas.connect(single.flightsql_url).query(sql, **range_args)
    pd.testing.assert_frame_equal(on_cluster, on_datafusion, check_exact=True)
    return on_cluster


@pytest.mark.parametrize("name", list(QUERIES))
def test_cluster_answers_as_datafusion(servers, name: str) -> None:
    result = _both(servers, QUERIES[name])
    assert len(result) > 0, "the query must have rows for the comparison to mean anything"
    audit = _last_audit(servers[0])
    assert audit["engine"] == "cluster", audit["engine_note"]
    assert audit["rows"] == len(result)


def test_query_range_on_the_cluster(servers) -> None:
    clustered, _ = servers
    first = micromegas.connect(clustered.flightsql_url).query("SELECT min(time) AS t FROM log_entries").t[0]
    begin, end = (first + dt.timedelta(seconds=1)).isoformat(), (first + dt.timedelta(hours=1)).isoformat()
    ranged = _both(servers, QUERIES["counts by level"], begin=begin, end=end)
    whole = micromegas.connect(clustered.flightsql_url).query(QUERIES["counts by level"])
    assert ranged.n.sum() < whole.n.sum()
    assert _last_audit(clustered)["engine"] == "cluster"


def test_the_scan_ran_on_both_nodes(servers, ray_cluster) -> None:
    """Daft on this cluster spreads a scan of the catalog's files over both nodes."""
    clustered, _ = servers
    rows = clustered.sql(
        "SELECT file_path FROM lakehouse_partitions WHERE view_set_name = 'log_entries' AND file_path IS NOT NULL"
    )
    files = [f"s3://{clustered.object_store_uri.removeprefix('s3://')}/{row['file_path']}" for row in rows]
    assert files

    endpoint = clustered.extra_env["SPANLAKE_S3_ENDPOINT"]
    scan = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("ray_scan_nodes.py")), ray_cluster.gcs_address, endpoint, *files],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "DAFT_PROGRESS_BAR": "0"},
    )
    assert scan.returncode == 0, scan.stderr[-2000:]
    nodes = json.loads(scan.stdout.splitlines()[-1])
    assert len(nodes) == 2


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT max(length(msg)) AS longest FROM log_entries", "not expressible"),
        ("SELECT count(*) AS n FROM list_partitions()", "not plannable over global views alone"),
        ("SELECT level, count(*) AS n FROM log_entries GROUP BY level ORDER BY level LIMIT 2 OFFSET 1", "OFFSET"),
    ],
)
def test_falls_back_to_datafusion(servers, sql: str, reason: str) -> None:
    _both(servers, sql)
    audit = _last_audit(servers[0])
    assert audit["engine"] == "datafusion" and reason in audit["engine_note"]


def test_below_the_threshold_runs_on_datafusion(servers) -> None:
    """No partition overlaps a range in 2001: 0 bytes, under the 1-byte threshold."""
    result = _both(servers, QUERIES["counts by level"], begin="2001-01-01T00:00:00Z", end="2001-01-02T00:00:00Z")
    assert result.empty
    assert "below SPANLAKE_CLUSTER_MIN_BYTES" in _last_audit(servers[0])["engine_note"]


def test_worker_killed_mid_query_never_answers_wrong(servers, ray_cluster) -> None:
    """Run last in the module: the worker node does not come back."""
    clustered, single = servers
    sql = QUERIES["join with processes"]
    expected = micromegas.connect(single.flightsql_url).query(sql)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = micromegas.connect(clustered.flightsql_url).query(sql)
        except flight.FlightError as err:
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    ray_cluster.kill_worker()
    thread.join(120)
    assert not thread.is_alive(), "the query hung after the worker died"
    if "result" in outcome:
        pd.testing.assert_frame_equal(outcome["result"], expected, check_exact=True)
    else:
        assert isinstance(outcome["error"], flight.FlightUnavailableError)
        assert "query cluster failed" in str(outcome["error"])
    # And the next query still answers right: on the head node alone, or on DataFusion.
    pd.testing.assert_frame_equal(micromegas.connect(clustered.flightsql_url).query(sql), expected, check_exact=True)


# -- docker-compose.cluster.yml, read statically (its Ray commands run above, in tests/ray_cluster.py)


def _cluster_compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.cluster.yml").read_text())


def test_compose_flightsql_joins_the_cluster_it_queries() -> None:
    services = _cluster_compose()["services"]
    flightsql = services["flightsql"]
    settings = load_settings(environ=flightsql["environment"])
    head_port = next(arg for arg in services["ray-head"]["command"] if arg.startswith("--port=")).split("=")[1]
    assert settings.query_cluster == f"ray-head:{head_port}"
    assert settings.cluster_min_bytes == 1 << 30
    join, _, serve = flightsql["command"][0].partition(" && exec ")
    assert shlex.split(join)[:3] == ["ray", "start", f"--address={settings.query_cluster}"]
    assert "--num-cpus=0" in shlex.split(join), "the Flight SQL node takes no Ray tasks"
    assert shlex.split(serve) == ["spanlake", "flightsql"]
    assert build_parser().parse_args(["flightsql"]).command == "flightsql"
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in ("ray-head", "ray-worker", "flightsql"):
        assert services[name]["build"]["args"]["SPANLAKE_EXTRAS"] in extras
        assert "ports" not in services[name], "Ray has no auth: nothing of the cluster is published"
    assert f"--address=ray-head:{head_port}" in services["ray-worker"]["command"]
