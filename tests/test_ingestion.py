"""The native ingestion API against a real server, PostgreSQL and object store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import cbor2
import lz4.frame
import pytest
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, post, running_server

from spanlake.lakehouse.timestamps import parse_rfc3339_ns

EXPECTED = json.loads((RUST_FIXTURES / "expected.json").read_text())
PROCESS_ID = EXPECTED["process"]["process_info"]["process_id"]


def upload_fixture(server: SpanlakeServer, headers: dict[str, str] | None = None) -> None:
    for step in EXPECTED["upload_sequence"]:
        status, text = post(server.http_url + step["endpoint"], (RUST_FIXTURES / step["file"]).read_bytes(), headers)
        assert status == 200, (step, text)


def all_blocks() -> list[dict]:
    return [block for stream in EXPECTED["streams"] for block in stream["blocks"]]


def test_rust_fixture_is_stored_with_every_value(spanlake_server: SpanlakeServer) -> None:
    upload_fixture(spanlake_server)

    info = EXPECTED["process"]["process_info"]
    process = spanlake_server.process_row(PROCESS_ID)
    assert process is not None
    for column in ("exe", "username", "realname", "computer", "distro", "cpu_brand", "tsc_frequency", "start_ticks"):
        assert process[column] == info[column], column
    assert process["parent_process_id"] is None
    start_ns = EXPECTED["process"]["start_time_nanos_since_epoch"]
    assert int(process["start_time"].timestamp() * 1_000_000) == start_ns // 1000
    assert {p["key"]: p["value"] for p in process["properties"]} == info["properties"]

    streams = {str(s["stream_id"]): s for s in spanlake_server.stream_rows(PROCESS_ID)}
    assert set(streams) == {s["stream_id"] for s in EXPECTED["streams"]}
    for expected in EXPECTED["streams"]:
        row = streams[expected["stream_id"]]
        assert row["tags"] == expected["tags"]
        assert {p["key"]: p["value"] for p in row["properties"]} == expected["properties"]
        assert row["format"] == "micromegas-transit"
        assert cbor2.loads(row["dependencies_metadata"]) == expected["dependencies_metadata"]
        assert cbor2.loads(row["objects_metadata"]) == expected["objects_metadata"]
        request = cbor2.loads((RUST_FIXTURES / expected["insert_stream_request"]).read_bytes())
        assert row["objects_metadata"] == cbor2.dumps(request["objects_metadata"])

    rows = {str(b["block_id"]): b for b in spanlake_server.block_rows(PROCESS_ID)}
    assert len(rows) == 34
    for block in all_blocks():
        row = rows[block["block_id"]]
        assert str(row["stream_id"]) == block["stream_id"]
        for column in ("begin_ticks", "end_ticks", "nb_objects", "object_offset"):
            assert row[column] == block[column], column
        assert int(row["begin_time"].timestamp() * 1e6) == parse_rfc3339_ns(block["begin_time"]) // 1000
        assert row["payload_size"] == block["sizes"]["stored_payload_blob"]
        stored = spanlake_server.read_object(f"blobs/{PROCESS_ID}/{block['stream_id']}/{block['block_id']}")
        assert stored == (RUST_FIXTURES / block["files"]["stored_payload_blob"]).read_bytes()


def test_same_block_twice_is_stored_once(spanlake_server: SpanlakeServer) -> None:
    upload_fixture(spanlake_server)
    block = all_blocks()[0]
    body = (RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes()
    altered = cbor2.loads(body)
    altered["payload"]["objects"] = lz4.frame.compress(b"something else")
    assert post(spanlake_server.http_url + "/ingestion/insert_block", body)[0] == 200
    assert post(spanlake_server.http_url + "/ingestion/insert_block", cbor2.dumps(altered))[0] == 200

    rows = spanlake_server.sql("SELECT count(*) AS n FROM blocks WHERE block_id = $1", uuid.UUID(block["block_id"]))
    assert rows[0]["n"] == 1
    stored = spanlake_server.read_object(f"blobs/{PROCESS_ID}/{block['stream_id']}/{block['block_id']}")
    assert stored == (RUST_FIXTURES / block["files"]["stored_payload_blob"]).read_bytes()


def test_block_before_its_stream_and_process(spanlake_server: SpanlakeServer) -> None:
    block = all_blocks()[-1]
    body = (RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes()
    assert post(spanlake_server.http_url + "/ingestion/insert_block", body)[0] == 200
    assert [str(r["block_id"]) for r in spanlake_server.block_rows(PROCESS_ID)] == [block["block_id"]]
    assert spanlake_server.process_row(PROCESS_ID) is None


def test_legacy_int_array_payload_is_stored_as_byte_strings(spanlake_server: SpanlakeServer) -> None:
    block = all_blocks()[3]
    message = cbor2.loads((RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes())
    message["payload"] = {k: list(v) for k, v in message["payload"].items()}
    assert post(spanlake_server.http_url + "/ingestion/insert_block", cbor2.dumps(message))[0] == 200
    stored = spanlake_server.read_object(f"blobs/{PROCESS_ID}/{block['stream_id']}/{block['block_id']}")
    assert stored == (RUST_FIXTURES / block["files"]["stored_payload_blob"]).read_bytes()


def _block_message() -> dict:
    block = all_blocks()[2]
    return cbor2.loads((RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes())


def _with(message: dict, **changes: object) -> bytes:
    changed = dict(message)
    for key, value in changes.items():
        if value is None:
            changed.pop(key)
        else:
            changed[key] = value
    return cbor2.dumps(changed)


BAD_BLOCKS = {
    "malformed CBOR": (b"\xa2\x61", "malformed CBOR"),
    "not a map": (cbor2.dumps([1, 2, 3]), "must be a CBOR map"),
    "empty body": (b"", "empty body"),
    "missing field": (_with(_block_message(), nb_objects=None), "missing field 'nb_objects'"),
    "non-UUID id": (_with(_block_message(), block_id="block-1"), "'block_id' is not a UUID"),
    "bad RFC3339": (_with(_block_message(), begin_time="yesterday"), "'begin_time'"),
    "wrong envelope": (_with(_block_message(), payload={"objects": b""}), "exactly 'dependencies' and 'objects'"),
    "payload not a map": (_with(_block_message(), payload=b"\x00"), "'payload' must be a map"),
    "negative nb_objects": (_with(_block_message(), nb_objects=-1), "'nb_objects' must be an integer"),
}


@pytest.mark.parametrize("case", list(BAD_BLOCKS))
def test_bad_blocks_get_400_and_store_nothing(spanlake_server: SpanlakeServer, case: str) -> None:
    upload_fixture(spanlake_server)
    before = spanlake_server.sql("SELECT count(*) AS n FROM blocks")[0]["n"]
    body, message = BAD_BLOCKS[case]
    status, text = post(spanlake_server.http_url + "/ingestion/insert_block", body)
    assert status == 400
    assert message in text.decode()
    assert spanlake_server.sql("SELECT count(*) AS n FROM blocks")[0]["n"] == before
    assert (
        post(
            spanlake_server.http_url + "/ingestion/insert_block",
            (RUST_FIXTURES / all_blocks()[0]["files"]["insert_block_request"]).read_bytes(),
        )[0]
        == 200
    )


def test_bad_process_and_stream_bodies(spanlake_server: SpanlakeServer) -> None:
    process = cbor2.loads((RUST_FIXTURES / "process.cbor").read_bytes())
    for body, message in [
        (cbor2.dumps({**process, "start_time": "2024-13-45T00:00:00Z"}), "'start_time'"),
        (cbor2.dumps({**process, "process_id": 42}), "'process_id' is not a UUID"),
        (cbor2.dumps({**process, "properties": {"a": 1}}), "'properties' must be a map of strings"),
        (cbor2.dumps({**process, "tsc_frequency": "fast"}), "'tsc_frequency' must be an integer"),
    ]:
        status, text = post(spanlake_server.http_url + "/ingestion/insert_process", body)
        assert (status, message in text.decode()) == (400, True), text
    stream = cbor2.loads(next((RUST_FIXTURES / "streams").iterdir()).read_bytes())
    for body, message in [
        (cbor2.dumps({**stream, "tags": "cpu"}), "'tags' must be an array of strings"),
        (cbor2.dumps({**stream, "objects_metadata": [{"name": "x"}]}), "objects_metadata[0]"),
    ]:
        status, text = post(spanlake_server.http_url + "/ingestion/insert_stream", body)
        assert (status, message in text.decode()) == (400, True), text
    assert spanlake_server.sql("SELECT count(*) AS n FROM processes")[0]["n"] == 0
    assert spanlake_server.sql("SELECT count(*) AS n FROM streams")[0]["n"] == 0


def test_reserved_properties_are_stripped(spanlake_server: SpanlakeServer) -> None:
    process = cbor2.loads((RUST_FIXTURES / "process.cbor").read_bytes())
    process["properties"] = {"micromegas.audience": "forged", "kept": "yes"}
    assert post(spanlake_server.http_url + "/ingestion/insert_process", cbor2.dumps(process))[0] == 200
    row = spanlake_server.process_row(PROCESS_ID)
    assert [(p["key"], p["value"]) for p in row["properties"]] == [("kept", "yes")]


def test_body_over_the_limit_is_413(spanlake_server: SpanlakeServer) -> None:
    status, _ = post(spanlake_server.http_url + "/ingestion/insert_block", b"\x00" * (100 * 1024 * 1024 + 1))
    assert status == 413
    assert (
        post(spanlake_server.http_url + "/ingestion/insert_process", (RUST_FIXTURES / "process.cbor").read_bytes())[0]
        == 200
    )


def test_health_and_ready(spanlake_server: SpanlakeServer) -> None:
    from harness import http

    assert http("GET", spanlake_server.http_url + "/health") == (200, b"ok")
    assert http("GET", spanlake_server.http_url + "/ready") == (200, b"ready")


def test_api_keys(postgres: PostgresServer, tmp_path: Path) -> None:
    with running_server(postgres, tmp_path, api_key="s3cret-key") as server:
        url = server.http_url + "/ingestion/insert_process"
        body = (RUST_FIXTURES / "process.cbor").read_bytes()
        assert post(url, body)[0] == 401
        assert post(url, body, {"Authorization": "Bearer wrong"})[0] == 401
        assert post(url, body, {"Authorization": "Basic s3cret-key"})[0] == 401
        assert server.process_row(PROCESS_ID) is None
        assert post(url, body, {"Authorization": "Bearer s3cret-key"})[0] == 200
        assert server.process_row(PROCESS_ID) is not None
        from harness import http

        assert http("GET", server.http_url + "/health")[0] == 200
