-- Changes of keys, grants and groups announced on the `spanlake_keys` channel, in the writing transaction
-- (so at its commit, and never for a rollback), whoever writes them (the web UI, `spanlake api-key`, any
-- other tool): every process caching key lookups (the ingestion workers among them) forgets them on it.
CREATE FUNCTION spanlake_announce_key_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_notify('spanlake_keys', ''); RETURN NULL; END $$;

CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION spanlake_announce_key_change();
CREATE TRIGGER ingestion_api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ingestion_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION spanlake_announce_key_change();
CREATE TRIGGER analytics_api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON analytics_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION spanlake_announce_key_change();
CREATE TRIGGER audience_grants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON audience_grants
    FOR EACH STATEMENT EXECUTE FUNCTION spanlake_announce_key_change();
CREATE TRIGGER audience_groups_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON audience_groups
    FOR EACH STATEMENT EXECUTE FUNCTION spanlake_announce_key_change();
CREATE TRIGGER audience_group_members_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON audience_group_members
    FOR EACH STATEMENT EXECUTE FUNCTION spanlake_announce_key_change();
