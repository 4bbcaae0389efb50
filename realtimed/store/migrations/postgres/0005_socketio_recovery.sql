-- realtimed store schema, version 5 (PostgreSQL): Socket.IO connection state
-- recovery, the positions of a disconnected session kept under its pid until
-- expires_at, so that a restart or another node recovers it.

CREATE TABLE socketio_recovery (
    pid        text        PRIMARY KEY,
    user_id    text        NOT NULL,
    record     bytea       NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX socketio_recovery_by_expiry ON socketio_recovery (expires_at);
