"""The screens API against a running `spanlake serve`: micromegas 0.32's `WebClient` and its
`micromegas-screens` CLI (init/import/pull/plan/apply, in-process through its entry point), status
codes and error bodies, export and import of micromegas's export file, the site guard on writes, and
a cell run with the viewer's key."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness import PostgresServer, SpanlakeServer, running_server
from micromegas.auth import StaticTokenAuthProvider
from micromegas.cli import screens as screens_cli
from micromegas.web_client import WebClient
from served_support import ADMIN_KEY, READER_KEY, served_lakehouse

EXPORT_FILE = Path(__file__).parent / "fixtures" / "micromegas-screens" / "process-info-export.json"
MARKDOWN_CELL = {"name": "md", "type": "markdown", "content": "hi"}
NOTEBOOK = {"timeRangeFrom": "now-1h", "timeRangeTo": "now", "cells": [MARKDOWN_CELL]}


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    """One server for the module, auth off (loopback): micromegas-screens authenticates through OIDC only."""
    with running_server(postgres, tmp_path_factory.mktemp("screens-api")) as running:
        yield running


@pytest.fixture
def client(server: SpanlakeServer) -> Iterator[WebClient]:
    """A WebClient; the screens it leaves are deleted after the test."""
    web_client = WebClient(server.http_url)
    yield web_client
    for screen in web_client.list_screens():
        web_client.delete_screen(screen["name"])


def test_web_client_creates_reads_updates_and_deletes_a_screen(client: WebClient) -> None:
    created = client.create_screen("My Notebook!", "notebook", NOTEBOOK, folder_path="team/perf")
    assert created["name"] == "my-notebook"  # normalized as micromegas does
    assert (created["screen_type"], created["config"], created["folder_path"]) == ("notebook", NOTEBOOK, "team/perf")
    assert created["managed_by"] is None and created["created_by"] == "anonymous"
    assert client.get_screen("my-notebook") == created
    changed = {**NOTEBOOK, "timeRangeFrom": "now-1d"}
    updated = client.update_screen("my-notebook", changed, managed_by="https://example.com/repo")
    assert (updated["config"], updated["managed_by"], updated["folder_path"]) == (
        changed,
        "https://example.com/repo",
        "team/perf",
    )
    assert updated["updated_at"] >= created["updated_at"]
    assert [s["name"] for s in client.list_screens()] == ["my-notebook"]
    client.delete_screen("my-notebook")
    assert client.list_screens() == []
    with pytest.raises(RuntimeError, match="HTTP 404: Screen 'my-notebook' not found"):
        client.get_screen("my-notebook")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"name": "ab", "screen_type": "notebook", "config": {}}, "NAME_TOO_SHORT"),
        ({"name": "new", "screen_type": "notebook", "config": {}}, "RESERVED_NAME"),
        ({"name": "9lives", "screen_type": "notebook", "config": {}}, "INVALID_START"),
        ({"name": "fine", "screen_type": "spreadsheet", "config": {}}, "INVALID_SCREEN_TYPE"),
        ({"name": "fine", "screen_type": "notebook", "config": [1]}, "INVALID_CONFIG"),
        ({"name": "fine", "screen_type": "notebook", "config": {}, "folder_path": "a//b"}, "NAME_TOO_SHORT"),
        ({"name": "fine", "screen_type": "notebook", "config": {}, "folder_path": "A"}, "INVALID_CHARACTER"),
        ({"name": "fine", "screen_type": "notebook"}, "BAD_REQUEST"),
    ],
)
def test_bad_screens_are_refused_with_micromegas_codes_and_nothing_stored(
    client: WebClient, server: SpanlakeServer, payload: dict, code: str
) -> None:
    answer = requests.post(f"{server.http_url}/api/screens", json=payload, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["code"] == code
    assert client.list_screens() == []


def test_status_codes_of_duplicates_unknown_screens_and_types(client: WebClient, server: SpanlakeServer) -> None:
    client.create_screen("perf", "notebook", NOTEBOOK)
    duplicate = requests.post(
        f"{server.http_url}/api/screens", json={"name": "Perf", "screen_type": "log", "config": {}}, timeout=10
    )
    assert (duplicate.status_code, duplicate.json()["code"]) == (400, "DUPLICATE_NAME")
    assert client.get_screen("perf")["screen_type"] == "notebook"  # unchanged
    for method in ("put", "delete"):
        answer = requests.request(method, f"{server.http_url}/api/screens/nope", json={"config": {}}, timeout=10)
        assert (answer.status_code, answer.json()) == (404, {"code": "NOT_FOUND", "message": "Screen 'nope' not found"})
    types = requests.get(f"{server.http_url}/api/screen-types", timeout=10).json()
    assert [t["name"] for t in types] == ["process_list", "metrics", "log", "table", "notebook"]
    default = requests.get(f"{server.http_url}/api/screen-types/notebook/default", timeout=10).json()
    assert default == {"timeRangeFrom": "now-5m", "timeRangeTo": "now", "cells": []}
    unknown = requests.get(f"{server.http_url}/api/screen-types/pie/default", timeout=10)
    assert (unknown.status_code, unknown.json()["code"]) == (400, "INVALID_SCREEN_TYPE")


def test_a_micromegas_export_imports_and_exports_back(client: WebClient, server: SpanlakeServer) -> None:
    exported = json.loads(EXPORT_FILE.read_text())
    url = f"{server.http_url}/api/screens-import"
    first = requests.post(url, json=exported, timeout=10)
    assert first.json() == [{"name": "process-info", "status": "created"}]
    assert client.get_screen("process-info")["config"] == exported["screens"][0]["config"]
    assert requests.post(url, json=exported, timeout=10).json() == [{"name": "process-info", "status": "skipped"}]
    renamed = requests.post(url + "?on_conflict=rename", json=exported, timeout=10).json()
    assert renamed == [{"name": "process-info-imported", "status": "renamed"}]
    back = requests.get(f"{server.http_url}/api/screens-export?names=process-info", timeout=10).json()
    assert back["version"] == 1 and back["screens"] == exported["screens"]


def test_a_bad_import_file_stores_nothing(client: WebClient, server: SpanlakeServer) -> None:
    exported = json.loads(EXPORT_FILE.read_text())
    exported["screens"].append({"name": "second", "screen_type": "spreadsheet", "config": {}})
    answer = requests.post(f"{server.http_url}/api/screens-import", json=exported, timeout=10)
    assert (answer.status_code, answer.json()["code"]) == (400, "INVALID_SCREEN_TYPE")
    assert client.list_screens() == []


def test_a_browser_write_from_another_site_or_without_the_csrf_token_is_refused(
    client: WebClient, server: SpanlakeServer
) -> None:
    client.create_screen("kept", "notebook", NOTEBOOK)
    url = f"{server.http_url}/api/screens/kept"
    foreign = requests.delete(url, headers={"Origin": "http://evil.example"}, timeout=10)
    assert foreign.status_code == 403
    no_token = requests.delete(url, headers={"Origin": server.http_url}, timeout=10)
    assert no_token.status_code == 403 and "CSRF" in no_token.text
    assert client.get_screen("kept")["config"] == NOTEBOOK


def test_micromegas_screens_cli_round_trips(
    client: WebClient,
    server: SpanlakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no profile of the machine's user
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    remote = "https://github.com/acme/dash.git"
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", remote], check=True)
    monkeypatch.chdir(tmp_path)

    def cli(*args: str) -> str:
        # --no-auth: the server is a loopback one without keys (subcommands other than init take it)
        flags = () if args[0] == "init" else ("--no-auth",)
        monkeypatch.setattr(sys, "argv", ["micromegas-screens", *args, *flags])
        try:
            screens_cli.main()
        except SystemExit as exit_:
            assert exit_.code in (0, None), capsys.readouterr().err
        return capsys.readouterr().out

    client.create_screen("perf", "notebook", NOTEBOOK, folder_path="team")
    cli("init", server.http_url)
    assert "Imported: perf" in cli("import", "perf")
    assert client.get_screen("perf")["managed_by"] == "https://github.com/acme/dash"
    local = json.loads((tmp_path / "perf.json").read_text())
    assert (local["config"], local["folder_path"]) == (NOTEBOOK, "team")

    changed = {**NOTEBOOK, "timeRangeFrom": "now-2h"}
    (tmp_path / "perf.json").write_text(json.dumps({**local, "config": changed}))
    new_screen = {"name": "errors", "screen_type": "log", "config": {"sql": "SELECT 1"}}
    (tmp_path / "errors.json").write_text(json.dumps(new_screen))
    plan = cli("plan", "--no-color")
    assert "perf" in plan and "errors" in plan
    assert "Apply complete! 1 created, 1 updated, 0 deleted." in cli("apply", "--auto-approve", "--no-color")
    assert client.get_screen("perf")["config"] == changed
    assert client.get_screen("errors")["managed_by"] == "https://github.com/acme/dash"

    (tmp_path / "errors.json").unlink()
    assert "0 created, 0 updated, 1 deleted" in cli("apply", "--auto-approve", "--no-color")
    assert [s["name"] for s in client.list_screens()] == ["perf"]
    client.update_screen("perf", NOTEBOOK)  # changed in the web UI: pull brings it back
    assert "1 updated" in cli("pull")
    assert json.loads((tmp_path / "perf.json").read_text())["config"] == NOTEBOOK
    assert "No changes." in cli("apply", "--auto-approve", "--no-color")


def test_a_cell_runs_with_the_viewers_access(postgres: PostgresServer, tmp_path: Path) -> None:
    # Keys on: the reader's cell calling an admin function is refused (403) where the admin's is not
    # (the function's view set is unknown, so nothing is retired); the reader's other cell runs.
    cells = [
        {"name": "retire", "type": "table", "sql": "SELECT * FROM retire_partitions('none', 'x', '$from', '$to')"},
        {"name": "count", "type": "table", "sql": "SELECT count(*) AS n FROM processes"},
    ]
    with served_lakehouse(postgres, tmp_path, upload=False) as served:
        admin = WebClient(served.http_url, auth_provider=StaticTokenAuthProvider(ADMIN_KEY))
        admin.create_screen("guarded", "notebook", {"cells": cells})

        def run(key: str, cell: str) -> requests.Response:
            body = {"screen": "guarded", "cell": cell, "begin": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
            headers = {"Authorization": f"Bearer {key}"}
            return requests.post(f"{served.http_url}/api/screen-cell", json=body, headers=headers, timeout=30)

        refused = run(READER_KEY, "retire")
        assert refused.status_code == 403
        assert refused.json()["error"] == "the function 'retire_partitions' is reserved to admin API keys"
        assert "'2026-01-01T00:00:00" in refused.json()["sql"]  # $from expanded
        assert run(ADMIN_KEY, "retire").status_code != 403
        assert run(READER_KEY, "count").json()["rows"] == [[0]]
        anonymous = requests.get(f"{served.http_url}/api/screens", timeout=10)
        assert anonymous.status_code == 401
