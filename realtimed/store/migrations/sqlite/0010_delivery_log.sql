-- realtimed store schema, version 7 (SQLite): the delivery log, one row per
-- outcome of one notification for one user on one channel (docs/protocol.md,
-- "Delivery log"). Times are microseconds since the epoch, UTC; n orders the
-- rows written at the same time.

CREATE TABLE delivery_log (
    n               INTEGER PRIMARY KEY AUTOINCREMENT,
    at              INTEGER NOT NULL,
    user_id         TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    notification_id TEXT,
    ref             TEXT    NOT NULL,
    cap             TEXT,
    deferred_until  INTEGER,
    detail          TEXT    NOT NULL
);
CREATE INDEX delivery_log_by_time ON delivery_log (at, n);
CREATE INDEX delivery_log_by_user ON delivery_log (user_id, at, n);
CREATE INDEX delivery_log_by_notification ON delivery_log (notification_id) WHERE notification_id IS NOT NULL;
