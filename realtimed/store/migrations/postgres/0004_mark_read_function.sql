-- realtimed store schema, version 4 (PostgreSQL): a read receipt in one round trip.
--
-- realtimed_mark_read moves a member's read cursor as the store's mark_read
-- describes, in one statement (one round trip and one commit, where the
-- statements one by one took six). The member row is locked first, as before:
-- an append waiting for it counts its message after this read. Each later
-- statement of the function reads what is committed by then (READ COMMITTED
-- takes a snapshot per statement), so a message appended while this read
-- waited for the lock is counted.
--
-- out_status: 'ok', 'no_conversation' or 'not_member'; out_changed is false
-- when the cursor was at or past the target already (the row is left as it was).

CREATE FUNCTION realtimed_mark_read(
    p_conversation_id text,
    p_user_id         text,
    p_seq             bigint,
    p_now             timestamptz,
    OUT out_status     text,
    OUT out_read_seq   bigint,
    OUT out_read_at    timestamptz,
    OUT out_unread     integer,
    OUT out_changed    boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    cur_seq    bigint;
    cur_at     timestamptz;
    cur_unread integer;
    last       bigint;
    target     bigint;
BEGIN
    SELECT m.read_seq, m.read_at, m.unread_count INTO cur_seq, cur_at, cur_unread FROM members m
     WHERE m.conversation_id = p_conversation_id AND m.user_id = p_user_id AND m.left_at IS NULL
       FOR UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM conversations c WHERE c.id = p_conversation_id) THEN
            out_status := 'not_member';
        ELSE
            out_status := 'no_conversation';
        END IF;
        RETURN;
    END IF;
    out_status := 'ok';
    SELECT c.last_seq INTO last FROM conversations c WHERE c.id = p_conversation_id;
    target := LEAST(p_seq, last);
    IF target <= cur_seq THEN
        out_read_seq := cur_seq;
        out_read_at := cur_at;
        out_unread := cur_unread;
        out_changed := false;
        RETURN;
    END IF;
    out_unread := 0;
    IF target < last THEN
        SELECT count(*) INTO out_unread FROM messages m
         WHERE m.conversation_id = p_conversation_id AND m.seq > target AND NOT m.deleted
           AND m.sender_id <> p_user_id;
    END IF;
    UPDATE members m SET read_seq = target, read_at = p_now, unread_count = out_unread
     WHERE m.conversation_id = p_conversation_id AND m.user_id = p_user_id;
    out_read_seq := target;
    out_read_at := p_now;
    out_changed := true;
END
$$;
