-- Screens (micromegas's analytics-web-srv `screens` table): named, saved pages of the web UI, each a
-- screen type and its JSON config (a notebook's cells, its time range), in a folder ('' = the root).
CREATE TABLE screens (
    name TEXT PRIMARY KEY,
    screen_type TEXT NOT NULL,
    config JSONB NOT NULL,
    created_by TEXT,
    updated_by TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    managed_by TEXT,            -- the repository that manages the screen as code (micromegas-screens)
    folder_path TEXT NOT NULL DEFAULT ''
);
-- The folders page lists a folder's screens.
CREATE INDEX screens_folder ON screens (folder_path, name);
