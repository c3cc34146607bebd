"""`/access`: the admin page of keys, audience grants, groups and the query deny list.

Its forms post to `/access/...` and come back to the page (a minted key is shown on it once). The
page and its forms are for admins only; they write through the same catalog calls and checks as the
HTTP API (`access_api`), so both refuse the same values.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from spanlake.lakehouse.catalog.api_keys import hash_key, new_key
from spanlake.lakehouse.lake import Lake
from spanlake.server.site_guard import csrf_token
from spanlake.server.web import html
from spanlake.server.web.access_api import (
    ApiError,
    add_group_member,
    caller_name,
    check_group_name,
    check_selector,
    valid_audience,
)
from spanlake.server.web.auth_cookie import principal_of

KEY_TABLES = {"ingestion": "ingestion_api_keys", "analytics": "analytics_api_keys"}
LISTED_KEYS = 200


class AccessPages:
    """The page and its form handlers, over one lake."""

    def __init__(self, lake: Lake) -> None:
        """Reads and writes `lake`'s key, grant and group tables; reads its deny list."""
        self.lake = lake
        self.catalog = lake.catalog

    def forms(self) -> dict[str, Any]:
        """The form handlers by path (POST); each answers with the page."""
        forms = {
            "/access/keys": self.mint_key,
            "/access/keys/revoke": self.revoke_key,
            "/access/grants": self.add_grant,
            "/access/grants/delete": self.delete_grant,
            "/access/groups": self.add_group,
            "/access/members": self.add_member,
            "/access/members/delete": self.remove_member,
        }
        return {path: self._form(handler) for path, handler in forms.items()}

    async def page(self, request: web.Request) -> web.Response:
        """The page (403 for non-admins)."""
        _require_admin(request)
        return await self._render(request)

    def _form(self, handler: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            _require_admin(request)
            fields = await request.post()
            try:
                minted = await handler(request, {k: str(v).strip() for k, v in fields.items()})
            except ApiError as err:
                return await self._render(request, error=err.message, status=err.status)
            return await self._render(request, minted=minted)

        return handle

    async def _render(
        self, request: web.Request, error: str | None = None, minted: dict | None = None, status: int = 200
    ) -> web.Response:
        keys = {
            kind: [_listed_key(kind, row) for row in await self.catalog.list_keys(table, LISTED_KEYS, 0, True)]
            for kind, table in KEY_TABLES.items()
        }
        groups = []
        for row in await self.catalog.list_groups():
            members = [m["member"] for m in await self.catalog.group_members(row["name"])]
            groups.append({**dict(row.items()), "members": members})
        denials = await asyncio.to_thread(self.lake.deny_list.rules)
        return html.page(
            "access.html",
            title="Access",
            status=status,
            csrf_token=csrf_token(request),
            signed_in=principal_of(request) is not None,
            keys=keys,
            grants=await self.catalog.list_grants(),
            groups=groups,
            denials=denials,
            error=error,
            minted=minted,
        )

    async def mint_key(self, request: web.Request, fields: dict[str, str]) -> dict:
        """A new key, shown once on the page."""
        kind, name = _kind(fields), fields.get("name", "")
        if not name or len(name) > 255:
            raise ApiError(400, "BAD_REQUEST", "a key needs a name of at most 255 characters")
        key, caller = new_key(), caller_name(request)
        if kind == "ingestion":
            await self.catalog.add_ingestion_key(name, hash_key(key), valid_audience(fields.get("scope")), caller, [])
        else:
            audiences = [valid_audience(a.strip()) for a in fields.get("scope", "").split(",") if a.strip()]
            await self.catalog.add_analytics_key(name, hash_key(key), audiences, caller, [])
        return {"kind": kind, "name": name, "key": key}

    async def revoke_key(self, request: web.Request, fields: dict[str, str]) -> None:
        """Revokes a key (it stops working within 5 s)."""
        try:
            key_id = uuid.UUID(fields.get("key_id", ""))
        except ValueError:
            raise ApiError(400, "BAD_REQUEST", "key_id must be a UUID") from None
        if await self.catalog.revoke_key(KEY_TABLES[_kind(fields)], key_id, caller_name(request)) is None:
            raise ApiError(404, "NOT_FOUND", "key not found")

    async def add_grant(self, request: web.Request, fields: dict[str, str]) -> None:
        """Adds a grant (kept as it is when it exists)."""
        axis = fields.get("axis")
        if axis not in ("read", "mint"):
            raise ApiError(400, "BAD_REQUEST", "axis must be 'read' or 'mint'")
        audience, selector = valid_audience(fields.get("audience")), check_selector(fields.get("selector"), "selector")
        await self.catalog.add_grant(audience, axis, selector, caller_name(request))

    async def delete_grant(self, request: web.Request, fields: dict[str, str]) -> None:
        """Deletes a grant."""
        if not await self.catalog.delete_grant(fields.get("audience"), fields.get("axis"), fields.get("selector")):
            raise ApiError(404, "NOT_FOUND", "grant not found")

    async def add_group(self, request: web.Request, fields: dict[str, str]) -> None:
        """Creates a group."""
        name = check_group_name(fields.get("name"))
        if await self.catalog.add_group(name, fields.get("description") or None, caller_name(request)) is None:
            raise ApiError(409, "CONFLICT", f"group '{name}' already exists")

    async def add_member(self, request: web.Request, fields: dict[str, str]) -> None:
        """Adds a member to a group (no cycles)."""
        member = check_selector(fields.get("member"), "member")
        await add_group_member(self.catalog, fields.get("group", ""), member, caller_name(request))

    async def remove_member(self, request: web.Request, fields: dict[str, str]) -> None:
        """Removes a member from a group."""
        if not await self.catalog.remove_group_member(fields.get("group", ""), fields.get("member", "")):
            raise ApiError(404, "NOT_FOUND", "no such member")


def _require_admin(request: web.Request) -> None:
    principal = principal_of(request)
    if principal is not None and not principal.is_admin:
        raise html.PageError(403, "Forbidden", "the access page is for admins")


def _kind(fields: dict[str, str]) -> str:
    kind = fields.get("kind", "")
    if kind not in KEY_TABLES:
        raise ApiError(400, "BAD_REQUEST", "kind must be 'ingestion' or 'analytics'")
    return kind


def _listed_key(kind: str, row: Any) -> dict:
    scope = row["audience"] if kind == "ingestion" else ", ".join(row["read_audiences"] or ["everything"])
    return {**dict(row.items()), "scope": scope, "allowed_cidrs": [str(c) for c in row["allowed_cidrs"]]}
