"""The screens of the web UI (micromegas's `screens` table): reads and writes, configs as JSON text."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

_COLUMNS = (
    "name, screen_type, config::text AS config, created_by, updated_by, created_at, updated_at, managed_by, folder_path"
)


def _screen(record: asyncpg.Record | None) -> dict[str, Any] | None:
    """The screen as micromegas's JSON has it (its config parsed), None for no row."""
    if record is None:
        return None
    return {**dict(record.items()), "config": json.loads(record["config"])}


class ScreenRows:
    """Reads and writes of `screens`."""

    pool: asyncpg.Pool

    async def list_screens(self) -> list[dict[str, Any]]:
        """Every screen, by name."""
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM screens ORDER BY name")
        return [_screen(row) for row in rows]

    async def get_screen(self, name: str) -> dict[str, Any] | None:
        """The screen called `name`, None if there is none."""
        return _screen(await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM screens WHERE name = $1", name))

    async def insert_screen(
        self, name: str, screen_type: str, config: Any, user: str, managed_by: str | None, folder_path: str
    ) -> dict[str, Any] | None:
        """The new screen; None when one by that name exists."""
        row = await self.pool.fetchrow(
            "INSERT INTO screens (name, screen_type, config, created_by, updated_by, managed_by, folder_path)"
            " VALUES ($1, $2, $3::jsonb, $4, $4, $5, $6) ON CONFLICT (name) DO NOTHING"
            f" RETURNING {_COLUMNS}",
            name,
            screen_type,
            json.dumps(config),
            user,
            managed_by,
            folder_path,
        )
        return _screen(row)

    async def update_screen(
        self, name: str, config: Any | None, user: str, managed_by: str | None, folder_path: str | None
    ) -> dict[str, Any] | None:
        """The screen with each given field replaced (None keeps it); None when there is no such screen."""
        row = await self.pool.fetchrow(
            "UPDATE screens SET config = COALESCE($2::jsonb, config), updated_by = $3, updated_at = now(),"
            " managed_by = COALESCE($4, managed_by), folder_path = COALESCE($5, folder_path)"
            f" WHERE name = $1 RETURNING {_COLUMNS}",
            name,
            None if config is None else json.dumps(config),
            user,
            managed_by,
            folder_path,
        )
        return _screen(row)

    async def delete_screen(self, name: str) -> bool:
        """Deletes the screen; False if there was none by that name."""
        return await self.pool.execute("DELETE FROM screens WHERE name = $1", name) != "DELETE 0"
