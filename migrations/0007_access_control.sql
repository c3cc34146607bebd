-- Access control by audience (micromegas's AbAC). `api_keys` (0003) stays as it is: its keys work on
-- both surfaces and read everything, so an existing data dir upgrades with its keys intact.

-- The audience a process was stamped with at ingestion (its `micromegas.audience` property), NULL when
-- unstamped. Immutable, so it can back the index that read scopes look processes up by.
CREATE FUNCTION spanlake_audience(properties micromegas_property[]) RETURNS TEXT
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT p.value FROM unnest(properties) p WHERE p.key = 'micromegas.audience' LIMIT 1 $$;
CREATE INDEX processes_audience ON processes (spanlake_audience(properties));

-- Write keys: each stamps one audience on what it ingests. Only the SHA-256 of a key is kept.
CREATE TABLE ingestion_api_keys (
    key_id UUID PRIMARY KEY,
    key_hash BYTEA NOT NULL UNIQUE,
    name VARCHAR(255) NOT NULL,
    audience VARCHAR(255) NOT NULL,
    allowed_cidrs CIDR[] NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL DEFAULT '',
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    revoked_by TEXT
);

-- Read keys (service accounts): the audiences they read; NULL reads everything.
CREATE TABLE analytics_api_keys (
    key_id UUID PRIMARY KEY,
    key_hash BYTEA NOT NULL UNIQUE,
    name VARCHAR(255) NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    read_audiences VARCHAR(255)[],
    allowed_cidrs CIDR[] NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL DEFAULT '',
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    revoked_by TEXT
);

-- Who may read or mint into an audience: selector '*', 'user:<name>' or 'group:<name>'.
CREATE TABLE audience_grants (
    audience VARCHAR(255) NOT NULL,
    axis TEXT NOT NULL CHECK (axis IN ('read', 'mint')),
    selector TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (audience, axis, selector)
);

-- Groups of principals; members are '*', 'user:<name>' or 'group:<name>' (nested). `admins` always exists.
CREATE TABLE audience_groups (
    name VARCHAR(255) PRIMARY KEY,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE audience_group_members (
    group_name VARCHAR(255) NOT NULL REFERENCES audience_groups (name) ON DELETE CASCADE,
    member TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (group_name, member)
);
INSERT INTO audience_groups (name, description, created_by) VALUES ('admins', 'may administer spanlake', 'migration');
