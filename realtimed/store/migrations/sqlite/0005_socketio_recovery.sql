-- realtimed store schema, version 5 (SQLite): Socket.IO connection state recovery,
-- the positions of a disconnected session kept under its pid until expires_at
-- (microseconds since the epoch, UTC).

CREATE TABLE socketio_recovery (
    pid        TEXT    PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    record     BLOB    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX socketio_recovery_by_expiry ON socketio_recovery (expires_at);
