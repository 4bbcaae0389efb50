-- realtimed store schema, version 2 (PostgreSQL): bans, so that a ban holds on
-- every node and across restarts.

CREATE TABLE bans (
    user_id      text PRIMARY KEY,
    banned_until timestamptz,               -- NULL: until lifted
    created_at   timestamptz NOT NULL
);
CREATE INDEX bans_by_until ON bans (banned_until) WHERE banned_until IS NOT NULL;
