"""The web UI's HTTP side on a server with API keys: sign-in (HttpOnly, SameSite=Strict cookie), every
page and UI route behind it, admin functions out of reach of non-admins, micromegas's
`/api/query-stream` framing read back with pyarrow, `/api/health`, and the Perfetto attachment."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from harness import PostgresServer, SpanlakeServer, http, post, running_server, wait_until
from micromegas.auth import StaticTokenAuthProvider
from micromegas.flightsql.client import FlightSQLClient
from web_support import RUST_PROCESS_ID, Browser, upload_rust_fixture, watched_page

from spanlake.lakehouse.timestamps import parse_rfc3339_ns

ADMIN_KEY = "admin-key-for-the-web-tests"
VIEWER_KEY = "viewer-key-for-the-web-tests"
KEYS = json.dumps([{"name": "admin", "key": ADMIN_KEY}, {"name": "viewer", "key": VIEWER_KEY}])
RETIRE = "SELECT * FROM retire_partitions('log_entries', 'global', TIMESTAMP '2020-01-01T00:00:00Z', now())"
RANGE = {"begin": "2026-11-23T08:00:00Z", "end": "2026-11-23T09:00:00Z"}  # the Rust fixture's hour


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    env = {"SPANLAKE_API_KEYS": KEYS, "SPANLAKE_ADMINS": "admin"}
    with running_server(postgres, tmp_path_factory.mktemp("web-api"), extra_env=env) as running:
        upload_rust_fixture(running.http_url, bearer(ADMIN_KEY))
        client = flight_client(running, ADMIN_KEY)
        sql = f"SELECT process_id FROM processes WHERE process_id = '{RUST_PROCESS_ID}'"
        wait_until(lambda: len(client.query(sql)) == 1, 30, "the fixture in the processes view")
        yield running


def flight_client(server: SpanlakeServer, key: str) -> FlightSQLClient:
    return FlightSQLClient(server.flightsql_url, auth_provider=StaticTokenAuthProvider(key))


def post_json(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return post(url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def get_no_redirect(
    url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str]]:
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers or {}), timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def test_pages_and_ui_routes_need_a_key(server: SpanlakeServer) -> None:
    pid = RUST_PROCESS_ID
    for path in ("/", f"/process/{pid}", f"/process/{pid}/spans", "/sql"):
        status, headers = get_no_redirect(server.http_url + path)
        assert (status, headers["Location"]) == (303, "/login?" + urllib.parse.urlencode({"next": path})), path
    for path in (f"/api/process/{pid}/async-spans", f"/api/perfetto/{pid}"):
        status, body = http("GET", server.http_url + path)
        assert status == 401 and "unauthorized" in json.loads(body)["error"], path
    assert post_json(server.http_url + "/api/sql", {"sql": "SELECT 1"})[0] == 401
    assert post_json(server.http_url + "/api/query-stream", {"sql": "SELECT 1"})[0] == 401
    status, _ = get_no_redirect(server.http_url + "/", {"Cookie": "spanlake_key=not-a-key"})
    assert status == 303
    status, body = http("GET", server.http_url + "/api/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "healthy" and health["flightsql_connected"] is True
    assert http("GET", server.http_url + "/static/app.css")[0] == 200


def test_login_redirects_only_inside_the_site(server: SpanlakeServer) -> None:
    for target, expected in [
        ("/sql?q=1", "/sql?q=1"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
    ]:
        form = urllib.parse.urlencode({"key": VIEWER_KEY, "next": target}).encode()
        status, headers = get_no_redirect(server.http_url + "/login", data=form)
        assert (status, headers["Location"]) == (303, expected), target
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    status, headers = get_no_redirect(
        server.http_url + "/login", data=urllib.parse.urlencode({"key": "wrong", "next": "/"}).encode()
    )
    assert status == 401 and "Set-Cookie" not in headers


def test_non_admins_never_run_admin_functions(server: SpanlakeServer) -> None:
    sql_url = server.http_url + "/api/sql"
    status, body = post_json(sql_url, {"sql": RETIRE}, bearer(VIEWER_KEY))
    assert (
        status == 403 and json.loads(body)["error"] == "the function 'retire_partitions' is reserved to admin API keys"
    )
    status, body = post_json(
        sql_url, {"sql": RETIRE.replace("retire_partitions", "RETIRE_PARTITIONS  ")}, bearer(VIEWER_KEY)
    )
    assert status == 403
    # Past the wording check, the viewer's session has no such function at all.
    quoted = RETIRE.replace("retire_partitions", '"retire_partitions"')
    status, body = post_json(sql_url, {"sql": quoted}, bearer(VIEWER_KEY))
    assert status == 400 and "retire_partitions" in json.loads(body)["error"]
    status, body = post_json(server.http_url + "/api/query-stream", {"sql": RETIRE}, bearer(VIEWER_KEY))
    assert status == 403 and json.loads(body) == {
        "type": "error",
        "code": "FORBIDDEN",
        "message": "the function 'retire_partitions' is reserved to admin API keys",
    }
    status, body = post_json(sql_url, {"sql": RETIRE}, bearer(ADMIN_KEY))
    assert status == 200, body


def read_frames(body: bytes) -> tuple[list[dict], pa.Table | None]:
    """micromegas's framing: JSON lines, each schema/batch line followed by `size` bytes of Arrow IPC."""
    headers, ipc, at = [], b"", 0
    while at < len(body):
        newline = body.index(b"\n", at)
        header = json.loads(body[at:newline])
        headers.append(header)
        at = newline + 1 + header.get("size", 0)
        ipc += body[newline + 1 : at]
    return headers, (pa.ipc.open_stream(ipc).read_all() if ipc else None)


def test_query_stream_framing(server: SpanlakeServer) -> None:
    request = {
        "sql": "SELECT time, level, msg FROM view_instance('log_entries', '$pid') WHERE level <= $level ORDER BY time",
        "params": {"pid": RUST_PROCESS_ID, "level": "3"},
        **RANGE,
    }
    status, body = post_json(server.http_url + "/api/query-stream", request, bearer(VIEWER_KEY))
    headers, table = read_frames(body)
    assert status == 200 and headers[0]["type"] == "schema" and headers[-1] == {"type": "done"}
    batches = headers[1:-1]
    assert batches and all(h["type"] == "batch" and h["rows"] > 0 for h in batches)
    expected = flight_client(server, VIEWER_KEY).query(
        f"SELECT time, level, msg FROM view_instance('log_entries', '{RUST_PROCESS_ID}')"
        " WHERE level <= 3 ORDER BY time",
        *(dt.datetime.fromisoformat(RANGE[k]) for k in ("begin", "end")),
    )
    assert table.num_rows == sum(h["rows"] for h in batches) == len(expected) > 0
    assert table.column("msg").to_pylist() == list(expected.msg)
    assert table.column("level").to_pylist() == list(expected.level)
    assert body.startswith(b'{"type":"schema","size":')

    status, body = post_json(
        server.http_url + "/api/query-stream", {"sql": "SELECT nope FROM processes"}, bearer(VIEWER_KEY)
    )
    [error], table = read_frames(body)
    assert status == 200 and table is None and error["type"] == "error" and error["code"] == "INVALID_SQL"
    assert "nope" in error["message"] and "Traceback" not in error["message"]
    assert post(server.http_url + "/api/query-stream", b"{not json", bearer(VIEWER_KEY))[0] == 400
    status, body = post_json(
        server.http_url + "/api/query-stream",
        {"sql": "SELECT 1", "begin": "yesterday", "end": "today"},
        bearer(VIEWER_KEY),
    )
    assert status == 400 and json.loads(body)["code"] == "INVALID_SQL"


def test_perfetto_attachment_is_the_trace(server: SpanlakeServer, tmp_path: Path) -> None:
    query = urllib.parse.urlencode({"spans": "both", **RANGE})
    url = f"{server.http_url}/api/perfetto/{RUST_PROCESS_ID}?{query}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=bearer(VIEWER_KEY)), timeout=60) as response:
        headers, body = dict(response.headers), response.read()
    assert headers["Content-Disposition"] == f'attachment; filename="{RUST_PROCESS_ID}-both.pftrace"'
    assert headers["Transfer-Encoding"] == "chunked"
    out = tmp_path / "cli.pftrace"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "spanlake.server.cli",
            "perfetto",
            "--process-id",
            RUST_PROCESS_ID,
            "--begin",
            RANGE["begin"],
            "--end",
            RANGE["end"],
            "-o",
            str(out),
            "--uri",
            server.flightsql_url,
            "--api-key",
            VIEWER_KEY,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert body == out.read_bytes() and len(body) > 10_000
    for path, status, message in [
        ("/api/perfetto/nope", 400, "'nope' is not a process id (a UUID)"),
        ("/api/perfetto/00000000-0000-4000-8000-000000000000", 404, "there is no process"),
        (f"/api/perfetto/{RUST_PROCESS_ID}?spans=all", 400, "'spans' must be thread, async or both"),
        (f"/api/perfetto/{RUST_PROCESS_ID}?begin=2026-11-23T09:00:00Z&end=2026-11-23T08:00:00Z", 400, "empty"),
        (f"/api/perfetto/{RUST_PROCESS_ID}?begin=soon", 400, "'begin' must be an RFC3339 timestamp"),
    ]:
        got, text = http("GET", server.http_url + path, headers=bearer(VIEWER_KEY))
        assert got == status and message in text.decode(), (path, text)


def sign_in(page: object, server: SpanlakeServer, key: str) -> None:
    page.fill("input[name=key]", key)
    page.click("form.login button")


def test_login_page_and_admin_gate_in_the_browser(server: SpanlakeServer, chrome: Browser) -> None:
    with watched_page(chrome) as watched:
        page = watched.page
        watched.expect_error("status of 401")
        watched.expect_error("status of 403")
        page.goto(server.http_url + f"/process/{RUST_PROCESS_ID}")
        assert page.url.startswith(server.http_url + "/login?next=")
        sign_in(page, server, "not-a-key")
        assert "Sign-in refused: invalid API key" in page.inner_text("#error")
        chrome.shot(page, "login")
        sign_in(page, server, VIEWER_KEY)
        page.wait_for_url(f"**/process/{RUST_PROCESS_ID}")
        assert page.locator(".count").count() == 5
        [cookie] = [c for c in chrome.context.cookies() if c["name"] == "spanlake_key"]
        assert (cookie["value"], cookie["httpOnly"], cookie["sameSite"]) == (VIEWER_KEY, True, "Strict")
        assert "spanlake_key" not in page.evaluate("document.cookie")

        page.goto(server.http_url + "/sql?" + urllib.parse.urlencode({"q": RETIRE}))
        page.click("#run")
        page.locator("#sql-error").wait_for()
        assert page.inner_text("#sql-error") == "the function 'retire_partitions' is reserved to admin API keys"

        page.click("form.logout button")
        page.wait_for_url("**/login")
        assert [c for c in chrome.context.cookies() if c["name"] == "spanlake_key"] == []
        page.goto(server.http_url + "/sql?" + urllib.parse.urlencode({"q": RETIRE}))
        sign_in(page, server, ADMIN_KEY)
        page.wait_for_url("**/sql?**")
        page.click("#run")
        page.locator("#result-table").wait_for()
        assert page.locator("#sql-error").is_hidden()


def test_find_answers_the_path_to_a_thread_span(server: SpanlakeServer) -> None:
    client = flight_client(server, VIEWER_KEY)
    [stream_id] = client.query(
        f"SELECT stream_id FROM streams WHERE process_id = '{RUST_PROCESS_ID}'"
        " AND property_get(properties, 'thread-name') = 'main'"
    ).stream_id
    begin, end = (dt.datetime.fromisoformat(RANGE[k]) for k in ("begin", "end"))
    spans = client.query(
        f"SELECT id, parent, depth, name FROM view_instance('thread_spans', '{stream_id}')", begin, end
    )
    deep = spans.sort_values(["depth", "id"], ascending=[False, True]).iloc[0]
    same_name = spans[spans.name.str.lower().str.contains(deep["name"].lower(), regex=False)]
    query = urllib.parse.urlencode({"name": deep["name"], "n": 0, "from": RANGE["begin"], "to": RANGE["end"]})
    status, body = http(
        "GET", f"{server.http_url}/api/stream/{stream_id}/thread-spans/find?{query}", headers=bearer(VIEWER_KEY)
    )
    found = json.loads(body)
    assert status == 200 and found["total"] == len(same_name) and found["complete"] is True
    by_id = spans.set_index("id")
    path = [int(i) for i in found["path"]]
    assert len(path) == by_id.loc[path[-1]].depth + 1 and by_id.loc[path[0]].depth == 0
    assert all(by_id.loc[child].parent == parent for parent, child in itertools.pairwise(path))
    status, body = http(
        "GET", f"{server.http_url}/api/stream/{stream_id}/thread-spans/find", headers=bearer(VIEWER_KEY)
    )
    assert status == 400 and "'name'" in json.loads(body)["error"]


def tree_level(server: SpanlakeServer, route: str, **params: object) -> dict:
    query = urllib.parse.urlencode({"from": RANGE["begin"], "to": RANGE["end"], **params})
    status, body = http("GET", f"{server.http_url}{route}?{query}", headers=bearer(VIEWER_KEY))
    assert status == 200, body
    return json.loads(body)


def expected_level(spans: pd.DataFrame, ends: pd.Series, level: pd.Series, offset: int, limit: int) -> list[dict]:
    """The level's page as the route must answer it, from every span of the tree (`ends` by span id)."""
    base = parse_rfc3339_ns(RANGE["begin"])
    page = spans[level].sort_values(["begin", "id"]).iloc[offset : offset + limit]
    # A root (depth 0, parent 0 meaning "none") is nobody's child, not even of a thread's span 0 (issue 23).
    children = spans[spans.depth > 0].parent.value_counts()
    return [
        {
            "id": str(row.id),
            "parent": str(row.parent),
            "depth": row.depth,
            "begin": row.begin - base,
            "end": int(ends[row.id]) - base if row.id in ends.index else None,
            "name": row.name,
            "children": int(children.get(row.id, 0)),
        }
        for row in page.itertuples()
    ]


def shown(answer: dict) -> list[dict]:
    keys = ("id", "parent", "depth", "begin", "end", "name", "children")
    return [{k: span[k] for k in keys} for span in answer["spans"]]


def test_span_tree_levels_equal_sql(server: SpanlakeServer) -> None:
    client = flight_client(server, VIEWER_KEY)
    begin, end = (dt.datetime.fromisoformat(RANGE[k]) for k in ("begin", "end"))
    events = client.query(
        "SELECT span_id AS id, parent_span_id AS parent, depth, CAST(time AS BIGINT) AS time, event_type, name"
        f" FROM view_instance('async_events', '{RUST_PROCESS_ID}')",
        begin,
        end,
    )
    spans = events[events.event_type == "begin"].rename(columns={"time": "begin"})
    ends = events[events.event_type == "end"].groupby("id").time.max()
    route = f"/api/process/{RUST_PROCESS_ID}/async-spans"
    top = tree_level(server, route, limit=3, offset=1)
    assert shown(top) == expected_level(spans, ends, spans.depth == 0, 1, 3) and len(top["spans"]) == 3
    assert top["total"] == (spans.depth == 0).sum()
    parent = spans.parent.value_counts().index[0]  # the span with the most children
    kids = tree_level(server, route, parent=parent)
    assert shown(kids) == expected_level(spans, ends, spans.parent == parent, 0, 500) and kids["total"] > 1
    assert tree_level(server, route, offset=10_000) == {**top, "spans": [], "total": 0, "limit": 500}

    [stream_id] = client.query(
        f"SELECT stream_id FROM streams WHERE process_id = '{RUST_PROCESS_ID}'"
        " AND property_get(properties, 'thread-name') = 'main'"
    ).stream_id
    thread = client.query(
        'SELECT id, parent, depth, CAST(begin AS BIGINT) AS begin, CAST("end" AS BIGINT) AS "end", name'
        f" FROM view_instance('thread_spans', '{stream_id}')",
        begin,
        end,
    )
    route = f"/api/stream/{stream_id}/thread-spans"
    top = tree_level(server, route, limit=2)
    assert shown(top) == expected_level(thread, thread.set_index("id")["end"], thread.depth == 0, 0, 2)
    parent = thread.parent[thread.depth > 0].value_counts().index[0]
    kids = tree_level(server, route, parent=parent)
    assert shown(kids) == expected_level(thread, thread.set_index("id")["end"], thread.parent == parent, 0, 500)
    assert len(kids["spans"]) > 1
