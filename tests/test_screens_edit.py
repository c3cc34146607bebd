"""Editing screens in the page, in Chromium against a running `spanlake serve` with keys on: an admin edits
a cell's SQL, name and order, adds and deletes cells and saves (the stored config and the reloaded page show
the change); a bad SQL saved shows its error in its cell; "New screen" and "Copy" on `/screens`; a reader
sees no edit control and the API refuses its writes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from harness import PostgresServer, SpanlakeServer
from micromegas.auth import StaticTokenAuthProvider
from micromegas.web_client import WebClient
from served_support import ADMIN_KEY, READER_KEY, served_lakehouse
from web_support import Browser, WatchedPage

CELLS = [
    {"name": "first", "type": "table", "sql": "SELECT 1 AS n"},
    {"name": "second", "type": "table", "sql": "SELECT 2 AS n"},
    {"name": "third", "type": "table", "sql": "SELECT 3 AS n"},
]


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpanlakeServer]:
    with served_lakehouse(postgres, tmp_path_factory.mktemp("screens-edit"), upload=False) as served:
        yield served


@pytest.fixture
def admin(server: SpanlakeServer) -> Iterator[WebClient]:
    """An admin's client; the screen `editable` (three table cells) exists for the test's length."""
    client = WebClient(server.http_url, auth_provider=StaticTokenAuthProvider(ADMIN_KEY))
    client.create_screen("editable", "notebook", {"timeRangeFrom": "now-1h", "timeRangeTo": "now", "cells": CELLS})
    yield client
    for screen in client.list_screens():
        client.delete_screen(screen["name"])


def sign_in(page: object, server: SpanlakeServer, key: str) -> None:
    page.goto(server.http_url + "/login")
    page.fill("input[name=key]", key)
    page.click("form.login button")


def open_screen(page: object, server: SpanlakeServer, name: str) -> None:
    page.goto(f"{server.http_url}/screen/{name}")
    page.wait_for_selector("#notebook[data-ran='1']")


def cell(page: object, name: str) -> object:
    return page.locator(f"section.cell[data-cell='{name}']")


def edit(page: object, name: str) -> object:
    """The cell's edit panel, opened."""
    panel = cell(page, name).locator("details.cell-edit")
    panel.locator("summary").click()
    return panel


def save(page: object) -> None:
    with page.expect_navigation():
        page.click("button.save-screen")
    page.wait_for_selector("#notebook[data-ran='1']")


def shown_cells(page: object) -> list[str]:
    return page.locator("#notebook > section.cell").evaluate_all("els => els.map((e) => e.dataset.cell)")


def test_an_admin_edits_adds_deletes_and_moves_cells(
    server: SpanlakeServer, admin: WebClient, chrome: Browser, watched: WatchedPage
) -> None:
    page = watched.page
    sign_in(page, server, ADMIN_KEY)
    open_screen(page, server, "editable")
    page.click("button.edit-screen")
    first = edit(page, "first")
    first.locator("textarea.edit-sql").fill("SELECT 41 + 1 AS answer")
    first.locator("input.edit-name").fill("answer")
    edit(page, "third").locator("button.delete-cell").click()
    edit(page, "second").locator("button.move-up").click()
    page.click("button.add-cell")
    added = cell(page, "cell-3").locator("details.cell-edit")
    added.locator("textarea.edit-sql").fill("SELECT 'added' AS s")
    added.locator("select.edit-type").select_option("transposed")
    assert admin.get_screen("editable")["config"]["cells"] == CELLS  # nothing stored before Save
    save(page)

    assert shown_cells(page) == ["second", "answer", "cell-3"]
    assert cell(page, "answer").locator("tbody td").inner_text() == "42"
    assert cell(page, "second").locator("tbody td").inner_text() == "2"
    assert cell(page, "cell-3").locator("tbody tr").inner_text().split() == ["s", "added"]
    assert admin.get_screen("editable")["config"] == {
        "timeRangeFrom": "now-1h",
        "timeRangeTo": "now",
        "cells": [
            CELLS[1],
            {"name": "answer", "type": "table", "sql": "SELECT 41 + 1 AS answer"},
            {"name": "cell-3", "type": "transposed", "sql": "SELECT 'added' AS s"},
        ],
    }
    chrome.shot(page, "screen-edited")


def test_a_bad_sql_saved_shows_its_error_in_its_cell(
    server: SpanlakeServer, admin: WebClient, chrome: Browser, watched: WatchedPage
) -> None:
    page = watched.page
    watched.expect_error("Failed to load resource")  # the bad cell's 400
    sign_in(page, server, ADMIN_KEY)
    open_screen(page, server, "editable")
    page.click("button.edit-screen")
    edit(page, "second").locator("textarea.edit-sql").fill("SELECT no_such_column FROM processes")
    save(page)
    assert "no_such_column" in cell(page, "second").locator(".cell-error").inner_text()
    assert cell(page, "first").locator("tbody td").inner_text() == "1"  # the others still run
    assert admin.get_screen("editable")["config"]["cells"][1]["sql"] == "SELECT no_such_column FROM processes"


def test_new_screen_and_copy_on_the_screens_page(
    server: SpanlakeServer, admin: WebClient, chrome: Browser, watched: WatchedPage
) -> None:
    page = watched.page
    sign_in(page, server, ADMIN_KEY)
    page.goto(server.http_url + "/screens")
    page.fill("#new-screen input[name=name]", "fresh")
    page.fill("#new-screen input[name=folder]", "team")
    with page.expect_navigation(url=f"{server.http_url}/screen/fresh"):
        page.click("#new-screen button")
    fresh = admin.get_screen("fresh")
    assert (fresh["screen_type"], fresh["folder_path"], fresh["config"]["cells"]) == ("notebook", "team", [])

    page.goto(server.http_url + "/screens")
    page.once("dialog", lambda dialog: dialog.accept("editable-copy"))
    with page.expect_navigation(url=f"{server.http_url}/screen/editable-copy"):
        page.click("button.copy-screen[data-name='editable']")
    page.wait_for_selector("#notebook[data-ran='1']")
    assert admin.get_screen("editable-copy")["config"] == admin.get_screen("editable")["config"]
    assert cell(page, "third").locator("tbody td").inner_text() == "3"

    page.goto(server.http_url + "/screens")
    page.fill("#new-screen input[name=name]", "fresh")
    page.click("#new-screen button")
    watched.expect_error("Failed to load resource")  # the duplicate's 400
    error = page.locator("#new-screen .new-screen-error")
    error.wait_for()
    assert error.inner_text() == "Screen with name 'fresh' already exists"


def test_a_reader_sees_no_edit_control_and_cannot_write(
    server: SpanlakeServer, admin: WebClient, chrome: Browser, watched: WatchedPage
) -> None:
    page = watched.page
    sign_in(page, server, READER_KEY)
    open_screen(page, server, "editable")
    assert cell(page, "first").locator("tbody td").inner_text() == "1"
    controls = "button.edit-screen, details.cell-edit, button.save-screen, button.add-cell"
    assert page.locator(controls).count() == 0
    page.goto(server.http_url + "/screens")
    assert page.locator("a:has-text('editable')").count() == 1
    assert page.locator("#new-screen, button.copy-screen, #add-starters").count() == 0

    reader = {"Authorization": f"Bearer {READER_KEY}"}
    url = f"{server.http_url}/api/screens"
    put = requests.put(f"{url}/editable", json={"config": {"cells": []}}, headers=reader, timeout=10)
    assert (put.status_code, put.json()["code"]) == (403, "FORBIDDEN")
    body = {"name": "mine", "screen_type": "notebook", "config": {"cells": []}}
    assert requests.post(url, json=body, headers=reader, timeout=10).status_code == 403
    assert requests.delete(f"{url}/editable", headers=reader, timeout=10).status_code == 403
    assert requests.get(f"{url}/editable", headers=reader, timeout=10).status_code == 200
    # a form post from this site with its CSRF token: refused for the reader's lack of write access alone
    token = page.locator("meta[name=csrf-token]").get_attribute("content")
    starters = page.request.post(
        server.http_url + "/screens/starters", form={"csrf": token}, headers={"Origin": server.http_url}
    )
    assert starters.status == 403
    assert "adding screens takes write access" in starters.text()
    assert [s["name"] for s in admin.list_screens()] == ["editable"]
    assert admin.get_screen("editable")["config"]["cells"] == CELLS
