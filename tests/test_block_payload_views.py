"""A block body as the micromegas sink writes it is stored from a view of the request body (no decode,
no re-encode of its payload); any other layout is decoded and encoded again. Either way the stored bytes
are exactly micromegas's `{dependencies, objects}` envelope."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import lz4.frame
import pytest
from harness import RUST_FIXTURES, PostgresServer, SpanlakeServer, post, running_server

from spanlake.lakehouse.object_store import ObjectStore
from spanlake.server.wire import WireError, parse_block

EXPECTED = json.loads((RUST_FIXTURES / "expected.json").read_text())
BLOCKS = [block for stream in EXPECTED["streams"] for block in stream["blocks"]]


def fixture_body(block: dict) -> bytes:
    return (RUST_FIXTURES / block["files"]["insert_block_request"]).read_bytes()


def stored_blob(block: dict) -> bytes:
    return (RUST_FIXTURES / block["files"]["stored_payload_blob"]).read_bytes()


@pytest.mark.parametrize("block", BLOCKS, ids=[block["block_id"][:8] for block in BLOCKS])
def test_a_sink_body_gives_a_view_of_its_stored_payload(block: dict) -> None:
    record, stored = parse_block(bytearray(fixture_body(block)))
    assert isinstance(stored, memoryview)
    assert bytes(stored) == stored_blob(block)
    assert (str(record.block_id), record.payload_size) == (block["block_id"], len(stored_blob(block)))
    assert (record.nb_objects, record.object_offset) == (block["nb_objects"], block["object_offset"])


def cbor_map(entries: list[tuple[str, bytes]]) -> bytes:
    """A CBOR map of texts to already encoded values, in the order given."""
    assert len(entries) < 24
    return bytes([0xA0 | len(entries)]) + b"".join(cbor2.dumps(key) + value for key, value in entries)


def sink_entries(block: dict) -> list[tuple[str, bytes]]:
    return [(key, cbor2.dumps(value)) for key, value in cbor2.loads(fixture_body(block)).items()]


def with_payload(block: dict, payload: bytes) -> bytes:
    """The block's body with its payload entry's value replaced by `payload` (encoded bytes)."""
    return cbor_map([(key, payload if key == "payload" else value) for key, value in sink_entries(block)])


def buffers(block: dict) -> tuple[bytes, bytes]:
    payload = cbor2.loads(fixture_body(block))["payload"]
    return payload["dependencies"], payload["objects"]


def legacy_payload(block: dict) -> bytes:
    """The payload's buffers as arrays of integers (older sinks)."""
    dependencies, objects = buffers(block)
    return cbor_map([("dependencies", cbor2.dumps(list(dependencies))), ("objects", cbor2.dumps(list(objects)))])


def long_head(data: bytes) -> bytes:
    """A byte string with a 4-byte length head where one byte would do (valid CBOR, not cbor2's)."""
    return b"\x5a" + len(data).to_bytes(4, "big") + data


def indefinite(data: bytes) -> bytes:
    """A byte string of indefinite length, in two chunks."""
    return b"\x5f" + cbor2.dumps(data[:5]) + cbor2.dumps(data[5:]) + b"\xff"


LAYOUTS: dict[str, Callable[[dict], bytes]] = {
    "objects before dependencies": lambda b: with_payload(
        b, cbor_map([("objects", cbor2.dumps(buffers(b)[1])), ("dependencies", cbor2.dumps(buffers(b)[0]))])
    ),
    "length heads longer than needed": lambda b: with_payload(
        b, cbor_map([("dependencies", long_head(buffers(b)[0])), ("objects", long_head(buffers(b)[1]))])
    ),
    "indefinite-length objects": lambda b: with_payload(
        b, cbor_map([("dependencies", cbor2.dumps(buffers(b)[0])), ("objects", indefinite(buffers(b)[1]))])
    ),
    "legacy integer arrays": lambda b: with_payload(b, legacy_payload(b)),
    "a tagged extra field": lambda b: cbor_map([*sink_entries(b), ("extra", cbor2.dumps(cbor2.CBORTag(4000, "x")))]),
    "payload sent twice, last one legacy": lambda b: cbor_map([*sink_entries(b), ("payload", legacy_payload(b))]),
    "an extra field of 2000 items": lambda b: cbor_map([*sink_entries(b), ("extra", cbor2.dumps(list(range(2000))))]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_other_layouts_are_stored_encoded_again_as_micromegas_stores_them(layout: str) -> None:
    block = BLOCKS[2]
    record, stored = parse_block(bytearray(LAYOUTS[layout](block)))
    assert isinstance(stored, bytes)
    assert stored == stored_blob(block)
    assert str(record.block_id) == block["block_id"]


def test_payload_first_or_between_fields_is_still_a_view() -> None:
    block = BLOCKS[2]
    payload = dict(sink_entries(block))["payload"]
    others = [entry for entry in sink_entries(block) if entry[0] != "payload"]
    for order in ([("payload", payload), *others], [*others[:2], ("payload", payload), *others[2:]]):
        record, stored = parse_block(bytearray(cbor_map(order)))
        assert isinstance(stored, memoryview) and bytes(stored) == stored_blob(block)
        assert str(record.stream_id) == block["stream_id"]


@pytest.mark.parametrize("cut", [1, 9, 200, 5000])
def test_a_truncated_body_is_malformed_cbor(cut: int) -> None:
    body = large_body(BLOCKS[2], 64 * 1024)
    with pytest.raises(WireError, match="malformed CBOR"):
        parse_block(bytearray(body[:-cut]))


def large_body(block: dict, size: int, block_id: uuid.UUID | None = None) -> bytes:
    """The block's body with a new id and an objects frame of `size` random (incompressible) bytes."""
    message = cbor2.loads(fixture_body(block))
    message["payload"]["objects"] = lz4.frame.compress(os.urandom(size))
    message["block_id"] = str(block_id or uuid.uuid4())
    return cbor2.dumps(message)


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    """One server for the module, the fixture's process and streams uploaded."""
    with running_server(postgres, tmp_path_factory.mktemp("views")) as running:
        for step in EXPECTED["upload_sequence"]:
            if step["endpoint"] != "/ingestion/insert_block":
                body = (RUST_FIXTURES / step["file"]).read_bytes()
                assert post(running.http_url + step["endpoint"], body)[0] == 200
        yield running


def stored_object(server: SpanlakeServer, block: dict, block_id: uuid.UUID) -> bytes:
    return server.read_object(f"blobs/{block['process_id']}/{block['stream_id']}/{block_id}")


def expected_stored(body: bytes) -> bytes:
    return cbor2.dumps(cbor2.loads(body)["payload"])


def test_a_4_mib_block_is_stored_byte_for_byte(server: SpanlakeServer) -> None:
    block, block_id = BLOCKS[2], uuid.uuid4()
    body = large_body(block, 4 << 20, block_id)
    assert post(server.http_url + "/ingestion/insert_block", body)[0] == 200
    assert stored_object(server, block, block_id) == expected_stored(body)
    row = server.sql("SELECT payload_size FROM blocks WHERE block_id = $1", block_id)
    assert row == [{"payload_size": len(expected_stored(body))}]


def test_a_chunked_body_of_no_declared_length_is_stored(server: SpanlakeServer) -> None:
    block, block_id = BLOCKS[2], uuid.uuid4()
    body = large_body(block, 300_000, block_id)
    chunks = iter([body[:1000], body[1000:200_000], body[200_000:]])
    request = urllib.request.Request(server.http_url + "/ingestion/insert_block", data=chunks, method="POST")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    assert stored_object(server, block, block_id) == expected_stored(body)


def test_a_layout_encoded_again_is_stored_as_micromegas_stores_it(server: SpanlakeServer) -> None:
    block = BLOCKS[2]
    body = LAYOUTS["objects before dependencies"](block)
    assert post(server.http_url + "/ingestion/insert_block", body)[0] == 200
    assert stored_object(server, block, uuid.UUID(block["block_id"])) == stored_blob(block)


def test_object_store_takes_a_view(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path.as_uri())
    data = bytearray(b"0123456789")
    assert store.put_if_absent("blobs/a", memoryview(data)[2:7])
    assert not store.put_if_absent("blobs/a", b"other")
    assert store.get("blobs/a") == b"23456"
