-- realtimed store schema, version 2 (SQLite): bans, so that a ban holds on every
-- node and across restarts. Times are INTEGER microseconds since 1970-01-01 UTC.

CREATE TABLE bans (
    user_id      TEXT PRIMARY KEY,
    banned_until INTEGER,                   -- NULL: until lifted
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX bans_by_until ON bans (banned_until) WHERE banned_until IS NOT NULL;
