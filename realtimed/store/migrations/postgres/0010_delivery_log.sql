-- realtimed store schema, version 7 (PostgreSQL): the delivery log, one row per
-- outcome of one notification for one user on one channel (docs/protocol.md,
-- "Delivery log"); n orders the rows written at the same time.

CREATE TABLE delivery_log (
    n               bigserial   PRIMARY KEY,
    at              timestamptz NOT NULL,
    user_id         text        NOT NULL,
    channel         text        NOT NULL,
    type            text        NOT NULL,
    outcome         text        NOT NULL,
    notification_id text,
    ref             text        NOT NULL,
    cap             text,
    deferred_until  timestamptz,
    detail          text        NOT NULL
);
CREATE INDEX delivery_log_by_time ON delivery_log (at, n);
CREATE INDEX delivery_log_by_user ON delivery_log (user_id, at, n);
CREATE INDEX delivery_log_by_notification ON delivery_log (notification_id) WHERE notification_id IS NOT NULL;
