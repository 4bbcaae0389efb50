-- realtimed store schema, version 1 (PostgreSQL).
-- Times are timestamptz (UTC); JSON is jsonb.

CREATE TABLE conversations (
    id              text PRIMARY KEY,
    type            text NOT NULL,              -- direct | group
    title           text,
    direct_key      text UNIQUE,                -- the two user ids of a direct conversation
    last_seq        bigint NOT NULL DEFAULT 0,
    version         bigint NOT NULL DEFAULT 0,
    last_message_id text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE TABLE members (
    conversation_id text NOT NULL,
    user_id         text NOT NULL,
    role            text NOT NULL,
    joined_at       timestamptz NOT NULL,
    left_at         timestamptz,
    muted           boolean NOT NULL DEFAULT false,
    read_seq        bigint NOT NULL DEFAULT 0,
    read_at         timestamptz,
    unread_count    integer NOT NULL DEFAULT 0,  -- messages after read_seq, not deleted, not own
    activity_at     timestamptz NOT NULL,        -- last message or joining: orders a user's list
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, activity_at DESC, conversation_id DESC) WHERE left_at IS NULL;

CREATE TABLE messages (
    id              text PRIMARY KEY,
    conversation_id text NOT NULL,
    seq             bigint NOT NULL,
    version         bigint NOT NULL,
    sender_id       text NOT NULL,
    client_id       text NOT NULL,
    type            text NOT NULL,
    body            text NOT NULL,
    media_url       text,
    reply_to        text,
    created_at      timestamptz NOT NULL,
    edited_at       timestamptz,
    deleted_at      timestamptz,
    deleted         boolean NOT NULL DEFAULT false,
    purged          boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);
CREATE UNIQUE INDEX messages_by_client_id ON messages (conversation_id, sender_id, client_id);
CREATE INDEX messages_by_version ON messages (conversation_id, version);
CREATE INDEX messages_to_purge ON messages (deleted_at) WHERE deleted AND NOT purged;

CREATE TABLE contacts (
    user_id    text NOT NULL,
    contact_id text NOT NULL,
    PRIMARY KEY (user_id, contact_id)
);
CREATE INDEX contacts_reverse ON contacts (contact_id);

CREATE TABLE blocks (
    user_id    text NOT NULL,
    blocked_id text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
);

CREATE TABLE notifications (
    id         text PRIMARY KEY,
    user_id    text NOT NULL,
    seq        bigint NOT NULL,
    type       text NOT NULL,
    title      text NOT NULL,
    body       text NOT NULL,
    data       jsonb NOT NULL,
    priority   text NOT NULL,
    group_key  text,
    dedupe_key text,
    created_at timestamptz NOT NULL,
    read_at    timestamptz
);
CREATE UNIQUE INDEX notifications_by_seq ON notifications (user_id, seq);
CREATE UNIQUE INDEX notifications_by_dedupe_key ON notifications (user_id, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX notifications_unread ON notifications (user_id, seq) WHERE read_at IS NULL;
CREATE INDEX notifications_read_at ON notifications (read_at) WHERE read_at IS NOT NULL;

CREATE TABLE notification_counters (
    user_id      text PRIMARY KEY,
    last_seq     bigint NOT NULL DEFAULT 0,
    unread_count integer NOT NULL DEFAULT 0
);

CREATE TABLE notification_preferences (
    user_id text NOT NULL,
    type    text NOT NULL,
    in_app  boolean NOT NULL,
    push    boolean NOT NULL,
    PRIMARY KEY (user_id, type)
);

CREATE TABLE user_settings (
    user_id           text PRIMARY KEY,
    quiet_hours_start text,
    quiet_hours_end   text,
    time_zone         text NOT NULL
);

CREATE TABLE devices (
    token        text PRIMARY KEY,
    user_id      text NOT NULL,
    platform     text NOT NULL,
    app_version  text NOT NULL,
    active       boolean NOT NULL,
    last_seen_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id);
CREATE INDEX devices_by_last_seen ON devices (last_seen_at) WHERE active;

CREATE TABLE device_topics (
    token text NOT NULL,
    topic text NOT NULL,
    PRIMARY KEY (token, topic)
);
CREATE INDEX device_topics_by_topic ON device_topics (topic);

CREATE TABLE last_seen (
    user_id      text PRIMARY KEY,
    last_seen_at timestamptz NOT NULL
);

CREATE TABLE jobs (
    n                bigserial PRIMARY KEY,       -- creation order
    id               text NOT NULL UNIQUE,
    queue            text NOT NULL,
    kind             text NOT NULL,
    payload          jsonb NOT NULL,
    priority         integer NOT NULL,
    status           text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    run_at           timestamptz NOT NULL,
    last_error       text,
    dedupe_key       text COLLATE "C" UNIQUE,     -- byte order, for prefix ranges
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE INDEX jobs_queued ON jobs (queue, priority DESC, run_at, n) WHERE status = 'queued';
CREATE INDEX jobs_running ON jobs (queue, lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_by_status ON jobs (status, n);

CREATE TABLE cron_ticks (
    name      text PRIMARY KEY,
    last_tick timestamptz NOT NULL
);
