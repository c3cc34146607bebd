-- SQL-defined global views (micromegas's lakehouse_view_set_definitions): each row is the
-- `CREATE MATERIALIZED VIEW` statement an admin ran, with the schema its extract query planned to
-- (Arrow IPC), who ran it and when. The maintenance daemon materializes each one's global instance.
CREATE TABLE lakehouse_view_set_definitions (
    view_set_name TEXT PRIMARY KEY,
    definition_sql TEXT NOT NULL,
    update_group INTEGER NOT NULL,
    arrow_schema BYTEA NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    updated_by TEXT NOT NULL
);
