"""docker-compose.yml and the Dockerfile, proven without Docker.

Each spanlake service of docker-compose.yml runs as a local process with its exact command and
environment (tests/deployment_support.py): a PostgreSQL set up from the `postgres` service's variables
and an S3 server (moto) holding the bucket `minio-init` creates stand in for `postgres:5432` and
`minio:9000`. Telemetry goes in through `ingest` (`spanlake generate`) and comes out of `flightsql`
with the micromegas client; block payloads and the partitions of `maintain` and of JIT queries land
in the bucket; nothing lands on the services' local disks.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import micromegas
import pandas as pd
import pyarrow.flight as flight
import pytest
from deployment_support import (
    ComposePostgres,
    Dockerfile,
    LocalService,
    build_context_files,
    dockerignore_patterns,
    is_ignored,
    load_compose,
    local_service,
    service_environment,
    spanlake_services,
)
from harness import PROJECT_ROOT, S3Server, query, wait_until
from micromegas.auth import StaticTokenAuthProvider
from micromegas.flightsql.client import FlightSQLClient

from spanlake.lakehouse.settings import SETTINGS, load_settings
from spanlake.server.auth import is_loopback, parse_api_keys
from spanlake.server.cli import build_parser
from spanlake.server.ingestion import IngestionService

ROLES = ("ingest", "flightsql", "maintain", "web")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.read()


def created_bucket(compose: dict[str, Any]) -> str:
    """The bucket the one-shot `minio-init` service creates (`mc mb ... <alias>/<bucket>`)."""
    command = " ".join(compose["services"]["minio-init"]["command"])
    [bucket] = re.findall(r"mc mb (?:--\S+ )*\w+/([\w.-]+)", command)
    return bucket


def api_keys(env: dict[str, str]) -> dict[str, str]:
    """{name: key} of SPANLAKE_API_KEYS."""
    return {name: key for key, name in parse_api_keys(env["SPANLAKE_API_KEYS"]).items()}


def subcommands() -> set[str]:
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    return set(commands.choices)


# -- the compose file's wiring, read statically ----------------------------------------------------


def test_compose_wires_spanlake_to_postgres_and_minio(compose: dict[str, Any], dockerfile: Dockerfile) -> None:
    services = compose["services"]
    assert set(spanlake_services(compose)) == set(ROLES)
    postgres_env, minio_env = services["postgres"]["environment"], services["minio"]["environment"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    init_command = " ".join(services["minio-init"]["command"])
    bucket = created_bucket(compose)
    for role in ROLES:
        service = services[role]
        assert service["command"] == [role] and role in subcommands()
        env = service_environment(service)
        assert set(k for k in env if k.startswith("SPANLAKE_")) <= {o.env for o in SETTINGS}, "unknown setting"
        database = urllib.parse.urlsplit(env["SPANLAKE_DATABASE_URL"])
        assert (database.scheme, database.hostname, database.port) == ("postgresql", "postgres", 5432)
        assert (database.username, database.password, database.path) == (
            postgres_env["POSTGRES_USER"],
            postgres_env["POSTGRES_PASSWORD"],
            f"/{postgres_env['POSTGRES_DB']}",
        )
        store = urllib.parse.urlsplit(env["SPANLAKE_OBJECT_STORE_URI"])
        assert (store.scheme, store.netloc) == ("s3", bucket) and store.path.strip("/")
        assert env["SPANLAKE_S3_ENDPOINT"] == "http://minio:9000" and env["SPANLAKE_S3_ENDPOINT"] in init_command
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio_env["MINIO_ROOT_USER"],
            minio_env["MINIO_ROOT_PASSWORD"],
        )
        assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"]
        # Listening on 0.0.0.0 needs keys: with these settings spanlake starts instead of refusing.
        settings = load_settings(environ={**dockerfile.env, **env})
        assert not is_loopback(settings.host) and api_keys(env) and not settings.disable_auth
        assert settings.admin_names <= set(api_keys(env))
        assert service["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "minio-init": {"condition": "service_completed_successfully"},
        }
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name in ("postgres", "minio", "ingest", "flightsql", "web"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    assert services["maintain"]["healthcheck"] == {"disable": True}
    assert set(compose["volumes"]) == {"postgres-data", "minio-data"}


def test_compose_publishes_ingestion_and_one_flightsql_port(compose: dict[str, Any], dockerfile: Dockerfile) -> None:
    services = compose["services"]
    http_port, flight_port = dockerfile.env["SPANLAKE_HTTP_PORT"], dockerfile.env["SPANLAKE_FLIGHTSQL_PORT"]
    assert services["ingest"]["ports"] == [f"{http_port}:{http_port}"]
    [web_port] = services["web"]["ports"]
    assert web_port.endswith(f":{http_port}") and web_port.split(":")[0] != http_port
    assert "ports" not in services["flightsql"], "replicas cannot share a published port"
    balancer = services["flightsql-lb"]
    assert balancer["ports"] == [f"{flight_port}:{flight_port}"]
    assert balancer["depends_on"] == {"flightsql": {"condition": "service_healthy"}}
    [mount] = balancer["configs"]
    config = compose["configs"][mount["source"]]["content"]
    assert re.search(rf"^\s*bind :{flight_port}$", config, re.MULTILINE)
    [template] = re.findall(r"^\s*server-template \S+ (\d+) (\S+) ", config, re.MULTILINE)
    assert template[1] == f"flightsql:{flight_port}" and int(template[0]) >= 3
    assert re.search(r"^\s*nameserver \S+ 127\.0\.0\.11:53$", config, re.MULTILINE), "Docker's DNS lists replicas"


# -- the services running -------------------------------------------------------------------------


@dataclass
class Stack:
    services: dict[str, LocalService]
    s3: S3Server
    postgres: ComposePostgres
    prefix: str  # key prefix of the lake in the bucket
    process_id: str
    key: str

    @property
    def flightsql_uri(self) -> str:
        return f"grpc://127.0.0.1:{self.services['flightsql'].env['SPANLAKE_FLIGHTSQL_PORT']}"

    def client(self) -> FlightSQLClient:
        return FlightSQLClient(self.flightsql_uri, auth_provider=StaticTokenAuthProvider(self.key))


@pytest.fixture(scope="module")
def stack(compose: dict[str, Any], dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with contextlib.ExitStack() as cleanup:
        postgres = ComposePostgres(compose["services"]["postgres"]["environment"])
        cleanup.callback(postgres.stop)
        s3 = S3Server(bucket=created_bucket(compose))
        cleanup.callback(s3.stop)
        hosts = {"postgres:5432": f"127.0.0.1:{postgres.port}", "minio:9000": f"127.0.0.1:{s3.port}"}
        root = tmp_path_factory.mktemp("compose")
        services = {role: local_service(role, compose, dockerfile, hosts, root) for role in ROLES}
        for service in services.values():
            cleanup.callback(service.stop)
            service.start()
        services["ingest"].wait_healthy()
        services["flightsql"].wait_healthy()
        services["web"].wait_healthy()
        services["maintain"].wait_for_output("spanlake maintenance daemon running")
        env = services["ingest"].env
        keys = api_keys(env)
        process_id = generate(f"http://127.0.0.1:{env['SPANLAKE_HTTP_PORT']}", keys["producers"])
        prefix = urllib.parse.urlsplit(env["SPANLAKE_OBJECT_STORE_URI"]).path.strip("/")
        yield Stack(services, s3, postgres, prefix, process_id, keys["admin"])


def generate(url: str, key: str) -> str:
    """Runs `spanlake generate` against the ingestion URL with the key; returns the process id."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPANLAKE_", "AWS_"))}
    env["MICROMEGAS_INGESTION_API_KEY"] = key
    spanlake = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "spanlake")
    result = subprocess.run(
        [
            spanlake,
            "generate",
            "--url",
            url,
            "--tasks",
            "200",
            "--threads",
            "2",
            "--async-tasks",
            "4",
            "--flush-period",
            "0.5",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0].strip()


def test_telemetry_in_through_ingest_and_out_through_flightsql(stack: Stack) -> None:
    client, pid = stack.client(), stack.process_id
    processes = f"SELECT exe FROM processes WHERE process_id = '{pid}'"
    # The global `processes` view shows the process once `maintain` has materialized its second.
    wait_until(lambda: len(client.query(processes)) == 1, 30, "the generated process in the processes view")
    assert client.query(processes).exe.tolist() == ["spanlake-telemetry-generator"]
    events = client.query(f"SELECT event_type, name FROM view_instance('async_events', '{pid}')")
    begins = events[events.event_type == "begin"]
    assert len(begins) == (events.event_type == "end").sum() > 100
    assert {"user_workflow", "user_validation"} <= set(begins.name)
    logs = client.query(f"SELECT msg FROM view_instance('log_entries', '{pid}')")
    assert "generator completed successfully" in set(logs.msg)


def test_flightsql_refuses_a_client_without_a_key(stack: Stack) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError):
        micromegas.connect(stack.flightsql_uri).query("SELECT 1")


def partitions_in_catalog(stack: Stack, view_set: str, instance: str) -> pd.DataFrame:
    return stack.client().query(
        "SELECT view_set_name, view_instance_id, file_path, num_rows FROM list_partitions()"
        f" WHERE view_set_name = '{view_set}' AND view_instance_id = '{instance}' AND file_path IS NOT NULL"
    )


def test_blocks_and_partitions_land_in_the_bucket(stack: Stack) -> None:
    pid = stack.process_id
    keys = set(stack.s3.keys())
    assert keys and all(key.startswith(stack.prefix + "/") for key in keys), "everything under the URI's prefix"
    blocks = query(
        stack.postgres.url, "SELECT process_id, stream_id, block_id FROM blocks WHERE process_id = $1", uuid.UUID(pid)
    )
    assert len(blocks) >= 3  # at least the log, metrics and one thread stream
    assert {f"{stack.prefix}/blobs/{b['process_id']}/{b['stream_id']}/{b['block_id']}" for b in blocks} <= keys

    # JIT: the query above (or this one) materialized the process's async_events into the bucket.
    stack.client().query(f"SELECT count(*) FROM view_instance('async_events', '{pid}')")
    jit = partitions_in_catalog(stack, "async_events", pid)
    assert len(jit) >= 1 and jit.num_rows.sum() > 200
    assert {f"{stack.prefix}/{path}" for path in jit.file_path} <= set(stack.s3.keys())

    # maintain: the daemon's global partitions (1 s buckets, written ~2 s after the blocks arrived).
    for view in ("blocks", "log_entries"):
        wait_until(
            lambda view=view: len(partitions_in_catalog(stack, view, "global")) > 0,
            30,
            f"maintain's global {view} partitions",
        )
        maintained = partitions_in_catalog(stack, view, "global")
        paths = {f"{stack.prefix}/{path}" for path in maintained.file_path}
        assert paths <= set(stack.s3.keys())
        assert all(p.startswith(f"{stack.prefix}/views/{view}/global/") for p in paths)


def test_web_serves_the_lake_to_a_signed_in_key(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.services['web'].env['SPANLAKE_HTTP_PORT']}"
    with urllib.request.urlopen(f"{base}/", timeout=30) as response:  # redirected to the login page
        assert response.url.startswith(f"{base}/login")
    login = urllib.parse.urlencode({"key": stack.key, "next": f"/process/{stack.process_id}"}).encode()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(f"{base}/login", data=login, timeout=30) as response:
        page = response.read().decode()
    assert response.url == f"{base}/process/{stack.process_id}" and "spanlake-telemetry-generator" in page
    with opener.open(f"{base}/api/process/{stack.process_id}/async-spans", timeout=30) as response:
        top = json.loads(response.read())
    assert top["total"] > 0 and {"user_workflow"} <= {span["name"] for span in top["spans"]}
    # The web role serves no ingestion API: even with a valid key, there is no such route.
    request = urllib.request.Request(
        f"{base}/ingestion/insert_process", data=b"x", method="POST", headers={"Authorization": f"Bearer {stack.key}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 404


def test_health_checks_pass_on_the_running_services(stack: Stack, dockerfile: Dockerfile) -> None:
    for role in ("ingest", "flightsql", "web"):
        result = stack.services[role].run_healthcheck()
        assert result.returncode == 0, result.stderr
    image_check = stack.services["ingest"].run_healthcheck(dockerfile.healthcheck)
    assert image_check.returncode == 0, image_check.stderr


def test_health_checks_fail_when_nothing_listens(
    compose: dict[str, Any], dockerfile: Dockerfile, tmp_path: Path
) -> None:
    hosts = {"postgres:5432": "127.0.0.1:5432", "minio:9000": "127.0.0.1:9000"}
    for role in ("ingest", "flightsql", "web"):
        service = local_service(role, compose, dockerfile, hosts, tmp_path)  # not started: nothing listens
        (service.root / "data").mkdir(parents=True)
        result = service.run_healthcheck()
        assert result.returncode != 0, f"{role}'s health check passed with no server"
    assert service.run_healthcheck(dockerfile.healthcheck).returncode != 0


def test_the_services_write_nothing_to_local_disk(stack: Stack) -> None:
    client = stack.client()
    cpu_streams = f"SELECT stream_id FROM streams WHERE process_id = '{stack.process_id}' AND array_has(tags, 'cpu')"
    # The global streams view is the daemon's: wait for its 1 s partitions to cover the process's streams.
    wait_until(lambda: len(client.query(cpu_streams)) > 0, 30, "maintain's global streams")
    streams = client.query(cpu_streams)
    spans = client.query(f"SELECT count(*) AS n FROM view_instance('thread_spans', '{streams.stream_id[0]}')")
    assert spans.n[0] > 0
    time.sleep(1.5)  # one more round of the maintenance daemon
    for service in stack.services.values():
        service.check_running()
        assert service.files_written_locally() == [], service.name


# -- the Dockerfile against the project -----------------------------------------------------------


def project_packages(setuptools: dict) -> dict[str, str]:
    """The packages setuptools installs (pyproject's explicit list), each with its folder in the repository
    (through the `package-dir` mapping of `spanlake.<folder>` to `<folder>`)."""
    mapping = setuptools["package-dir"]
    folders = {}
    for package in setuptools["packages"]:
        prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        folders[package] = "/".join([mapping[prefix], *package[len(prefix) :].split(".")[1:]])
    return folders


def test_dockerfile_installs_the_project_runtime_only(dockerfile: Dockerfile) -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    froms = [i.args.split()[0] for i in dockerfile.instructions if i.keyword == "FROM"]
    assert all(re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", f) for f in froms), froms
    assert all(int(f.split(".")[1].split("-")[0]) >= 11 for f in froms)  # requires-python >= 3.11
    assert pyproject["project"]["requires-python"] == ">=3.11"

    patterns = dockerignore_patterns()
    for sources, _ in dockerfile.copies():
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), source
            assert not is_ignored(source, patterns), f"{source} is copied but .dockerignore drops it"
    copied = build_context_files(dockerfile)
    packages = project_packages(pyproject["tool"]["setuptools"])
    assert {
        "spanlake.server",
        "spanlake.server.flightsql",
        "spanlake.lakehouse",
        "spanlake.views",
        "spanlake.tracing",
        "spanlake.migrations",
    } <= set(packages)
    assert {f"{folder}/__init__.py" for folder in packages.values()} <= copied
    sql = {p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / "migrations").glob("*.sql")}
    assert sql and sql <= copied
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    assert not any(path.startswith(("tests/", "benchmarks/")) or "__pycache__" in path for path in copied)

    [install] = [i.args for i in dockerfile.instructions if i.keyword == "RUN" and "pip install" in i.args]
    assert shlex.split(install)[-2:] == ["install", ".${SPANLAKE_EXTRAS:+[$SPANLAKE_EXTRAS]}"], "no test extras"
    assert [i.args for i in dockerfile.instructions if i.keyword == "ARG"] == ['SPANLAKE_EXTRAS=""']
    runtime = dockerfile.runtime
    assert not [i for i in runtime if i.keyword == "COPY" and "--from=" not in i.args], "runtime gets the venv only"
    user = dockerfile.last("USER").args
    assert user not in ("root", "0") and any("useradd" in i.args and user in i.args for i in runtime)


def test_dockerfile_runs_the_spanlake_console_script(dockerfile: Dockerfile) -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert dockerfile.entrypoint == ["spanlake"]
    assert pyproject["project"]["scripts"]["spanlake"] == "spanlake.server.cli:main"
    [installed] = importlib.metadata.entry_points(group="console_scripts", name="spanlake")
    assert installed.value == "spanlake.server.cli:main"
    assert dockerfile.env["PATH"].split(":")[0] == "/opt/spanlake/bin"  # the venv's console scripts
    assert any(
        shlex.split(i.args)[:2] == ["/opt/spanlake/bin/pip", "install"]
        for i in dockerfile.instructions
        if i.keyword == "RUN"
    )
    assert dockerfile.cmd[0] in subcommands()
    env = dockerfile.env
    assert set(k for k in env if k.startswith("SPANLAKE_")) <= {o.env for o in SETTINGS}
    exposed = dockerfile.last("EXPOSE").args.split()
    assert exposed == [env["SPANLAKE_HTTP_PORT"], env["SPANLAKE_FLIGHTSQL_PORT"]]


def test_dockerfile_health_check_hits_the_ready_route(dockerfile: Dockerfile, compose: dict[str, Any]) -> None:
    check = dockerfile.healthcheck
    assert check[:2] == ["python", "-c"]
    [path] = re.findall(r"'(/[\w/]*)'", check[2])
    routes = {(r.method, r.resource.canonical) for r in IngestionService(None, None).app().router.routes()}
    assert ("GET", path) in routes and path == "/ready"
    assert "SPANLAKE_HTTP_PORT" in check[2] and "SPANLAKE_HTTP_PORT" in dockerfile.env
    assert compose["services"]["ingest"]["healthcheck"]["test"][1:] == check
