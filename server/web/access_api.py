"""The access-control API micromegas's `WebClient` and CLIs call (analytics-web-srv's routes): ingestion
and analytics keys (minted, listed, revoked, allowlisted), audience grants and groups with members.

Payloads, status codes and the `{"code", "message"}` error body are micromegas's. Everything but
`my-audiences` is for admins; without auth (loopback only) every caller is one. Minted keys are shown
once (only their SHA-256 is stored); revocations and grant changes reach every door within the
authenticator's cache time (5 s).
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from spanlake.lakehouse.catalog import Catalog
from spanlake.lakehouse.catalog.api_keys import check_audience, hash_key, new_key
from spanlake.lakehouse.catalog.audience_grants import ADMINS_GROUP
from spanlake.lakehouse.lake import Lake
from spanlake.server.web.auth_cookie import principal_of

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
AXES = ("read", "mint")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_KEY_TABLES = {"ingestion-api-keys": "ingestion_api_keys", "analytics-api-keys": "analytics_api_keys"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An answer other than success: its status, micromegas's code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        """An error answered with `status` and `{"code", "message"}`."""
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message)


def json_answer(value: Any, status: int = 200) -> web.Response:
    """`value` as a JSON answer (datetimes in ISO 8601, UUIDs and networks as text)."""
    return web.json_response(value, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_encode)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _row(record: asyncpg.Record) -> dict[str, Any]:
    return dict(record.items())


def caller_name(request: web.Request) -> str:
    """Who writes a row: the principal's name ("anonymous" without auth)."""
    principal = principal_of(request)
    return "anonymous" if principal is None else principal.name


def _admin_only(handler: Handler) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal = principal_of(request)
        if principal is not None and not principal.is_admin:
            raise ApiError(403, "FORBIDDEN", "admin access required")
        return await handler(request)

    return handle


def answered(handler: Handler) -> Handler:
    """The handler with its `ApiError`s answered as `{"code", "message"}`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            return json_answer({"code": err.code, "message": err.message}, err.status)

    return handle


async def json_body(request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object body, with its required fields and no unknown ones (400 otherwise)."""
    try:
        body = await request.json()
    except ValueError:
        raise _bad("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    unknown = set(body) - {*required, *optional}
    if unknown:
        raise _bad(f"unknown field(s): {', '.join(sorted(unknown))}")
    missing = [name for name in required if body.get(name) is None]
    if missing:
        raise _bad(f"missing field(s): {', '.join(missing)}")
    return body


def _cidrs(value: Any) -> list[str]:
    """CIDR ranges or bare IPs as PostgreSQL `cidr` texts; 400 for anything else."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad("allowed_cidrs must be a list of CIDR ranges or IP addresses")
    try:
        return [str(ipaddress.ip_network(v.strip(), strict=False)) for v in value]
    except ValueError as err:
        raise _bad(f"allowed_cidrs: {err}") from None


def valid_audience(value: Any) -> str:
    """The audience, checked (400 otherwise)."""
    if not isinstance(value, str):
        raise _bad("audience must be a string")
    try:
        return check_audience(value)
    except ValueError as err:
        raise _bad(str(err)) from None


def _key_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["key_id"])
    except ValueError:
        raise _bad("key_id must be a UUID") from None


def _key_table(request: web.Request) -> str:
    return _KEY_TABLES[request.match_info["kind"]]


def check_selector(value: Any, what: str) -> str:
    """`*`, `user:<id>` or `group:<id>`; 400 otherwise."""
    if isinstance(value, str) and (value == "*" or re.fullmatch(r"(user|group):\S{1,255}", value)):
        return value
    raise _bad(f"{what} must be '*', 'user:<id>' or 'group:<id>'")


class AccessApi:
    """The handlers, over one lake's catalog."""

    def __init__(self, lake: Lake) -> None:
        """Handlers reading and writing `lake`'s key, grant and group tables."""
        self.catalog = lake.catalog

    def routes(self) -> list[web.RouteDef]:
        """Every route, wrapped: admin-only where micromegas's are, errors as `{"code", "message"}`."""
        admin = _admin_only
        keys = "/api/{kind:ingestion-api-keys|analytics-api-keys}"
        table = [
            (web.post, keys, admin(self.mint_key)),
            (web.get, keys, admin(self.list_keys)),
            (web.delete, keys + "/{key_id}", admin(self.revoke_key)),
            (web.patch, keys + "/{key_id}/allowlist", admin(self.set_allowlist)),
            (web.post, "/api/audience-grants", admin(self.create_grant)),
            (web.get, "/api/audience-grants", admin(self.list_grants)),
            (web.delete, "/api/audience-grants", admin(self.delete_grant)),
            (web.get, "/api/audience-grants/my-audiences", self.my_audiences),
            (web.get, "/api/groups", admin(self.list_groups)),
            (web.post, "/api/groups", admin(self.create_group)),
            (web.delete, "/api/groups/{name}", admin(self.delete_group)),
            (web.get, "/api/groups/{name}/members", admin(self.list_members)),
            (web.post, "/api/groups/{name}/members", admin(self.add_member)),
            (web.delete, "/api/groups/{name}/members", admin(self.remove_member)),
        ]
        return [method(path, answered(handler)) for method, path, handler in table]

    async def mint_key(self, request: web.Request) -> web.Response:
        """A new key (201), its cleartext `key` shown this once."""
        table = _key_table(request)
        scope_field = "audience" if table == "ingestion_api_keys" else "read_audiences"
        body = await json_body(request, ("name",), (scope_field, "allowed_cidrs"))
        name = body["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise _bad("name must be a non-empty string of at most 255 characters")
        cidrs = _cidrs(body.get("allowed_cidrs", []))
        key = new_key()
        if table == "ingestion_api_keys":
            if body.get("audience") is None:
                raise _bad("audience is required: the audience the key's telemetry is stamped with")
            row = await self.catalog.add_ingestion_key(
                name, hash_key(key), valid_audience(body["audience"]), caller_name(request), cidrs
            )
        else:
            audiences = body.get("read_audiences") or []
            if not isinstance(audiences, list):
                raise _bad("read_audiences must be a list of audiences")
            row = await self.catalog.add_analytics_key(
                name, hash_key(key), [valid_audience(a) for a in audiences], caller_name(request), cidrs
            )
        return json_answer({**_row(row), "key": key}, 201)

    async def list_keys(self, request: web.Request) -> web.Response:
        """The keys, newest first (never a hash, never a key)."""
        try:
            limit = int(request.query.get("limit", DEFAULT_LIMIT))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            raise _bad("limit and offset must be integers") from None
        if limit <= 0:
            raise _bad("limit must be > 0")
        if offset < 0:
            raise _bad("offset must be >= 0")
        include_revoked = request.query.get("include_revoked", "true")
        if include_revoked not in ("true", "false"):
            raise _bad("include_revoked must be true or false")
        rows = await self.catalog.list_keys(
            _key_table(request), min(limit, MAX_LIMIT), offset, include_revoked == "true"
        )
        return json_answer([_row(r) for r in rows])

    async def revoke_key(self, request: web.Request) -> web.Response:
        """`{"revoked_at"}` (idempotent); 404 for an unknown key."""
        revoked_at = await self.catalog.revoke_key(_key_table(request), _key_id(request), caller_name(request))
        if revoked_at is None:
            raise ApiError(404, "NOT_FOUND", "key not found")
        return json_answer({"revoked_at": revoked_at})

    async def set_allowlist(self, request: web.Request) -> web.Response:
        """`{"allowed_cidrs"}` as stored ([] = from anywhere); 404 for an unknown key."""
        key_id = _key_id(request)
        body = await json_body(request, ("allowed_cidrs",))
        stored = await self.catalog.set_key_allowlist(_key_table(request), key_id, _cidrs(body["allowed_cidrs"]))
        if stored is None:
            raise ApiError(404, "NOT_FOUND", "key not found")
        return json_answer({"allowed_cidrs": stored})

    async def create_grant(self, request: web.Request) -> web.Response:
        """The grant: 201 when created, 200 when it existed."""
        body = await json_body(request, ("audience", "axis", "selector"))
        if body["axis"] not in AXES:
            raise _bad("axis must be 'read' or 'mint'")
        audience, selector = valid_audience(body["audience"]), check_selector(body["selector"], "selector")
        row, created = await self.catalog.add_grant(audience, body["axis"], selector, caller_name(request))
        return json_answer(_row(row), 201 if created else 200)

    async def list_grants(self, request: web.Request) -> web.Response:
        """Every grant."""
        return json_answer([_row(r) for r in await self.catalog.list_grants()])

    async def delete_grant(self, request: web.Request) -> web.Response:
        """204; 404 when there is no such grant."""
        query = request.query
        if not all(query.get(name) for name in ("audience", "axis", "selector")):
            raise _bad("audience, axis and selector are required query parameters")
        if not await self.catalog.delete_grant(query["audience"], query["axis"], query["selector"]):
            raise ApiError(404, "NOT_FOUND", "grant not found")
        return web.Response(status=204)

    async def my_audiences(self, request: web.Request) -> web.Response:
        """What the caller may mint into, its admin flag and groups (any authenticated caller)."""
        principal = principal_of(request)
        name = "anonymous" if principal is None else principal.name
        groups, mintable = await self.catalog.principal_grants(name, "mint")
        held = [
            f"{r['audience']}:{r['axis']}" for r in await self.catalog.list_grants() if r["selector"] == f"user:{name}"
        ]
        return json_answer(
            {
                "is_admin": principal is None or principal.is_admin,
                "audiences": sorted(mintable),
                "mint_prefix": None,
                "email": None,
                "held_pairs": held,
                "groups": sorted(groups),
            }
        )

    async def list_groups(self, request: web.Request) -> web.Response:
        """Every group with its member count."""
        return json_answer([_row(r) for r in await self.catalog.list_groups()])

    async def create_group(self, request: web.Request) -> web.Response:
        """The new group (201); 400 for a bad name, 409 if it exists."""
        body = await json_body(request, ("name",), ("description",))
        name = check_group_name(body["name"])
        row = await self.catalog.add_group(name, body.get("description"), caller_name(request))
        if row is None:
            raise ApiError(409, "CONFLICT", f"group '{name}' already exists")
        return json_answer(_row(row), 201)

    async def delete_group(self, request: web.Request) -> web.Response:
        """204; 409 for `admins` or a group still referenced, 404 for an unknown one."""
        name = request.match_info["name"]
        if name == ADMINS_GROUP:
            raise ApiError(409, "CONFLICT", "the admins group cannot be deleted")
        referrers = await self.catalog.group_referrers(name)
        if referrers:
            raise ApiError(409, "CONFLICT", f"group '{name}' is still referenced by: {', '.join(referrers)}")
        if not await self.catalog.delete_group(name):
            raise ApiError(404, "NOT_FOUND", f"group '{name}' not found")
        return web.Response(status=204)

    async def list_members(self, request: web.Request) -> web.Response:
        """A group's direct members; 404 for an unknown group."""
        name = await self._existing_group(request.match_info["name"])
        return json_answer([_row(r) for r in await self.catalog.group_members(name)])

    async def add_member(self, request: web.Request) -> web.Response:
        """The member row: 201 when added, 200 when it was there; 404 for an unknown group, 409 for a cycle."""
        member = check_selector((await json_body(request, ("member",)))["member"], "member")
        row, created = await add_group_member(self.catalog, request.match_info["name"], member, caller_name(request))
        return json_answer(_row(row), 201 if created else 200)

    async def remove_member(self, request: web.Request) -> web.Response:
        """204; 404 for an unknown member."""
        name = await self._existing_group(request.match_info["name"])
        member = request.query.get("member")
        if not member:
            raise _bad("member is a required query parameter")
        if not await self.catalog.remove_group_member(name, member):
            raise ApiError(404, "NOT_FOUND", f"'{member}' is not a member of '{name}'")
        return web.Response(status=204)

    async def _existing_group(self, name: str) -> str:
        return await existing_group(self.catalog, name)


async def existing_group(catalog: Catalog, name: str) -> str:
    """The name of a group that exists (404 otherwise)."""
    if not await catalog.group_exists(name):
        raise ApiError(404, "NOT_FOUND", f"group '{name}' not found")
    return name


async def add_group_member(catalog: Catalog, group: str, member: str, caller: str) -> tuple[asyncpg.Record, bool]:
    """(the member row, created now?): 404 for an unknown group (either), 409 when nesting would loop."""
    await existing_group(catalog, group)
    if member.startswith("group:"):
        inner = await existing_group(catalog, member.removeprefix("group:"))
        if await catalog.group_contains(inner, group):
            raise ApiError(409, "CONFLICT", f"adding group '{inner}' to '{group}' would create a cycle")
    return await catalog.add_group_member(group, member, caller)


def check_group_name(value: Any) -> str:
    """A group name, checked (400 otherwise)."""
    if not isinstance(value, str) or not _GROUP_NAME.fullmatch(value):
        raise _bad("a group name is 1 to 255 of A-Z a-z 0-9 _ . -")
    return value
