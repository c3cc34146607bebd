-- The query deny list (micromegas's query_deny_list): admin-written rules, each a boolean SQL
-- expression over a query's attribution; a matching query is refused before it is planned.
CREATE TABLE query_deny_list (
    rule_id UUID PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    match_expr TEXT NOT NULL,
    last_hit_at TIMESTAMPTZ
);
CREATE INDEX query_deny_list_created ON query_deny_list (created_at, rule_id);
