"""Admin functions on a running `spanlake serve`, through the micromegas client: retiring single
partitions by file or by metadata (`micromegas.admin.retire_incompatible_partitions`), regenerating
partitions, bulk_ingest (Flight SQL CommandStatementIngest), and their refusal to non-admins."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import micromegas.admin
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from harness import PostgresServer, SpanlakeServer, running_server
from served_support import PROCESS_ID, READER_KEY, adbc_connect, micromegas_client, served_lakehouse
from test_flightsql_support import grpc_status

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
OLD_HASH = b"\x01\x00\x00\x00\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def served(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("admin")) as server:
        yield server


def _failure(run: object) -> tuple[str | None, str]:
    with pytest.raises(Exception) as caught:
        run()  # type: ignore[operator]
    return grpc_status(caught.value)


def _old_partition(server: SpanlakeServer, view_set_name: str, begin: dt.datetime, file_path: str | None) -> None:
    """A partition written under an older schema (what a schema change leaves behind)."""
    server.sql(
        "INSERT INTO lakehouse_partitions (view_set_name, view_instance_id, begin_insert_time, end_insert_time,"
        " updated, file_path, file_size, file_schema_hash, source_data_hash, num_rows, partition_format_version)"
        " VALUES ($1, 'global', $2, $3, now(), $4, $5, $6, $7, 0, 2)",
        view_set_name,
        begin,
        begin + dt.timedelta(minutes=1),
        file_path,
        0 if file_path is None else 1234,
        OLD_HASH,
        b"\x00" * 8,
    )


def _partitions(server: SpanlakeServer, view_set_name: str) -> list[dict]:
    return server.sql(
        "SELECT * FROM lakehouse_partitions WHERE view_set_name = $1 ORDER BY begin_insert_time", view_set_name
    )


def test_retire_incompatible_partitions_retires_exactly_the_old_schema_ones(served: SpanlakeServer) -> None:
    begin = dt.datetime(2020, 1, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    _old_partition(served, "log_entries", begin, None)
    _old_partition(served, "log_entries", begin + dt.timedelta(minutes=1), "views/log_entries/global/old.parquet")
    client = micromegas_client(served)
    assert len(micromegas.admin.list_incompatible_partitions(client, "log_entries")) == 2
    result = micromegas.admin.retire_incompatible_partitions(client, "log_entries")
    assert result[["view_set_name", "view_instance_id", "partitions_retired", "partitions_failed"]].to_dict(
        "records"
    ) == [
        {"view_set_name": "log_entries", "view_instance_id": "global", "partitions_retired": 2, "partitions_failed": 0}
    ]
    assert result["storage_freed_bytes"][0] == 1234
    assert result["retirement_messages"][0][0] == (
        "SUCCESS: Retired partition log_entries/global [2020-01-01 12:00:00.250 UTC, 2020-01-01 12:01:00.250 UTC)"
    )
    assert len(result["retirement_messages"][0]) == 2  # only the two old-schema partitions were touched
    assert not [p for p in _partitions(served, "log_entries") if bytes(p["file_schema_hash"]) == OLD_HASH]
    queued = served.sql("SELECT file_path, file_size FROM temporary_files WHERE file_path LIKE '%old.parquet'")
    assert queued == [{"file_path": "views/log_entries/global/old.parquet", "file_size": 1234}]
    assert micromegas.admin.list_incompatible_partitions(client, "log_entries").empty


def test_retire_partition_by_metadata_reports_what_it_cannot_find(served: SpanlakeServer) -> None:
    sql = (
        "SELECT retire_partition_by_metadata('streams', 'global', CAST('2001-01-01T00:00:00Z' AS TIMESTAMP),"
        " CAST('2001-01-01T00:01:00Z' AS TIMESTAMP), decode('0100000000000000', 'hex')) AS message"
    )
    assert micromegas_client(served).query(sql)["message"].tolist() == [
        "ERROR: Partition not found: streams/global [2001-01-01 00:00:00 UTC, 2001-01-01 00:01:00 UTC)"
    ]
    with_null = "SELECT retire_partition_by_metadata('streams', NULL, now(), now(), decode('00', 'hex')) AS message"
    assert micromegas_client(served).query(with_null)["message"].tolist() == ["ERROR: all arguments must be non-null"]


def test_retire_partition_by_file_rolls_a_failed_batch_back(served: SpanlakeServer) -> None:
    # A partition of its own (no maintenance rewrites it meanwhile): an old-schema one of `blocks`.
    path = f"views/blocks/global/{uuid.uuid4()}.parquet"
    _old_partition(served, "blocks", dt.datetime(2019, 5, 1, tzinfo=dt.UTC), path)
    client = micromegas_client(served)
    batch = client.query(
        f"SELECT retire_partition_by_file(path) AS message FROM (VALUES ('{path}'), ('views/nowhere.parquet'),"
        " (NULL)) AS t(path)"
    )
    assert batch["message"].tolist() == [
        f"ROLLED_BACK: Retired partition {path}",
        "ERROR: Partition not found: views/nowhere.parquet",
        "ERROR: file_path cannot be null",
    ]
    assert any(p["file_path"] == path for p in _partitions(served, "blocks"))
    single = client.query(f"SELECT retire_partition_by_file('{path}') AS message")
    assert single["message"].tolist() == [f"SUCCESS: Retired partition {path}"]
    assert not any(p["file_path"] == path for p in _partitions(served, "blocks"))
    assert served.sql("SELECT file_size FROM temporary_files WHERE file_path = $1", path) == [{"file_size": 1234}]


def test_regenerate_partitions_rebuilds_from_source(served: SpanlakeServer) -> None:
    client = micromegas_client(served)
    [first] = [p for p in _partitions(served, "processes") if p["num_rows"]][:1]
    # The minute holding it: whatever the maintenance daemon merges meanwhile stays inside it.
    begin = first["begin_insert_time"].replace(second=0, microsecond=0)
    end = begin + dt.timedelta(minutes=1)
    inside = "SELECT * FROM lakehouse_partitions WHERE view_set_name = 'processes' AND begin_insert_time >= $1"
    inside += " AND end_insert_time <= $2"
    # Blank their source counts, to tell the rebuilt partition from an identical one already there.
    served.sql(
        "UPDATE lakehouse_partitions SET source_data_hash = $3 WHERE view_set_name = 'processes'"
        " AND begin_insert_time >= $1 AND end_insert_time <= $2",
        begin,
        end,
        b"\x00" * 8,
    )
    before = {p["file_path"] for p in served.sql(inside, begin, end)}
    arguments = f"'processes', '{begin.isoformat()}', '{end.isoformat()}', 60"
    log = client.query(f"SELECT time, msg FROM regenerate_partitions({arguments})")
    assert len(log) == 1 and "built from" in log["msg"][0] and "1 rows" in log["msg"][0], log["msg"].tolist()
    [rebuilt] = served.sql(inside, begin, end)
    assert rebuilt["begin_insert_time"] == begin and rebuilt["end_insert_time"] == end
    assert rebuilt["file_path"] not in before and rebuilt["num_rows"] == 1
    assert client.query("SELECT count(*) AS n FROM processes")["n"][0] == 1


def test_regenerate_partitions_refuses_a_range_it_does_not_tile(served: SpanlakeServer) -> None:
    client = micromegas_client(served)
    code, message = _failure(
        lambda: client.query(
            "SELECT * FROM regenerate_partitions('processes', '2024-01-01T00:00:00Z', '2024-01-01T00:01:30Z', 60)"
        )
    )
    assert code == "INVALID_ARGUMENT"
    assert message.startswith("error building dataframe: regenerate_partitions: delta (60s) does not exactly tile")
    code, message = _failure(
        lambda: client.query(
            "SELECT * FROM regenerate_partitions('no_such_view', '2024-01-01T00:00:00Z', '2024-01-01T00:01:00Z', 60)"
        )
    )
    assert code == "INVALID_ARGUMENT" and "unknown view set 'no_such_view'" in message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT retire_partition_by_file('x') AS message",
        "SELECT * FROM regenerate_partitions('processes', '2024-01-01T00:00:00Z', '2024-01-01T00:01:00Z', 60)",
    ],
)
def test_admin_functions_do_not_exist_for_readers(served: SpanlakeServer, sql: str) -> None:
    code, message = _failure(lambda: micromegas_client(served, READER_KEY).query(sql))
    assert code == "INVALID_ARGUMENT"
    assert "Invalid function" in message or "not found" in message, message


def test_unused_uuid_is_not_a_partition(served: SpanlakeServer) -> None:
    path = f"views/{uuid.uuid4()}.parquet"
    assert micromegas_client(served).query(f"SELECT retire_partition_by_file('{path}') AS m")["m"].tolist() == [
        f"ERROR: Partition not found: {path}"
    ]


# ------------------------------------------------------------------------------------------------
# bulk_ingest (Flight SQL CommandStatementIngest)


def _replica(served: SpanlakeServer) -> dict[str, pa.Table]:
    """The fixture's process and its log stream, under new ids: what a replication tool sends."""
    process_id, stream_id = str(uuid.uuid4()), str(uuid.uuid4())
    process = served.process_row(PROCESS_ID)
    [stream] = [s for s in served.stream_rows(PROCESS_ID) if "log" in s["tags"]]
    blocks = [b for b in served.block_rows(PROCESS_ID) if b["stream_id"] == stream["stream_id"]]
    block_ids = [str(uuid.uuid4()) for _ in blocks]
    ts = pa.timestamp("ns", tz="UTC")
    return {
        "processes": pa.table(
            {
                "process_id": [process_id],
                **{k: [process[k]] for k in ("exe", "username", "realname", "computer", "distro", "cpu_brand")},
                "tsc_frequency": [process["tsc_frequency"]],
                "start_time": pa.array([process["start_time"]], ts),
                "start_ticks": [process["start_ticks"]],
                "insert_time": pa.array([process["insert_time"]], ts),
                "parent_process_id": [""],
                "properties": [[{"key": "replica", "value": "yes"}]],
                "audience": ["public"],
            }
        ),
        "streams": pa.table(
            {
                "stream_id": [stream_id],
                "process_id": [process_id],
                "dependencies_metadata": [stream["dependencies_metadata"]],
                "objects_metadata": [stream["objects_metadata"]],
                "tags": [stream["tags"]],
                "properties": pa.array([[]], pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))),
                "insert_time": pa.array([stream["insert_time"]], ts),
                "format": [stream["format"]],
            }
        ),
        "blocks": pa.table(
            {
                "block_id": block_ids,
                "stream_id": [stream_id] * len(blocks),
                "process_id": [process_id] * len(blocks),
                "begin_time": pa.array([b["begin_time"] for b in blocks], ts),
                "begin_ticks": [b["begin_ticks"] for b in blocks],
                "end_time": pa.array([b["end_time"] for b in blocks], ts),
                "end_ticks": [b["end_ticks"] for b in blocks],
                "nb_objects": pa.array([b["nb_objects"] for b in blocks], pa.int32()),
                "object_offset": [b["object_offset"] for b in blocks],
                "payload_size": [b["payload_size"] for b in blocks],
                "insert_time": pa.array([b["insert_time"] for b in blocks], ts),
            }
        ),
        "payloads": pa.table(
            {
                "process_id": [process_id] * len(blocks),
                "stream_id": [stream_id] * len(blocks),
                "block_id": block_ids,
                "payload": [
                    served.read_object(f"blobs/{PROCESS_ID}/{stream['stream_id']}/{b['block_id']}") for b in blocks
                ],
            }
        ),
    }


def test_bulk_ingest_replicates_a_process(served: SpanlakeServer) -> None:
    client = micromegas_client(served)
    replica = _replica(served)
    for name in ("processes", "streams", "payloads", "blocks"):
        assert client.bulk_ingest(name, replica[name]).record_count == replica[name].num_rows
    assert client.bulk_ingest("processes", replica["processes"]).record_count == 1  # idempotent
    with adbc_connect(served) as conn, conn.cursor() as cur:  # ADBC's ingest is the same command
        assert cur.adbc_ingest("processes", replica["processes"], mode="append") == 1
    process_id = replica["processes"]["process_id"][0].as_py()
    row = served.process_row(process_id)
    assert row["exe"] == served.process_row(PROCESS_ID)["exe"] and row["parent_process_id"] is None
    assert [tuple(p) for p in row["properties"]] == [("replica", "yes")]
    count = "SELECT count(*) AS n FROM view_instance('log_entries', '{}')"
    assert client.query(count.format(process_id))["n"][0] == client.query(count.format(PROCESS_ID))["n"][0] > 0


def test_bulk_ingest_refuses_readers_unknown_tables_and_bad_rows(served: SpanlakeServer) -> None:
    replica = _replica(served)
    with pytest.raises(flight.FlightUnauthorizedError, match="bulk_ingest requires admin privileges"):
        micromegas_client(served, READER_KEY).bulk_ingest("processes", replica["processes"])
    client = micromegas_client(served)
    code, message = _failure(lambda: client.bulk_ingest("log_entries", replica["processes"]))
    assert code == "INVALID_ARGUMENT"
    assert (
        message
        == "bulk ingest for table log_entries not supported (supported tables: processes, streams, blocks, payloads)"
    )
    code, message = _failure(lambda: client.bulk_ingest("streams", replica["processes"]))
    assert (code, message) == ("INVALID_ARGUMENT", "error ingesting into streams: missing column 'stream_id'")
    assert client.bulk_ingest("streams", replica["streams"].slice(0, 0)).record_count == 0
    code, message = _failure(lambda: client.bulk_ingest("streams", replica["processes"]))
    assert (code, message) == ("INVALID_ARGUMENT", "error ingesting into streams: missing column 'stream_id'")
    bad = replica["blocks"].set_column(0, "block_id", pa.array(["nope"] * replica["blocks"].num_rows))
    code, message = _failure(lambda: client.bulk_ingest("blocks", bad))
    assert (code, message) == (
        "INVALID_ARGUMENT",
        "error ingesting into blocks: 'nope' in column 'block_id' is not a UUID",
    )
    assert served.sql(
        "SELECT count(*) AS n FROM blocks WHERE stream_id = $1", uuid.UUID(replica["streams"]["stream_id"][0].as_py())
    ) == [{"n": 0}]


def test_bulk_ingest_replicates_a_lake_from_its_own_views(
    served: SpanlakeServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    """A replication tool's round: the views and get_payload(...) of one server into an empty one."""
    source = micromegas_client(served)
    where = f"WHERE process_id = '{PROCESS_ID}'"
    tables = {name: source.query_arrow(f"SELECT * FROM {name} {where}") for name in ("processes", "streams", "blocks")}
    tables["payloads"] = source.query_arrow(
        "SELECT process_id, stream_id, block_id, get_payload(process_id, stream_id, block_id) AS payload"
        f" FROM blocks {where}"
    )
    with served_lakehouse(postgres, tmp_path, upload=False) as replica:
        target = micromegas_client(replica)
        for name in ("processes", "streams", "payloads", "blocks"):
            assert target.bulk_ingest(name, tables[name]).record_count == tables[name].num_rows > 0
        assert replica.block_rows(PROCESS_ID) == served.block_rows(PROCESS_ID)
        copied, original = replica.process_row(PROCESS_ID), served.process_row(PROCESS_ID)
        # The views carry properties as JSONB objects, whose keys are sorted: compare them as maps.
        assert dict(copied.pop("properties")) == dict(original.pop("properties")) != {}
        assert copied == original
        count = f"SELECT level, count(*) AS n FROM view_instance('log_entries', '{PROCESS_ID}') GROUP BY level"
        expected = source.query(count).sort_values("level").to_dict("records")
        assert target.query(count).sort_values("level").to_dict("records") == expected


def test_list_partitions_of_an_empty_catalog_answers_no_rows(postgres: PostgresServer, tmp_path: Path) -> None:
    """A lake with no data has no partition: it lists none, counted or not (an empty dataset has no
    fragment, which DataFusion's plans refused, and its sort still refuses)."""
    with running_server(postgres, tmp_path, api_key="admin-key") as server:
        assert server.sql("SELECT count(*) AS n FROM lakehouse_partitions") == [{"n": 0}]
        client = micromegas_client(server, "admin-key")
        assert client.query("SELECT count(*) AS n FROM list_partitions()")["n"].tolist() == [0]
        assert client.query("SELECT view_set_name FROM list_partitions()").empty
        sorted_sql = "SELECT view_set_name FROM list_partitions() ORDER BY view_set_name, begin_insert_time"
        assert client.query(sorted_sql).empty
