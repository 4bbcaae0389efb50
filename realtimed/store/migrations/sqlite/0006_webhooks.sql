-- realtimed store schema, version 5 (SQLite): webhook endpoints and the attempts
-- of their deliveries. An endpoint's source is 'config' (from [[webhooks.endpoints]],
-- replaced on every start and reload) or 'api' (made through the server API, kept).
-- events and secrets are JSON lists; enabled is 0 or 1; times are microseconds
-- since the epoch, UTC.

CREATE TABLE webhook_endpoints (
    id                   TEXT    PRIMARY KEY,
    source               TEXT    NOT NULL,
    url                  TEXT    NOT NULL,
    events               TEXT    NOT NULL,
    secrets              TEXT    NOT NULL,
    enabled              INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    disabled_at          INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

CREATE TABLE webhook_attempts (
    n            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT    NOT NULL,
    webhook_id   TEXT    NOT NULL,
    endpoint_id  TEXT    NOT NULL,
    event        TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    status       INTEGER,
    error        TEXT,
    latency_ms   REAL    NOT NULL,
    response     TEXT    NOT NULL,
    at           INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, n);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, n);
