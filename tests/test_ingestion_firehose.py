"""The webhook and Firehose ingestion routes of a running `spanlake serve` (with API keys), fed real
payloads (OTLP metrics encoded by the OpenTelemetry SDK's exporter code, CloudWatch Logs subscription
gzip JSON, webhook bodies), read back through the micromegas client; and their answers to bad input."""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from collections.abc import Iterator

import pytest
from harness import PostgresServer, SpanlakeServer, http, post, wait_until
from micromegas.auth import StaticTokenAuthProvider
from micromegas.flightsql.client import FlightSQLClient
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

KEY = "firehose-test-key"
METRICS = "/ingestion/otlp/v1/metrics/firehose"
LOGS = "/ingestion/cloudwatch/v1/logs/firehose"
ARN = "arn:aws:cloudwatch:eu-west-1:123456789012:metric-stream/mm"


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    root = tmp_path_factory.mktemp("firehose")
    server = SpanlakeServer(
        database_url=postgres.new_database(),
        data_dir=root / "data",
        object_store_uri=(root / "lake").as_uri(),
        api_key=KEY,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(server: SpanlakeServer) -> FlightSQLClient:
    auth = StaticTokenAuthProvider(server.api_key) if server.api_key else None
    return FlightSQLClient(server.flightsql_url, auth_provider=auth)


def rows(server: SpanlakeServer, sql: str) -> list[dict]:
    return client(server).query(sql).to_dict("records")


def process_ids(server: SpanlakeServer, exe: str) -> list[str]:
    return [r["process_id"] for r in rows(server, f"SELECT process_id FROM processes WHERE exe = '{exe}'")]


def process_id(server: SpanlakeServer, exe: str) -> str:
    """The one process of `exe`, once the maintenance daemon has put it in the global processes view."""
    wait_until(lambda: process_ids(server, exe), 30, f"the process {exe}")
    [found] = process_ids(server, exe)
    return found


def firehose(server: SpanlakeServer, path: str, records: list[bytes], **options: str) -> tuple[int, dict]:
    """POSTs a Firehose envelope; `options`: request_id (the header), body_request_id, key."""
    body = {"timestamp": int(time.time() * 1000), "records": [{"data": base64.b64encode(r).decode()} for r in records]}
    if "body_request_id" in options:
        body["requestId"] = options["body_request_id"]
    return firehose_raw(server, path, json.dumps(body).encode(), **options)


def firehose_raw(server: SpanlakeServer, path: str, body: bytes, **options: str) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if options.get("key", KEY) is not None:
        headers["X-Amz-Firehose-Access-Key"] = options.get("key", KEY)
    if "request_id" in options:
        headers["X-Amz-Firehose-Request-Id"] = options["request_id"]
    status, answer = post(server.http_url + path, body, headers)
    return status, json.loads(answer)


def assert_answer(answer: dict, request_id: str, error: str | None = None) -> None:
    assert answer["requestId"] == request_id
    assert abs(answer["timestamp"] - time.time() * 1000) < 60_000
    assert answer.get("errorMessage") == error
    assert set(answer) == ({"requestId", "timestamp"} | ({"errorMessage"} if error else set()))


def length_delimited(message: bytes) -> bytes:
    prefix = bytearray()
    length = len(message)
    while True:
        byte = length & 0x7F
        length >>= 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(prefix) + message


def metric_stream_export(stream_tag: str) -> bytes:
    """One CloudWatch-shaped export (exporter ARN, no service identity), two namespaces, SDK-encoded."""
    reader = InMemoryMetricReader()
    resource = Resource({"cloud.provider": "aws", "cloud.account.id": "123456789012", "aws.exporter.arn": ARN})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("cloudwatch")
    meter.create_counter(f"amazonaws.com/AWS/RDS/{stream_tag}").add(7, {"Namespace": "AWS/RDS", "DBId": "db1"})
    meter.create_counter(f"amazonaws.com/AWS/ECS/{stream_tag}").add(2, {"Namespace": "AWS/ECS"})
    data = reader.get_metrics_data()
    provider.shutdown()
    return encode_metrics(data).SerializeToString()


def cloudwatch_logs(group: str, events: list[tuple[str, int, str]], kind: str = "DATA_MESSAGE") -> bytes:
    message = {
        "messageType": kind,
        "owner": "123456789012",
        "logGroup": group,
        "logStream": "task/1",
        "subscriptionFilters": ["all"],
        "logEvents": [{"id": i, "timestamp": t, "message": m} for i, t, m in events],
    }
    return gzip.compress(json.dumps(message).encode())


# --- metrics ---------------------------------------------------------------------------------------


def test_metric_stream_records_become_one_process_per_namespace(server: SpanlakeServer) -> None:
    tag = f"m{uuid.uuid4().hex[:8]}"
    record = length_delimited(metric_stream_export(tag)) + length_delimited(metric_stream_export(tag + "b"))
    status, answer = firehose(server, METRICS, [record], request_id="req-metrics-1")
    assert status == 200
    assert_answer(answer, "req-metrics-1")
    for namespace, value in (("AWS/RDS", 7.0), ("AWS/ECS", 2.0)):
        pid = process_id(server, namespace)  # both messages: the same namespace process
        measures = rows(server, f"SELECT name, value, target FROM view_instance('measures', '{pid}') ORDER BY name")
        names = [f"amazonaws.com/{namespace.lower()}/{tag}", f"amazonaws.com/{namespace.lower()}/{tag}b"]  # the SDK
        # lower-cases instrument names
        assert [(m["name"], m["value"], m["target"]) for m in measures] == [(n, value, "cloudwatch") for n in names]
    properties = rows(
        server,
        "SELECT property_get(properties, 'otel.resource.service.instance.id') AS arn,"
        " property_get(properties, 'otel.resource.service.name') AS name FROM processes",
    )
    assert {(p["arn"], p["name"]) for p in properties} >= {(ARN, "AWS/RDS"), (ARN, "AWS/ECS")}


def test_a_bad_message_keeps_the_messages_before_it(server: SpanlakeServer) -> None:
    tag = f"k{uuid.uuid4().hex[:8]}"
    good = length_delimited(metric_stream_export(tag))
    status, answer = firehose(server, METRICS, [good, b"\x05\x01"], request_id="req-partial")
    assert status == 400
    assert_answer(
        answer,
        "req-partial",
        "parse error (metrics): firehose record[1] message[0]: decoding metrics (length-delimited protobuf):"
        " failed to decode Protobuf message: buffer underflow",
    )
    pid = process_id(server, "AWS/RDS")
    names = [r["name"] for r in rows(server, f"SELECT name FROM view_instance('measures', '{pid}')")]
    assert f"amazonaws.com/aws/rds/{tag}" in names


# --- CloudWatch Logs -------------------------------------------------------------------------------


def test_cloudwatch_logs_events_become_log_entries(server: SpanlakeServer) -> None:
    group = f"/ecs/app-{uuid.uuid4().hex[:8]}"
    events = [("e1", 1_760_000_000_123, "started"), ("e2", 1_760_000_001_000, '{"level":"warn","x":1}')]
    records = [cloudwatch_logs(group, events), cloudwatch_logs(group, [], kind="CONTROL_MESSAGE")]
    status, answer = firehose(server, LOGS, records, body_request_id="body-id-7")
    assert status == 200
    assert_answer(answer, "body-id-7")  # no header: the envelope's requestId
    pid = process_id(server, group)
    logs = rows(
        server,
        "SELECT time, level, target, msg, property_get(properties, 'aws.log.event.id') AS event_id"
        f" FROM view_instance('log_entries', '{pid}') ORDER BY time",
    )
    assert [(r["msg"], r["level"], r["target"], r["event_id"]) for r in logs] == [
        ("started", 4, "", "e1"),
        ('{"level":"warn","x":1}', 4, "", "e2"),
    ]
    assert [r["time"].value for r in logs] == [t * 1_000_000 for _, t, _ in events]
    [process] = rows(
        server,
        "SELECT computer, property_get(properties, 'otel.resource.service.instance.id') AS stream,"
        f" property_get(properties, 'otel.resource.cloud.account.id') AS owner FROM processes WHERE exe = '{group}'",
    )
    assert (process["stream"], process["owner"]) == ("task/1", "123456789012")


@pytest.mark.parametrize(
    ("path", "records", "error"),
    [
        (LOGS, [b"not gzip at all"], "parse error (logs): cloudwatch logs record[0] gunzip: invalid gzip header"),
        (LOGS, [gzip.compress(b"{oops")], "parse error (logs): cloudwatch logs record[0] json: "),
        (
            LOGS,
            [gzip.compress(json.dumps({"messageType": "DATA_MESSAGE", "owner": "o", "logGroup": "g"}).encode())],
            "parse error (logs): cloudwatch logs record[0] json: missing field `logStream`",
        ),
        (
            LOGS,
            [cloudwatch_logs("/neg", [("n1", -5, "before 1970")])],
            "parse error (logs): cloudwatch logs record[0] logEvent id=n1 has negative timestamp -5",
        ),
    ],
)
def test_bad_log_records_answer_400(server: SpanlakeServer, path: str, records: list[bytes], error: str) -> None:
    status, answer = firehose(server, path, records, request_id="bad-1")
    assert status == 400
    assert answer["requestId"] == "bad-1" and answer["errorMessage"].startswith(error)


# --- the envelope and the access key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"records": [{"data": "!!!!"}]}', "firehose record[0] base64: Invalid symbol 33, offset 0."),
        (b'{"records": [{"data": "QUJD="}]}', "firehose record[0] base64: Invalid padding"),
        (b'{"records": [{"data": "QR=="}]}', "firehose record[0] base64: Invalid last symbol 82, offset 1."),
        (b'{"records": [{"other": 1}]}', "firehose envelope json: records[0]: missing field `data`"),
        (b"not json", "firehose envelope json: Expecting value: line 1 column 1 (char 0)"),
    ],
)
@pytest.mark.parametrize("path", [METRICS, LOGS])
def test_bad_envelopes_answer_400(server: SpanlakeServer, path: str, body: bytes, error: str) -> None:
    signal = "metrics" if path == METRICS else "logs"
    status, answer = firehose_raw(server, path, body, request_id="env-1")
    assert status == 400
    assert_answer(answer, "env-1", f"parse error ({signal}): {error}")


def test_bad_gzip_body_answers_400(server: SpanlakeServer) -> None:
    headers = {"X-Amz-Firehose-Access-Key": KEY, "Content-Encoding": "gzip", "X-Amz-Firehose-Request-Id": "gz"}
    status, answer = post(server.http_url + METRICS, b"\x1f\x8b\x08\x00garbage", headers)
    assert status == 400
    assert json.loads(answer)["errorMessage"].startswith("parse error (metrics): malformed gzip body")


def test_gzip_body_and_missing_request_id(server: SpanlakeServer) -> None:
    body = gzip.compress(json.dumps({"records": []}).encode())
    headers = {"X-Amz-Firehose-Access-Key": KEY, "Content-Encoding": "gzip"}
    status, answer = post(server.http_url + METRICS, body, headers)
    assert status == 200
    assert_answer(json.loads(answer), "")  # neither header nor body id: "" (micromegas's default)


@pytest.mark.parametrize(
    ("key", "error"), [(None, "missing X-Amz-Firehose-Access-Key"), ("wrong-key", "invalid access key")]
)
@pytest.mark.parametrize("path", [METRICS, LOGS])
def test_access_key_is_checked(server: SpanlakeServer, path: str, key: str | None, error: str) -> None:
    status, answer = firehose(server, path, [cloudwatch_logs("/denied", [("d", 1, "x")])], key=key, request_id="a1")
    assert status == 401
    assert_answer(answer, "a1", error)
    assert process_ids(server, "/denied") == []
    # A bearer key is not what Firehose routes read.
    status, _ = post(server.http_url + path, b"{}", {"Authorization": f"Bearer {KEY}"})
    assert status == 401


@pytest.fixture(scope="module")
def keyless_server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    root = tmp_path_factory.mktemp("firehose-keyless")
    server = SpanlakeServer(
        database_url=postgres.new_database(), data_dir=root / "data", object_store_uri=(root / "lake").as_uri()
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("path", [METRICS, LOGS])
def test_keyless_server_takes_firehose_without_access_key(keyless_server: SpanlakeServer, path: str) -> None:
    """micromegas's dev-mode test: without any key, Firehose routes are as open as the others."""
    status, answer = firehose(keyless_server, path, [], key=None, request_id="open-1")
    assert status == 200
    assert_answer(answer, "open-1")


def test_keyless_server_stores_firehose_logs(keyless_server: SpanlakeServer) -> None:
    records = [cloudwatch_logs("/open/group", [("e1", 1_700_000_000_000, "open hello")])]
    status, answer = firehose(keyless_server, LOGS, records, key=None, request_id="open-2")
    assert (status, answer.get("errorMessage")) == (200, None)
    pid = process_id(keyless_server, "/open/group")
    found = rows(keyless_server, f"SELECT msg FROM view_instance('log_entries', '{pid}')")
    assert [r["msg"] for r in found] == ["open hello"]


# --- webhook ---------------------------------------------------------------------------------------


def webhook(server: SpanlakeServer, body: bytes, **headers: str) -> tuple[int, bytes]:
    return post(server.http_url + "/ingestion/webhook", body, {"Authorization": f"Bearer {KEY}", **headers})


def test_webhook_body_becomes_one_log_entry(server: SpanlakeServer) -> None:
    name = f"gitlab-{uuid.uuid4().hex[:8]}"
    meta = {"X-Micromegas-Service-Name": name, "X-Micromegas-Service-Namespace": "ci", "X-Micromegas-Target": "push"}
    body = json.dumps({"object_kind": "push", "ref": "main"}).encode()
    before = time.time_ns()
    assert webhook(server, body, **meta, **{"X-Gitlab-Event-UUID": "1"}) == (200, b"")
    assert webhook(server, body, **meta, **{"X-Gitlab-Event-UUID": "1"}) == (200, b"")  # a retry: stored once
    assert webhook(server, body, **meta, **{"X-Gitlab-Event-UUID": "2"}) == (200, b"")  # another delivery
    assert webhook(server, b"caf\xc3\xa9 \xff", **meta, **{"X-Gitlab-Event-UUID": "3"}) == (200, b"")
    pid = process_id(server, f"ci/{name}")
    logs = rows(server, f"SELECT time, level, target, msg FROM view_instance('log_entries', '{pid}') ORDER BY msg")
    assert [(r["msg"], r["level"], r["target"]) for r in logs] == [
        ("café \ufffd", 4, "push"),
        (body.decode(), 4, "push"),
        (body.decode(), 4, "push"),
    ]
    assert all(r["time"].value >= before // 1000 * 1000 for r in logs)  # no record time: the arrival time


def test_webhook_gzip_body(server: SpanlakeServer) -> None:
    name = f"gz-{uuid.uuid4().hex[:8]}"
    body = b'{"event": "deploy"}'
    assert webhook(server, gzip.compress(body), **{"X-Micromegas-Service-Name": name, "Content-Encoding": "gzip"}) == (
        200,
        b"",
    )
    pid = process_id(server, name)
    logs = rows(server, f"SELECT msg, target FROM view_instance('log_entries', '{pid}')")
    assert [(r["msg"], r["target"]) for r in logs] == [(body.decode(), "")]


def test_webhook_refusals(server: SpanlakeServer) -> None:
    assert webhook(server, b"") == (400, b"empty body")
    status, text = webhook(server, b"\x1f\x8b\x08\x00bad", **{"Content-Encoding": "gzip"})
    assert status == 400 and text.startswith(b"malformed gzip body")
    status, _ = post(server.http_url + "/ingestion/webhook", b"x")  # no bearer key
    assert status == 401
    assert http("GET", server.http_url + "/health") == (200, b"ok")
