-- API keys accepted by both APIs besides SPANLAKE_API_KEYS. Only the SHA-256 of a key is kept.
CREATE TABLE api_keys (
    key_id UUID PRIMARY KEY,
    key_hash BYTEA NOT NULL,
    name VARCHAR(255) NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash);
