"""The stored definitions of SQL-defined views (`CREATE MATERIALIZED VIEW`)."""

from __future__ import annotations

import asyncpg


class ViewDefinitionRows:
    """Reads and writes of `lakehouse_view_set_definitions`."""

    pool: asyncpg.Pool

    async def view_definitions(self) -> list[asyncpg.Record]:
        """Every stored definition, by name."""
        return await self.pool.fetch(
            "SELECT view_set_name, definition_sql, update_group, arrow_schema, updated_at, updated_by"
            " FROM lakehouse_view_set_definitions ORDER BY view_set_name"
        )

    async def store_view_definition(
        self, name: str, definition_sql: str, update_group: int, arrow_schema: bytes, updated_by: str, replace: bool
    ) -> bool:
        """Stores a definition, now; with `replace`, over the one of that name. False when one exists
        and `replace` is not given (nothing stored)."""
        conflict = (
            "DO UPDATE SET definition_sql = EXCLUDED.definition_sql, update_group = EXCLUDED.update_group,"
            " arrow_schema = EXCLUDED.arrow_schema, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by"
            if replace
            else "DO NOTHING"
        )
        status = await self.pool.execute(
            "INSERT INTO lakehouse_view_set_definitions"
            " (view_set_name, definition_sql, update_group, arrow_schema, updated_at, updated_by)"
            f" VALUES ($1, $2, $3, $4, now(), $5) ON CONFLICT (view_set_name) {conflict}",
            name,
            definition_sql,
            update_group,
            arrow_schema,
            updated_by,
        )
        return status != "INSERT 0 0"

    async def delete_view_definition(self, name: str) -> bool:
        """Deletes a definition; False if there was none of this name."""
        status = await self.pool.execute("DELETE FROM lakehouse_view_set_definitions WHERE view_set_name = $1", name)
        return status != "DELETE 0"
