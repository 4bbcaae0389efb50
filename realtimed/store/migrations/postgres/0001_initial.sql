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
    updated_at      timestamptz NOT NULL,       -- last change of any kind
    activity_at     timestamptz NOT NULL        -- creation or last message: orders the lists
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
    PRIMARY KEY (conversation_id, user_id)
);
-- Appends only change unread_count, which no index holds: PostgreSQL updates member rows in place (HOT).
CREATE INDEX members_by_user ON members (user_id, conversation_id) WHERE left_at IS NULL;

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

-- Appends a group of messages in one statement (one round trip, one commit): the PostgreSQL
-- store gathers concurrent appends into one call. Items are processed in conversation order,
-- so that concurrent calls lock conversations in one order and wait rather than deadlock.
-- Each item's outcome: 'created' (with seq and version), 'existing' (the message already sent
-- with this client id), 'not_found' (no such conversation) or 'forbidden' (not a member).
CREATE FUNCTION realtimed_append_messages(
    p_nows             timestamptz[],
    p_conversation_ids text[],
    p_sender_ids       text[],
    p_client_ids       text[],
    p_message_ids      text[],
    p_types            text[],
    p_bodies           text[],
    p_media_urls       text[],
    p_reply_tos        text[],
    p_require_member   boolean[],
    p_job_items        integer[],     -- the item each job belongs to
    p_job_ids          text[],
    p_job_queues       text[],
    p_job_kinds        text[],
    p_job_payloads     text[],        -- JSON text
    p_job_priorities   integer[],
    p_job_max_attempts integer[],
    p_job_run_ats      timestamptz[],
    p_job_dedupe_keys  text[]
) RETURNS TABLE (out_item integer, out_status text, out_seq bigint, out_version bigint, out_existing_id text)
LANGUAGE plpgsql AS $$
DECLARE
    i           integer;
    c_type      text;
    is_member   boolean;
    found_id    text;
    new_seq     bigint;
    new_version bigint;
    queues      text[] := '{}';
    created_convs   text[] := '{}';
    created_senders text[] := '{}';
    created_types   text[] := '{}';
BEGIN
    FOR i IN
        SELECT s.i FROM generate_subscripts(p_conversation_ids, 1) AS s(i)
        ORDER BY p_conversation_ids[s.i], s.i
    LOOP
        out_item := i;
        out_seq := NULL;
        out_version := NULL;
        out_existing_id := NULL;
        SELECT c.type INTO c_type FROM conversations c WHERE c.id = p_conversation_ids[i] FOR UPDATE;
        IF NOT FOUND THEN
            out_status := 'not_found';
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- After the lock: a concurrent append with the same client id has committed or not begun.
        SELECT m.id INTO found_id FROM messages m
         WHERE m.conversation_id = p_conversation_ids[i] AND m.sender_id = p_sender_ids[i]
           AND m.client_id = p_client_ids[i];
        IF FOUND THEN
            out_status := 'existing';
            out_existing_id := found_id;
            RETURN NEXT;
            CONTINUE;
        END IF;
        IF p_require_member[i] THEN
            SELECT (m.left_at IS NULL OR c_type = 'direct') INTO is_member FROM members m
             WHERE m.conversation_id = p_conversation_ids[i] AND m.user_id = p_sender_ids[i];
            IF NOT FOUND OR NOT is_member THEN
                out_status := 'forbidden';
                RETURN NEXT;
                CONTINUE;
            END IF;
        END IF;
        UPDATE conversations c
           SET last_seq = c.last_seq + 1, version = c.version + 1, last_message_id = p_message_ids[i],
               updated_at = p_nows[i], activity_at = p_nows[i]
         WHERE c.id = p_conversation_ids[i]
        RETURNING c.last_seq, c.version INTO new_seq, new_version;
        INSERT INTO messages (id, conversation_id, seq, version, sender_id, client_id, type, body, media_url,
                              reply_to, created_at)
        VALUES (p_message_ids[i], p_conversation_ids[i], new_seq, new_version, p_sender_ids[i], p_client_ids[i],
                p_types[i], p_bodies[i], p_media_urls[i], p_reply_tos[i], p_nows[i]);
        created_convs := created_convs || p_conversation_ids[i];
        created_senders := created_senders || p_sender_ids[i];
        created_types := created_types || c_type;
        IF i = ANY(p_job_items) THEN
            INSERT INTO jobs (id, queue, kind, payload, priority, status, attempts, max_attempts, run_at,
                              dedupe_key, created_at)
            SELECT j.id, j.queue, j.kind,
                   j.payload::jsonb || jsonb_build_object('message_id', p_message_ids[i], 'seq', new_seq),
                   j.priority, 'queued', 0, j.max_attempts, j.run_at, j.dedupe_key, p_nows[i]
              FROM unnest(p_job_items, p_job_ids, p_job_queues, p_job_kinds, p_job_payloads, p_job_priorities,
                          p_job_max_attempts, p_job_run_ats, p_job_dedupe_keys)
                   AS j(item, id, queue, kind, payload, priority, max_attempts, run_at, dedupe_key)
             WHERE j.item = i
            ON CONFLICT (dedupe_key) DO NOTHING;
            queues := queues || ARRAY(SELECT p_job_queues[k] FROM generate_subscripts(p_job_items, 1) AS k
                                       WHERE p_job_items[k] = i);
        END IF;
        out_status := 'created';
        out_seq := new_seq;
        out_version := new_version;
        RETURN NEXT;
    END LOOP;
    -- Members once per conversation, not once per message (a member row updated again and again
    -- in one transaction grows a version chain that every later update walks): others gain one
    -- unread message per message; in a direct conversation, members who had left are back.
    -- Every conversation concerned is locked above, so no member joins or leaves meanwhile.
    UPDATE members m
       SET unread_count = m.unread_count + a.n, left_at = NULL
      FROM (SELECT mm.conversation_id, mm.user_id, count(*) FILTER (WHERE mm.user_id <> x.sender) AS n
              FROM unnest(created_convs, created_senders, created_types) AS x(cid, sender, ctype)
              JOIN members mm ON mm.conversation_id = x.cid
             WHERE (mm.user_id <> x.sender OR mm.left_at IS NOT NULL) AND (mm.left_at IS NULL OR x.ctype = 'direct')
             GROUP BY mm.conversation_id, mm.user_id) AS a
     WHERE m.conversation_id = a.conversation_id AND m.user_id = a.user_id;
    PERFORM pg_notify('realtimed_jobs', q) FROM (SELECT DISTINCT unnest(queues) AS q) AS d;
END
$$;
