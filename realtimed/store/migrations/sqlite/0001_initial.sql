-- realtimed store schema, version 1 (SQLite).
-- Times are INTEGER microseconds since 1970-01-01 UTC; JSON is TEXT; booleans are 0/1.

CREATE TABLE conversations (
    id              TEXT PRIMARY KEY,
    type            TEXT NOT NULL,              -- direct | group
    title           TEXT,
    direct_key      TEXT UNIQUE,                -- the two user ids of a direct conversation
    last_seq        INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 0,
    last_message_id TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,           -- last change of any kind
    activity_at     INTEGER NOT NULL            -- creation or last message: orders the lists
) WITHOUT ROWID;

CREATE TABLE members (
    conversation_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    role            TEXT NOT NULL,
    joined_at       INTEGER NOT NULL,
    left_at         INTEGER,
    muted           INTEGER NOT NULL DEFAULT 0,
    read_seq        INTEGER NOT NULL DEFAULT 0,
    read_at         INTEGER,
    unread_count    INTEGER NOT NULL DEFAULT 0,  -- messages after read_seq, not deleted, not own
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id) WHERE left_at IS NULL;

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    sender_id       TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    type            TEXT NOT NULL,
    body            TEXT NOT NULL,
    media_url       TEXT,
    reply_to        TEXT,
    created_at      INTEGER NOT NULL,
    edited_at       INTEGER,
    deleted_at      INTEGER,
    deleted         INTEGER NOT NULL DEFAULT 0,
    purged          INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);
CREATE UNIQUE INDEX messages_by_client_id ON messages (conversation_id, sender_id, client_id);
CREATE INDEX messages_by_version ON messages (conversation_id, version);
CREATE INDEX messages_to_purge ON messages (deleted_at) WHERE deleted = 1 AND purged = 0;

CREATE TABLE contacts (
    user_id    TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    PRIMARY KEY (user_id, contact_id)
);
CREATE INDEX contacts_reverse ON contacts (contact_id);

CREATE TABLE blocks (
    user_id    TEXT NOT NULL,
    blocked_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
);

CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    data       TEXT NOT NULL,
    priority   TEXT NOT NULL,
    group_key  TEXT,
    dedupe_key TEXT,
    created_at INTEGER NOT NULL,
    read_at    INTEGER
);
CREATE UNIQUE INDEX notifications_by_seq ON notifications (user_id, seq);
CREATE UNIQUE INDEX notifications_by_dedupe_key ON notifications (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX notifications_unread ON notifications (user_id, seq) WHERE read_at IS NULL;
CREATE INDEX notifications_read_at ON notifications (read_at) WHERE read_at IS NOT NULL;

CREATE TABLE notification_counters (
    user_id      TEXT PRIMARY KEY,
    last_seq     INTEGER NOT NULL DEFAULT 0,
    unread_count INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE notification_preferences (
    user_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    in_app  INTEGER NOT NULL,
    push    INTEGER NOT NULL,
    PRIMARY KEY (user_id, type)
);

CREATE TABLE user_settings (
    user_id           TEXT PRIMARY KEY,
    quiet_hours_start TEXT,
    quiet_hours_end   TEXT,
    time_zone         TEXT NOT NULL
);

CREATE TABLE devices (
    token        TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    platform     TEXT NOT NULL,
    app_version  TEXT NOT NULL,
    active       INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id);
CREATE INDEX devices_by_last_seen ON devices (last_seen_at) WHERE active = 1;

CREATE TABLE device_topics (
    token TEXT NOT NULL,
    topic TEXT NOT NULL,
    PRIMARY KEY (token, topic)
);
CREATE INDEX device_topics_by_topic ON device_topics (topic);

CREATE TABLE last_seen (
    user_id      TEXT PRIMARY KEY,
    last_seen_at INTEGER NOT NULL
);

CREATE TABLE jobs (
    n                INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order
    id               TEXT NOT NULL UNIQUE,
    queue            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    last_error       TEXT,
    dedupe_key       TEXT UNIQUE,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
CREATE INDEX jobs_queued ON jobs (queue, priority DESC, run_at, n) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (queue, lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_by_status ON jobs (status, n);

CREATE TABLE cron_ticks (
    name      TEXT PRIMARY KEY,
    last_tick INTEGER NOT NULL
);
