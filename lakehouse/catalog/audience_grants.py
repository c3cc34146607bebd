"""Audience grants (who may read or mint into an audience) and groups with nested members."""

from __future__ import annotations

import asyncpg

ADMINS_GROUP = "admins"

# The groups a principal belongs to, transitively: members naming it ('*', 'user:<name>') or a group it is in.
_MEMBER_OF = (
    "WITH RECURSIVE member_of(name) AS ("
    " SELECT group_name FROM audience_group_members WHERE member = ANY($1::text[])"
    " UNION SELECT m.group_name FROM audience_group_members m JOIN member_of g ON m.member = 'group:' || g.name)"
)


def principal_selectors(name: str) -> list[str]:
    """The selectors that name a principal directly: everyone, and itself."""
    return ["*", f"user:{name}"]


# The columns a grant and a group member are answered with (micromegas's payloads).
_GRANT_COLUMNS = "audience, axis, selector, created_at, created_by"
_MEMBER_COLUMNS = "group_name, member, created_at, created_by"


class AudienceGrantRows:
    """Grants and groups, read per authentication and written by the admin API."""

    pool: asyncpg.Pool

    async def principal_grants(self, name: str, axis: str) -> tuple[list[str], list[str]]:
        """(the principal's groups, transitively; the audiences granted to it on `axis`)."""
        row = await self.pool.fetchrow(
            f"{_MEMBER_OF}, selectors AS (SELECT unnest($1::text[]) AS s UNION SELECT 'group:' || name FROM member_of)"
            " SELECT ARRAY(SELECT name FROM member_of) AS groups,"
            " ARRAY(SELECT DISTINCT audience FROM audience_grants WHERE axis = $2"
            " AND selector IN (SELECT s FROM selectors)) AS audiences",
            principal_selectors(name),
            axis,
        )
        return list(row["groups"]), list(row["audiences"])

    async def add_grant(self, audience: str, axis: str, selector: str, created_by: str) -> tuple[asyncpg.Record, bool]:
        """(the grant row, created now?): an existing grant is returned as it is."""
        keys = {"audience": audience, "axis": axis, "selector": selector}
        return await self._insert_or_existing("audience_grants", keys, created_by, _GRANT_COLUMNS)

    async def list_grants(self) -> list[asyncpg.Record]:
        """Every grant, by audience."""
        return await self.pool.fetch(
            "SELECT audience, axis, selector, created_at, created_by FROM audience_grants"
            " ORDER BY audience, axis, selector"
        )

    async def delete_grant(self, audience: str, axis: str, selector: str) -> bool:
        """True if the grant existed."""
        status = await self.pool.execute(
            "DELETE FROM audience_grants WHERE audience = $1 AND axis = $2 AND selector = $3", audience, axis, selector
        )
        return status.endswith(" 1")

    async def list_groups(self) -> list[asyncpg.Record]:
        """Every group with its direct member count."""
        return await self.pool.fetch(
            "SELECT g.name, g.description, g.created_at, g.created_by,"
            " (SELECT count(*) FROM audience_group_members m WHERE m.group_name = g.name) AS member_count"
            " FROM audience_groups g ORDER BY g.name"
        )

    async def add_group(self, name: str, description: str | None, created_by: str) -> asyncpg.Record | None:
        """The new group's row; None if it exists already."""
        return await self.pool.fetchrow(
            "INSERT INTO audience_groups (name, description, created_by) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING name, description, created_at, created_by, 0::bigint AS member_count",
            name,
            description,
            created_by,
        )

    async def group_referrers(self, name: str) -> list[str]:
        """What still names a group: grants ('grant <audience>:<axis>') and groups nesting it ('group <name>')."""
        return await self.pool.fetchval(
            "SELECT ARRAY(SELECT 'grant ' || audience || ':' || axis FROM audience_grants WHERE selector = $1"
            " UNION ALL SELECT 'group ' || group_name FROM audience_group_members WHERE member = $1)",
            f"group:{name}",
        )

    async def delete_group(self, name: str) -> bool:
        """True if the group existed (its members go with it)."""
        return (await self.pool.execute("DELETE FROM audience_groups WHERE name = $1", name)).endswith(" 1")

    async def group_exists(self, name: str) -> bool:
        """Whether a group of this name exists."""
        return await self.pool.fetchval("SELECT EXISTS (SELECT 1 FROM audience_groups WHERE name = $1)", name)

    async def group_members(self, name: str) -> list[asyncpg.Record]:
        """A group's direct members."""
        return await self.pool.fetch(
            "SELECT group_name, member, created_at, created_by FROM audience_group_members"
            " WHERE group_name = $1 ORDER BY member",
            name,
        )

    async def add_group_member(self, name: str, member: str, created_by: str) -> tuple[asyncpg.Record, bool]:
        """(the member row, created now?)."""
        keys = {"group_name": name, "member": member}
        return await self._insert_or_existing("audience_group_members", keys, created_by, _MEMBER_COLUMNS)

    async def group_contains(self, outer: str, inner: str) -> bool:
        """Whether group `inner` is `outer` or (transitively) contains it: nesting `inner` in `outer` would loop."""
        return await self.pool.fetchval(
            "WITH RECURSIVE inside(name) AS (SELECT $2::text UNION"
            " SELECT substr(m.member, 7) FROM audience_group_members m JOIN inside i ON m.group_name = i.name"
            " WHERE m.member LIKE 'group:%') SELECT EXISTS (SELECT 1 FROM inside WHERE name = $1)",
            outer,
            inner,
        )

    async def remove_group_member(self, name: str, member: str) -> bool:
        """True if the member was there."""
        status = await self.pool.execute(
            "DELETE FROM audience_group_members WHERE group_name = $1 AND member = $2", name, member
        )
        return status.endswith(" 1")

    async def _insert_or_existing(
        self, table: str, keys: dict[str, str], created_by: str, columns: str
    ) -> tuple[asyncpg.Record, bool]:
        """(the row of `keys`, created now?): inserted unless it exists, else the existing row as it is."""
        names = [*keys, "created_by"]
        placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
        row = await self.pool.fetchrow(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})"
            f" ON CONFLICT DO NOTHING RETURNING {columns}",
            *keys.values(),
            created_by,
        )
        if row is not None:
            return row, True
        where = " AND ".join(f"{name} = ${i}" for i, name in enumerate(keys, 1))
        return await self.pool.fetchrow(f"SELECT {columns} FROM {table} WHERE {where}", *keys.values()), False
