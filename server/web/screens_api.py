"""The screens API micromegas's `WebClient` and `micromegas-screens` call (analytics-web-srv's
`screens.rs`): screen types and their default configs, screens listed, read, created, updated and
deleted, with micromegas's payloads, status codes, name rules and `{"code", "message"}` errors; plus
export and import of screens in the web app's export file (`{"version": 1, "screens": [...]}`).

Any signed-in principal may read screens; writing them (create, update, delete, import) takes write
access: an admin key, or no auth at all (micromegas lets any user write; spanlake's readers only read).
What a screen's cells show is governed when they run (`screens_pages`), by the viewer's access.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from spanlake.lakehouse.lake import Lake
from spanlake.server.web.access_api import ApiError, Handler, answered, caller_name, json_answer, json_body
from spanlake.server.web.auth_cookie import principal_of

EXPORT_VERSION = 1
RESERVED_NAMES = frozenset({"new"})
MAX_NAME_LENGTH = 100
MAX_FOLDER_PATH_LENGTH = 1024
CONFLICT_CHOICES = ("skip", "overwrite", "rename")
_DEFAULT_RANGE = {"timeRangeFrom": "now-5m", "timeRangeTo": "now"}
_PROCESSES_SQL = (
    "SELECT process_id, exe, start_time, last_update_time, username, computer\nFROM processes\n$order_by\nLIMIT 100"
)
# name -> (display name, icon, description, default config), as screen_types.rs has them.
SCREEN_TYPES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "process_list": (
        "Process List",
        "list",
        "List of processes with filtering",
        {**_DEFAULT_RANGE, "sql": _PROCESSES_SQL, "variables": []},
    ),
    "metrics": (
        "Metrics",
        "chart-line",
        "Time series metrics visualization",
        {
            **_DEFAULT_RANGE,
            "sql": "SELECT time, value\nFROM measures\nWHERE name = 'cpu_usage'\nORDER BY time\nLIMIT 100",
            "variables": [],
        },
    ),
    "log": (
        "Log",
        "file-text",
        "Log entries viewer with filtering",
        {
            **_DEFAULT_RANGE,
            "sql": "SELECT time, level, target, msg\nFROM log_entries\nWHERE level <= $max_level\n  $search_filter\n"
            "ORDER BY time DESC\nLIMIT $limit",
            "variables": [],
        },
    ),
    "table": (
        "Table",
        "table",
        "Generic table viewer for any SQL query",
        {**_DEFAULT_RANGE, "sql": _PROCESSES_SQL, "variables": []},
    ),
    "notebook": (
        "Notebook",
        "book-open",
        "Multi-cell notebook with tables, charts, logs, and variables",
        {**_DEFAULT_RANGE, "cells": []},
    ),
}


def _bad(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def normalize_name(name: str) -> str:
    """micromegas's normalization: lower case, spaces to hyphens, other characters dropped, hyphens collapsed."""
    kept = re.sub(r"[^a-z0-9-]", "", name.lower().replace(" ", "-"))
    return re.sub(r"-+", "-", kept).strip("-")


def _check_name(name: str, min_length: int, is_screen: bool) -> None:
    """micromegas's name rules (a folder segment: no length floor beyond one, no reserved names, no boundary rule)."""
    if len(name) < min_length:
        raise _bad("NAME_TOO_SHORT", f"Name must be at least {min_length} characters")
    if len(name) > MAX_NAME_LENGTH:
        raise _bad("NAME_TOO_LONG", f"Name must be at most {MAX_NAME_LENGTH} characters")
    if is_screen and name in RESERVED_NAMES:
        raise _bad("RESERVED_NAME", "This name is reserved")
    if is_screen and not name[0].islower():
        raise _bad("INVALID_START", "Name must start with a lowercase letter")
    if is_screen and not (name[-1].islower() or name[-1].isdigit()):
        raise _bad("INVALID_END", "Name must end with a letter or number")
    if not re.fullmatch(r"[a-z0-9-]*", name):
        raise _bad("INVALID_CHARACTER", "Name can only contain lowercase letters, numbers, and hyphens")
    if "--" in name:
        raise _bad("CONSECUTIVE_HYPHENS", "Name cannot contain consecutive hyphens")


def valid_screen_name(name: Any) -> str:
    """The normalized screen name, checked (400 otherwise)."""
    if not isinstance(name, str):
        raise _bad("BAD_REQUEST", "name must be a string")
    normalized = normalize_name(name)
    _check_name(normalized, 3, is_screen=True)
    return normalized


def valid_folder_path(path: Any) -> str:
    """A folder path: '' (the root) or `/`-separated segments of the name rules (400 otherwise)."""
    if not isinstance(path, str):
        raise _bad("BAD_REQUEST", "folder_path must be a string")
    if path:
        for segment in path.split("/"):
            _check_name(segment, 1, is_screen=False)
    if len(path) > MAX_FOLDER_PATH_LENGTH:
        raise _bad("PATH_TOO_LONG", f"Folder path must be at most {MAX_FOLDER_PATH_LENGTH} characters")
    return path


def valid_screen_type(value: Any) -> str:
    """One of the screen types (400 `INVALID_SCREEN_TYPE` otherwise)."""
    if value not in SCREEN_TYPES:
        raise _bad("INVALID_SCREEN_TYPE", f"Invalid screen type: {value}")
    return value


def valid_config(value: Any) -> dict[str, Any]:
    """A screen's config: a JSON object (400 `INVALID_CONFIG` otherwise)."""
    if not isinstance(value, dict):
        raise _bad("INVALID_CONFIG", "config must be a JSON object")
    return value


def _optional_text(value: Any, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _bad("BAD_REQUEST", f"{field} must be a string")
    return value


def may_write_screens(request: web.Request) -> bool:
    """Whether the caller may change screens: an admin, or anyone when auth is off."""
    principal = principal_of(request)
    return principal is None or principal.is_admin


def _writers_only(handler: Handler) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        if not may_write_screens(request):
            raise ApiError(403, "FORBIDDEN", "changing screens takes write access (an admin key)")
        return await handler(request)

    return handle


def _not_found(name: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"Screen '{name}' not found")


def export_entry(screen: dict[str, Any]) -> dict[str, Any]:
    """A screen as the export file holds it: no authors, no timestamps, no root folder, no empty owner."""
    entry = {key: screen[key] for key in ("name", "screen_type", "config")}
    return entry | {key: screen[key] for key in ("folder_path", "managed_by") if screen.get(key)}


class ScreensApi:
    """The handlers, over one lake's catalog."""

    def __init__(self, lake: Lake) -> None:
        """Handlers reading and writing `lake`'s screens."""
        self.catalog = lake.catalog

    def routes(self) -> list[web.RouteDef]:
        """Every route, errors answered as `{"code", "message"}`."""
        table = [
            (web.get, "/api/screen-types", self.list_types),
            (web.get, "/api/screen-types/{type_name}/default", self.default_config),
            (web.get, "/api/screens", self.list_screens),
            (web.post, "/api/screens", _writers_only(self.create_screen)),
            (web.get, "/api/screens/{name}", self.get_screen),
            (web.put, "/api/screens/{name}", _writers_only(self.update_screen)),
            (web.delete, "/api/screens/{name}", _writers_only(self.delete_screen)),
            (web.get, "/api/screens-export", self.export_screens),
            (web.post, "/api/screens-import", _writers_only(self.import_screens)),
        ]
        return [method(path, answered(handler)) for method, path, handler in table]

    async def list_types(self, request: web.Request) -> web.Response:
        """The screen types: name, display name, icon, description."""
        fields = ("name", "display_name", "icon", "description")
        return json_answer([dict(zip(fields, (name, *info[:3]), strict=True)) for name, info in SCREEN_TYPES.items()])

    async def default_config(self, request: web.Request) -> web.Response:
        """A screen type's default config; 400 for an unknown type."""
        return json_answer(SCREEN_TYPES[valid_screen_type(request.match_info["type_name"])][3])

    async def list_screens(self, request: web.Request) -> web.Response:
        """Every screen, by name."""
        return json_answer(await self.catalog.list_screens())

    async def get_screen(self, request: web.Request) -> web.Response:
        """The screen; 404 for an unknown one."""
        name = request.match_info["name"]
        screen = await self.catalog.get_screen(name)
        if screen is None:
            raise _not_found(name)
        return json_answer(screen)

    async def create_screen(self, request: web.Request) -> web.Response:
        """The new screen (201); 400 for a bad field or a name taken (`DUPLICATE_NAME`)."""
        body = await json_body(request, ("name", "screen_type", "config"), ("managed_by", "folder_path"))
        screen = await self._insert(body, caller_name(request))
        if screen is None:
            name = normalize_name(body["name"])
            raise _bad("DUPLICATE_NAME", f"Screen with name '{name}' already exists")
        return json_answer(screen, 201)

    async def _insert(self, body: dict[str, Any], user: str) -> dict[str, Any] | None:
        """The screen of a create request's fields, stored; None when its name is taken."""
        return await self.catalog.insert_screen(
            valid_screen_name(body["name"]),
            valid_screen_type(body["screen_type"]),
            valid_config(body["config"]),
            user,
            _optional_text(body.get("managed_by"), "managed_by"),
            valid_folder_path(body.get("folder_path", "")),
        )

    async def update_screen(self, request: web.Request) -> web.Response:
        """The screen with the given fields replaced; 404 for an unknown one."""
        name = request.match_info["name"]
        body = await json_body(request, (), ("config", "managed_by", "folder_path"))
        config = body.get("config")
        folder_path = body.get("folder_path")
        screen = await self.catalog.update_screen(
            name,
            None if config is None else valid_config(config),
            caller_name(request),
            _optional_text(body.get("managed_by"), "managed_by"),
            None if folder_path is None else valid_folder_path(folder_path),
        )
        if screen is None:
            raise _not_found(name)
        return json_answer(screen)

    async def delete_screen(self, request: web.Request) -> web.Response:
        """204; 404 for an unknown screen."""
        name = request.match_info["name"]
        if not await self.catalog.delete_screen(name):
            raise _not_found(name)
        return web.Response(status=204)

    async def export_screens(self, request: web.Request) -> web.Response:
        """The export file of every screen, or of those named in `?names=a,b`."""
        wanted = {n for n in request.query.get("names", "").split(",") if n}
        screens = [s for s in await self.catalog.list_screens() if not wanted or s["name"] in wanted]
        exported_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        envelope = {"version": EXPORT_VERSION, "exported_at": exported_at, "screens": list(map(export_entry, screens))}
        return json_answer(envelope)

    async def import_screens(self, request: web.Request) -> web.Response:
        """Imports an export file, `?on_conflict=skip|overwrite|rename` deciding for a name taken; answers
        each screen's outcome. The file is checked whole before anything is stored."""
        on_conflict = request.query.get("on_conflict", "skip")
        if on_conflict not in CONFLICT_CHOICES:
            raise _bad("BAD_REQUEST", "on_conflict must be skip, overwrite or rename")
        body = await json_body(request, ("version", "screens"), ("exported_at",))
        if body["version"] != EXPORT_VERSION or not isinstance(body["screens"], list):
            raise _bad("INVALID_IMPORT", f"an export file has version {EXPORT_VERSION} and a list of screens")
        entries = [_import_entry(entry) for entry in body["screens"]]
        user = caller_name(request)
        return json_answer([await self._import(entry, on_conflict, user) for entry in entries])

    async def _import(self, entry: dict[str, Any], on_conflict: str, user: str) -> dict[str, str]:
        """One screen imported: `{"name", "status"}`, status created, skipped, overwritten or renamed."""
        name = entry["name"]
        if await self.catalog.insert_screen(**entry, user=user) is not None:
            return {"name": name, "status": "created"}
        if on_conflict == "skip":
            return {"name": name, "status": "skipped"}
        if on_conflict == "overwrite":
            await self.catalog.update_screen(name, entry["config"], user, entry["managed_by"], entry["folder_path"])
            return {"name": name, "status": "overwritten"}
        for suffix in ("-imported", *(f"-imported-{n}" for n in range(2, 100))):
            if await self.catalog.insert_screen(**{**entry, "name": name + suffix}, user=user) is not None:
                return {"name": name + suffix, "status": "renamed"}
        raise ApiError(409, "CONFLICT", f"no free name for an import of '{name}'")


def _import_entry(entry: Any) -> dict[str, Any]:
    """An export file's screen as `insert_screen`'s arguments, checked (400 otherwise)."""
    if not isinstance(entry, dict) or not all(k in entry for k in ("name", "screen_type", "config")):
        raise _bad("INVALID_IMPORT", "each screen has a name, a screen_type and a config")
    return {
        "name": valid_screen_name(entry["name"]),
        "screen_type": valid_screen_type(entry["screen_type"]),
        "config": valid_config(entry["config"]),
        "managed_by": _optional_text(entry.get("managed_by"), "managed_by"),
        "folder_path": valid_folder_path(entry.get("folder_path", "")),
    }
