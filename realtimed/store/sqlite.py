"""The embedded store: one SQLite file in WAL mode.

Writes: one writer task owns the write connection. Callers put write requests
(a function of the connection) on a bounded channel; the writer takes every
request waiting, up to ``store.sqlite_batch_max``, and runs them in ONE
transaction on a worker thread. A request that fails is rolled back alone and
the others commit: the group is then run again with each request inside its
own SAVEPOINT (request functions are pure functions of the connection, so a
second run is the same as the first). Before committing, the writer waits up
to 3 ms for as many requests as its last group answered (those callers usually
write again at once), so that under load groups stay large. The connection runs
with ``synchronous=FULL``: every COMMIT fsyncs the WAL, so a write is durable
when its call returns, and a group of writes costs one fsync. Because there is
one writer, read-modify-write operations (``seq`` assignment, job claims) are
atomic without locks.

Reads: a small pool of connections (``store.sqlite_readers``) used on worker
threads; WAL lets them read while the writer writes, and each read sees the
last commit. Nothing blocks the Trio loop.

Times are stored as integer microseconds since the epoch, UTC.

Resource handling: ``run`` opens the connections, migrates, serves until
cancelled, then fails queued writes with ``Unavailable`` and closes the
connections. A write being committed when ``run`` is cancelled completes first.

Error handling: SQLite errors other than constraint violations (a full disk,
an I/O error, a closed store) become ``Unavailable``.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import outcome
import trio

from realtimed.clock import WallClock
from realtimed.config import StoreConfig
from realtimed.errors import Conflict, Forbidden, NotFound, Unavailable, ValidationFailed
from realtimed.store._common import (
    Migration,
    check_final_status,
    check_history_bounds,
    check_platform,
    check_settings,
    check_text,
    clamp_limit,
    decode_cursor,
    decode_time_cursor,
    direct_key,
    dumps,
    encode_cursor,
    from_micros,
    load_migrations,
    loads,
    new_id,
    pending_migrations,
    preference_channels,
    to_micros,
    utc,
)
from realtimed.store.base import (
    FINISHED_JOB_STATUSES,
    ROLE_MEMBER,
    ROLE_OWNER,
    BanRecord,
    ConversationRecord,
    DeviceRecord,
    JobRecord,
    JobSpec,
    MemberRecord,
    MessagePage,
    MessageRecord,
    NewNotification,
    NotificationPreference,
    NotificationRecord,
    ReadState,
    UserSettings,
)

__all__ = ["SQLiteStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_BUSY_TIMEOUT_S: Final = 5.0
_CLOSE_TIMEOUT_S: Final = 10.0
_GATHER_WAIT_S: Final = 0.003

_MSG_COLS: Final = (
    "id, conversation_id, seq, version, sender_id, client_id, type, body, media_url, reply_to, "
    "created_at, edited_at, deleted_at, deleted"
)
_MEMBER_COLS: Final = "user_id, role, joined_at, left_at, muted, read_seq, read_at, unread_count"
_NOTE_COLS: Final = "id, user_id, seq, type, title, body, data, priority, group_key, dedupe_key, created_at, read_at"
_JOB_COLS: Final = (
    "id, queue, kind, payload, priority, status, attempts, max_attempts, run_at, last_error, dedupe_key, "
    "lease_owner, lease_expires_at, created_at, finished_at"
)
_DEVICE_COLS: Final = "token, user_id, platform, app_version, active, last_seen_at, created_at"


# ---------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------


_us = to_micros
_dt = from_micros


def _odt(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


def _message(r: Sequence[Any]) -> MessageRecord:
    return MessageRecord(
        id=r[0],
        conversation_id=r[1],
        seq=r[2],
        version=r[3],
        sender_id=r[4],
        client_id=r[5],
        type=r[6],
        body=r[7],
        media_url=r[8],
        reply_to=r[9],
        created_at=_dt(r[10]),
        edited_at=_odt(r[11]),
        deleted_at=_odt(r[12]),
        deleted=bool(r[13]),
    )


def _member(r: Sequence[Any]) -> MemberRecord:
    return MemberRecord(
        user_id=r[0],
        role=r[1],
        joined_at=_dt(r[2]),
        left_at=_odt(r[3]),
        muted=bool(r[4]),
        read_seq=r[5],
        read_at=_odt(r[6]),
        unread_count=r[7],
    )


def _notification(r: Sequence[Any]) -> NotificationRecord:
    return NotificationRecord(
        id=r[0],
        user_id=r[1],
        seq=r[2],
        type=r[3],
        title=r[4],
        body=r[5],
        data=loads(r[6]),
        priority=r[7],
        group_key=r[8],
        dedupe_key=r[9],
        created_at=_dt(r[10]),
        read_at=_odt(r[11]),
    )


def _job(r: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=r[0],
        queue=r[1],
        kind=r[2],
        payload=loads(r[3]),
        priority=r[4],
        status=r[5],
        attempts=r[6],
        max_attempts=r[7],
        run_at=_dt(r[8]),
        last_error=r[9],
        dedupe_key=r[10],
        lease_owner=r[11],
        lease_expires_at=_odt(r[12]),
        created_at=_dt(r[13]),
        finished_at=_odt(r[14]),
    )


def _json_list(values: Iterable[str]) -> str:
    return dumps(list(values))


def _prefix_upper(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (binary order)."""
    if not prefix:
        return None
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return None
    return prefix[:-1] + chr(last + 1)


# ---------------------------------------------------------------------------
# Operations: plain functions of a connection, run on a worker thread
# ---------------------------------------------------------------------------

_Conn = sqlite3.Connection


def _load_message(conn: _Conn, message_id: str) -> MessageRecord | None:
    row = conn.execute(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else _message(row)


def _load_conversation(conn: _Conn, conversation_id: str) -> ConversationRecord | None:
    row = conn.execute(
        "SELECT id, type, title, last_seq, version, last_message_id, created_at, updated_at "
        "FROM conversations WHERE id = ?",
        (conversation_id,),
    ).fetchone()
    if row is None:
        return None
    members = tuple(
        _member(r)
        for r in conn.execute(
            f"SELECT {_MEMBER_COLS} FROM members WHERE conversation_id = ? AND left_at IS NULL "
            "ORDER BY joined_at, user_id",
            (conversation_id,),
        )
    )
    last = _load_message(conn, row[5]) if row[5] is not None else None
    return ConversationRecord(
        id=row[0],
        type=row[1],
        title=row[2],
        members=members,
        last_message=last,
        last_seq=row[3],
        version=row[4],
        created_at=_dt(row[6]),
        updated_at=_dt(row[7]),
    )


def _must_conversation(conn: _Conn, conversation_id: str) -> ConversationRecord:
    conv = _load_conversation(conn, conversation_id)
    if conv is None:
        raise NotFound("no such conversation")
    return conv


def _conv_head(conn: _Conn, conversation_id: str) -> tuple[str, int, int]:
    """(type, last_seq, version) of a conversation, or NotFound."""
    row = conn.execute(
        "SELECT type, last_seq, version FROM conversations WHERE id = ?", (conversation_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no such conversation")
    return row[0], row[1], row[2]


def _open_direct(conn: _Conn, user_id: str, other_id: str, now: int) -> tuple[ConversationRecord, bool]:
    key = direct_key(user_id, other_id)
    row = conn.execute("SELECT id FROM conversations WHERE direct_key = ?", (key,)).fetchone()
    if row is not None:
        cid = row[0]
        conn.execute(
            "UPDATE members SET left_at = NULL, joined_at = ? WHERE conversation_id = ? AND left_at IS NOT NULL",
            (now, cid),
        )
        return _must_conversation(conn, cid), False
    cid = new_id("c")
    conn.execute(
        "INSERT INTO conversations (id, type, title, direct_key, created_at, updated_at, activity_at) "
        "VALUES (?, 'direct', NULL, ?, ?, ?, ?)",
        (cid, key, now, now, now),
    )
    for uid in dict.fromkeys((user_id, other_id)):
        conn.execute(
            "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
            (cid, uid, ROLE_MEMBER, now),
        )
    return _must_conversation(conn, cid), True


def _create_group(
    conn: _Conn, member_ids: Sequence[str], now: int, title: str | None, owner_id: str | None
) -> ConversationRecord:
    ids = list(dict.fromkeys(([owner_id] if owner_id is not None else []) + list(member_ids)))
    if not ids:
        raise ValidationFailed("member_ids", "a group needs at least one member")
    cid = new_id("c")
    conn.execute(
        "INSERT INTO conversations (id, type, title, created_at, updated_at, activity_at) "
        "VALUES (?, 'group', ?, ?, ?, ?)",
        (cid, title, now, now, now),
    )
    conn.executemany(
        "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
        [(cid, uid, ROLE_OWNER if uid == owner_id else ROLE_MEMBER, now) for uid in ids],
    )
    return _must_conversation(conn, cid)


def _add_members(conn: _Conn, cid: str, user_ids: Sequence[str], now: int, role: str) -> ConversationRecord:
    ctype, last_seq, _ = _conv_head(conn, cid)
    if ctype != "group":
        raise Conflict("the members of a direct conversation are fixed")
    for uid in dict.fromkeys(user_ids):
        conn.execute(
            "INSERT INTO members (conversation_id, user_id, role, joined_at, read_seq) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = excluded.role, "
            "joined_at = excluded.joined_at, left_at = NULL, muted = 0, read_seq = excluded.read_seq, "
            "read_at = NULL, unread_count = 0 "
            "WHERE members.left_at IS NOT NULL",
            (cid, uid, role, now, last_seq),
        )
    conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
    return _must_conversation(conn, cid)


def _leave(conn: _Conn, cid: str, user_id: str, now: int) -> ConversationRecord:
    _, last_seq, _ = _conv_head(conn, cid)
    cur = conn.execute(
        "UPDATE members SET left_at = ?, unread_count = 0, "
        "read_at = CASE WHEN read_seq < ? THEN ? ELSE read_at END, read_seq = MAX(read_seq, ?) "
        "WHERE conversation_id = ? AND user_id = ? AND left_at IS NULL",
        (now, last_seq, now, last_seq, cid, user_id),
    )
    if cur.rowcount == 0:
        raise NotFound("not a member of this conversation")
    conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
    return _must_conversation(conn, cid)


def _set_title(conn: _Conn, cid: str, title: str | None, now: int) -> ConversationRecord:
    ctype, _, _ = _conv_head(conn, cid)
    if ctype != "group":
        raise Conflict("a direct conversation has no title")
    conn.execute("UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?", (title, now, cid))
    return _must_conversation(conn, cid)


def _set_muted(conn: _Conn, cid: str, user_id: str, muted: bool) -> MemberRecord:
    row = conn.execute(
        f"UPDATE members SET muted = ? WHERE conversation_id = ? AND user_id = ? AND left_at IS NULL "
        f"RETURNING {_MEMBER_COLS}",
        (int(muted), cid, user_id),
    ).fetchone()
    if row is None:
        raise NotFound("not a member of this conversation")
    return _member(row)


def _get_member(conn: _Conn, cid: str, user_id: str) -> MemberRecord | None:
    row = conn.execute(
        f"SELECT {_MEMBER_COLS} FROM members WHERE conversation_id = ? AND user_id = ?", (cid, user_id)
    ).fetchone()
    return None if row is None else _member(row)


def _list_conversations(
    conn: _Conn, user_id: str, cursor: str | None, limit: int
) -> tuple[list[ConversationRecord], str | None]:
    # A conversation's place: its last message, or when the user joined it if later.
    mine = (
        "SELECT m.conversation_id AS cid, MAX(c.activity_at, m.joined_at) AS act FROM members m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = ? AND m.left_at IS NULL"
    )
    if cursor is None:
        rows = conn.execute(
            f"SELECT cid, act FROM ({mine}) ORDER BY act DESC, cid DESC LIMIT ?", (user_id, limit + 1)
        ).fetchall()
    else:
        act, cid = decode_time_cursor(cursor)
        rows = conn.execute(
            f"SELECT cid, act FROM ({mine}) WHERE (act, cid) < (?, ?) ORDER BY act DESC, cid DESC LIMIT ?",
            (user_id, act, cid, limit + 1),
        ).fetchall()
    page = rows[:limit]
    out = [c for c in (_load_conversation(conn, r[0]) for r in page) if c is not None]
    nxt = encode_cursor(page[-1][1], page[-1][0]) if len(rows) > limit else None
    return out, nxt


def _unread_total(conn: _Conn, user_id: str, include_muted: bool) -> int:
    sql = "SELECT COALESCE(SUM(unread_count), 0) FROM members WHERE user_id = ? AND left_at IS NULL"
    if not include_muted:
        sql += " AND muted = 0"
    return int(conn.execute(sql, (user_id,)).fetchone()[0])


def _set_contacts(conn: _Conn, user_id: str, contact_ids: Sequence[str]) -> None:
    conn.execute("DELETE FROM contacts WHERE user_id = ?", (user_id,))
    conn.executemany(
        "INSERT INTO contacts (user_id, contact_id) VALUES (?, ?)",
        [(user_id, c) for c in dict.fromkeys(contact_ids) if c != user_id],
    )


def _is_contact(conn: _Conn, a: str, b: str) -> bool:
    if a == b:
        return True
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM contacts WHERE (user_id = ? AND contact_id = ?) "
        "OR (user_id = ? AND contact_id = ?)) "
        "OR EXISTS (SELECT 1 FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
        "AND m2.user_id = ? AND m2.left_at IS NULL WHERE m1.user_id = ? AND m1.left_at IS NULL)",
        (a, b, b, a, b, a),
    ).fetchone()
    return bool(row[0])


def _contact_ids(conn: _Conn, user_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT contact_id FROM contacts WHERE user_id = ? "
        "UNION SELECT user_id FROM contacts WHERE contact_id = ? "
        "UNION SELECT m2.user_id FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
        "AND m2.left_at IS NULL WHERE m1.user_id = ? AND m1.left_at IS NULL",
        (user_id, user_id, user_id),
    ).fetchall()
    return {r[0] for r in rows} - {user_id}


def _append(
    conn: _Conn,
    cid: str,
    sender_id: str,
    client_id: str,
    body: str,
    now: int,
    mtype: str,
    media_url: str | None,
    reply_to: str | None,
    require_member: bool,
    jobs: Sequence[JobSpec],
) -> tuple[MessageRecord, bool]:
    # One lookup for the conversation, the sender's membership and an earlier message with this client id.
    head = conn.execute(
        "SELECT c.type, c.last_seq, c.version, "
        "(SELECT m.left_at IS NULL FROM members m WHERE m.conversation_id = c.id AND m.user_id = ?1), "
        "(SELECT g.id FROM messages g WHERE g.conversation_id = c.id AND g.sender_id = ?1 AND g.client_id = ?2) "
        "FROM conversations c WHERE c.id = ?3",
        (sender_id, client_id, cid),
    ).fetchone()
    if head is None:
        raise NotFound("no such conversation")
    ctype, last_seq, version, active, existing_id = head
    if existing_id is not None:
        existing = _load_message(conn, existing_id)
        assert existing is not None
        return _same_or_conflict(existing, body, mtype, media_url, reply_to), False
    direct = ctype == "direct"
    if require_member and (active is None or (not active and not direct)):
        raise Forbidden("not a member of this conversation")
    seq, version = last_seq + 1, version + 1
    mid = new_id("m")
    conn.execute(
        "UPDATE conversations SET last_seq = ?, version = ?, last_message_id = ?, updated_at = ?, activity_at = ? "
        "WHERE id = ?",
        (seq, version, mid, now, now, cid),
    )
    conn.execute(
        "INSERT INTO messages (id, conversation_id, seq, version, sender_id, client_id, type, body, media_url, "
        "reply_to, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (mid, cid, seq, version, sender_id, client_id, mtype, body, media_url, reply_to, now),
    )
    conn.execute(
        "UPDATE members SET unread_count = unread_count + 1 WHERE conversation_id = ? AND user_id <> ? "
        "AND (left_at IS NULL OR ?)",
        (cid, sender_id, direct),
    )
    if direct:
        conn.execute("UPDATE members SET left_at = NULL WHERE conversation_id = ? AND left_at IS NOT NULL", (cid,))
    for spec in jobs:
        _insert_job(
            conn,
            queue=spec.queue,
            kind=spec.kind,
            payload={**spec.payload, "message_id": mid, "seq": seq},
            now=now,
            run_at=_us(spec.run_at) if spec.run_at is not None else now,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            dedupe_key=spec.dedupe_key,
        )
    msg = MessageRecord(
        id=mid,
        conversation_id=cid,
        seq=seq,
        version=version,
        sender_id=sender_id,
        client_id=client_id,
        type=mtype,
        body=body,
        media_url=media_url,
        reply_to=reply_to,
        created_at=_dt(now),
    )
    return msg, True


def _same_or_conflict(
    existing: MessageRecord, body: str, mtype: str, media_url: str | None, reply_to: str | None
) -> MessageRecord:
    if (existing.body, existing.type, existing.media_url, existing.reply_to) != (body, mtype, media_url, reply_to):
        raise Conflict("client_id was already used for a different message")
    return existing


def _editable(conn: _Conn, message_id: str, sender_id: str | None) -> MessageRecord:
    msg = _load_message(conn, message_id)
    if msg is None:
        raise NotFound("no such message")
    if sender_id is not None and msg.sender_id != sender_id:
        raise Forbidden("only the sender may change a message")
    return msg


def _bump_version(conn: _Conn, cid: str, now: int) -> int:
    row = conn.execute(
        "UPDATE conversations SET version = version + 1, updated_at = ? WHERE id = ? RETURNING version", (now, cid)
    ).fetchone()
    return int(row[0])


def _edit(conn: _Conn, message_id: str, body: str, now: int, sender_id: str | None) -> MessageRecord:
    msg = _editable(conn, message_id, sender_id)
    if msg.deleted:
        raise Conflict("the message is deleted")
    version = _bump_version(conn, msg.conversation_id, now)
    conn.execute(
        "UPDATE messages SET body = ?, edited_at = ?, version = ? WHERE id = ?", (body, now, version, message_id)
    )
    return attrs.evolve(msg, body=body, edited_at=_dt(now), version=version)


def _delete(conn: _Conn, message_id: str, now: int, sender_id: str | None) -> tuple[MessageRecord, bool]:
    msg = _editable(conn, message_id, sender_id)
    if msg.deleted:
        return msg, False
    version = _bump_version(conn, msg.conversation_id, now)
    conn.execute(
        "UPDATE messages SET deleted = 1, deleted_at = ?, version = ? WHERE id = ?", (now, version, message_id)
    )
    conn.execute(
        "UPDATE members SET unread_count = unread_count - 1 WHERE conversation_id = ? AND left_at IS NULL "
        "AND user_id <> ? AND read_seq < ? AND unread_count > 0",
        (msg.conversation_id, msg.sender_id, msg.seq),
    )
    return attrs.evolve(msg, deleted=True, deleted_at=_dt(now), version=version), True


def _history(
    conn: _Conn,
    cid: str,
    before_seq: int | None,
    after_seq: int | None,
    changed_since: int | None,
    limit: int,
) -> MessagePage:
    _, _, version = _conv_head(conn, cid)
    base = f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ?"
    if after_seq is not None:
        rows = conn.execute(base + " AND seq > ? ORDER BY seq LIMIT ?", (cid, after_seq, limit + 1)).fetchall()
    elif changed_since is not None:
        rows = conn.execute(
            base + " AND version > ? ORDER BY version LIMIT ?", (cid, changed_since, limit + 1)
        ).fetchall()
    elif before_seq is not None:
        rows = conn.execute(
            base + " AND seq < ? ORDER BY seq DESC LIMIT ?", (cid, before_seq, limit + 1)
        ).fetchall()
    else:
        rows = conn.execute(base + " ORDER BY seq DESC LIMIT ?", (cid, limit + 1)).fetchall()
    has_more = len(rows) > limit
    messages = sorted((_message(r) for r in rows[:limit]), key=lambda m: m.seq)
    return MessagePage(messages=messages, has_more=has_more, version=version)


def _mark_read(conn: _Conn, cid: str, user_id: str, seq: int, now: int) -> ReadState:
    _, last_seq, _ = _conv_head(conn, cid)
    row = conn.execute(
        "SELECT read_seq, read_at, unread_count FROM members WHERE conversation_id = ? AND user_id = ? "
        "AND left_at IS NULL",
        (cid, user_id),
    ).fetchone()
    if row is None:
        raise NotFound("not a member of this conversation")
    read_seq, read_at, unread = row
    target = min(seq, last_seq)
    if target <= read_seq:
        return ReadState(cid, user_id, read_seq, _odt(read_at), unread, False)
    if target >= last_seq:
        unread = 0
    else:
        unread = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND seq > ? AND deleted = 0 AND sender_id <> ?",
            (cid, target, user_id),
        ).fetchone()[0]
    conn.execute(
        "UPDATE members SET read_seq = ?, read_at = ?, unread_count = ? WHERE conversation_id = ? AND user_id = ?",
        (target, now, unread, cid, user_id),
    )
    return ReadState(cid, user_id, target, _dt(now), unread, True)


# -- notifications ------------------------------------------------------------------------------


def _insert_notifications(
    conn: _Conn, items: Sequence[NewNotification], now: int
) -> list[tuple[NotificationRecord, bool]]:
    out: list[tuple[NotificationRecord, bool]] = []
    for item in items:
        if item.dedupe_key is not None:
            row = conn.execute(
                f"SELECT {_NOTE_COLS} FROM notifications WHERE user_id = ? AND dedupe_key = ?",
                (item.user_id, item.dedupe_key),
            ).fetchone()
            if row is not None:
                out.append((_notification(row), False))
                continue
        seq = conn.execute(
            "INSERT INTO notification_counters (user_id, last_seq, unread_count) VALUES (?, 1, 1) "
            "ON CONFLICT (user_id) DO UPDATE SET last_seq = last_seq + 1, unread_count = unread_count + 1 "
            "RETURNING last_seq",
            (item.user_id,),
        ).fetchone()[0]
        nid = new_id("n")
        conn.execute(
            f"INSERT INTO notifications ({_NOTE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (
                nid,
                item.user_id,
                seq,
                item.type,
                item.title,
                item.body,
                dumps(item.data),
                item.priority,
                item.group_key,
                item.dedupe_key,
                now,
            ),
        )
        record = NotificationRecord(
            id=nid,
            user_id=item.user_id,
            seq=seq,
            type=item.type,
            title=item.title,
            body=item.body,
            data=dict(item.data),
            priority=item.priority,
            group_key=item.group_key,
            dedupe_key=item.dedupe_key,
            created_at=_dt(now),
        )
        out.append((record, True))
    return out


def _list_notifications(
    conn: _Conn, user_id: str, cursor: str | None, after_seq: int | None, unread_only: bool, limit: int
) -> tuple[list[NotificationRecord], str | None]:
    ascending = after_seq is not None
    bound = after_seq
    if cursor is not None:
        if after_seq is not None:
            raise ValidationFailed("cursor", "give either cursor or after_seq")
        direction, bound = decode_cursor(cursor, (str, int))
        if direction not in ("a", "d"):
            raise ValidationFailed("cursor", "not a valid cursor")
        ascending = direction == "a"
    sql = f"SELECT {_NOTE_COLS} FROM notifications WHERE user_id = ?"
    args: list[Any] = [user_id]
    if bound is not None:
        sql += " AND seq > ?" if ascending else " AND seq < ?"
        args.append(bound)
    if unread_only:
        sql += " AND read_at IS NULL"
    sql += " ORDER BY seq" + ("" if ascending else " DESC") + " LIMIT ?"
    args.append(limit + 1)
    rows = conn.execute(sql, args).fetchall()
    page = [_notification(r) for r in rows[:limit]]
    nxt = encode_cursor("a" if ascending else "d", page[-1].seq) if len(rows) > limit else None
    return page, nxt


def _counter_add(conn: _Conn, user_id: str, delta: int) -> int:
    row = conn.execute(
        "UPDATE notification_counters SET unread_count = MAX(unread_count + ?, 0) WHERE user_id = ? "
        "RETURNING unread_count",
        (delta, user_id),
    ).fetchone()
    return 0 if row is None else int(row[0])


def _mark_notifications_read(conn: _Conn, user_id: str, ids: Sequence[str], now: int) -> int:
    cur = conn.execute(
        "UPDATE notifications SET read_at = ? WHERE user_id = ? AND read_at IS NULL "
        "AND id IN (SELECT value FROM json_each(?))",
        (now, user_id, _json_list(ids)),
    )
    return _counter_add(conn, user_id, -cur.rowcount)


def _mark_all_notifications_read(conn: _Conn, user_id: str, now: int) -> tuple[int, int]:
    row = conn.execute("SELECT last_seq FROM notification_counters WHERE user_id = ?", (user_id,)).fetchone()
    if row is None:
        return 0, 0
    conn.execute(
        "UPDATE notifications SET read_at = ? WHERE user_id = ? AND read_at IS NULL AND seq <= ?",
        (now, user_id, row[0]),
    )
    conn.execute("UPDATE notification_counters SET unread_count = 0 WHERE user_id = ?", (user_id,))
    return int(row[0]), 0


def _delete_notifications(conn: _Conn, user_id: str, ids: Sequence[str]) -> int:
    ids_json = _json_list(ids)
    unread = conn.execute(
        "SELECT COUNT(*) FROM notifications WHERE user_id = ? AND read_at IS NULL "
        "AND id IN (SELECT value FROM json_each(?))",
        (user_id, ids_json),
    ).fetchone()[0]
    conn.execute(
        "DELETE FROM notifications WHERE user_id = ? AND id IN (SELECT value FROM json_each(?))", (user_id, ids_json)
    )
    return _counter_add(conn, user_id, -unread)


def _notification_unread_count(conn: _Conn, user_id: str) -> int:
    row = conn.execute("SELECT unread_count FROM notification_counters WHERE user_id = ?", (user_id,)).fetchone()
    return 0 if row is None else int(row[0])


# -- preferences, devices, last seen ------------------------------------------------------------


def _get_preferences(conn: _Conn, user_id: str) -> list[NotificationPreference]:
    rows = conn.execute(
        "SELECT type, channel, enabled FROM notification_channel_preferences WHERE user_id = ? ORDER BY type, channel",
        (user_id,),
    )
    by_type: dict[str, dict[str, bool]] = {}
    for r in rows:
        by_type.setdefault(r[0], {})[r[1]] = bool(r[2])
    return [NotificationPreference(user_id, ntype, channels) for ntype, channels in by_type.items()]


def _get_preferences_for(conn: _Conn, user_ids: Sequence[str], ntype: str) -> dict[str, NotificationPreference]:
    found: dict[str, dict[str, bool]] = {}
    rows = conn.execute(
        "SELECT user_id, channel, enabled FROM notification_channel_preferences WHERE type = ? "
        "AND user_id IN (SELECT value FROM json_each(?))",
        (ntype, _json_list(user_ids)),
    )
    for r in rows:
        found.setdefault(r[0], {})[r[1]] = bool(r[2])
    return {uid: NotificationPreference(uid, ntype, found.get(uid, {})) for uid in user_ids}


def _set_preference(conn: _Conn, user_id: str, ntype: str, channels: dict[str, bool]) -> NotificationPreference:
    for channel, enabled in channels.items():
        conn.execute(
            "INSERT INTO notification_channel_preferences (user_id, type, channel, enabled) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id, type, channel) DO UPDATE SET enabled = excluded.enabled",
            (user_id, ntype, channel, int(enabled)),
        )
    rows = conn.execute(
        "SELECT channel, enabled FROM notification_channel_preferences WHERE user_id = ? AND type = ?",
        (user_id, ntype),
    )
    return NotificationPreference(user_id, ntype, {r[0]: bool(r[1]) for r in rows})


def _get_user_settings_many(conn: _Conn, user_ids: Sequence[str]) -> dict[str, UserSettings]:
    out = {uid: UserSettings(uid) for uid in user_ids}
    rows = conn.execute(
        "SELECT user_id, quiet_hours_start, quiet_hours_end, time_zone FROM user_settings "
        "WHERE user_id IN (SELECT value FROM json_each(?))",
        (_json_list(user_ids),),
    )
    for r in rows:
        out[r[0]] = UserSettings(r[0], r[1], r[2], r[3])
    return out


def _set_user_settings(conn: _Conn, settings: UserSettings) -> UserSettings:
    conn.execute(
        "INSERT INTO user_settings (user_id, quiet_hours_start, quiet_hours_end, time_zone) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET quiet_hours_start = excluded.quiet_hours_start, "
        "quiet_hours_end = excluded.quiet_hours_end, time_zone = excluded.time_zone",
        (settings.user_id, settings.quiet_hours_start, settings.quiet_hours_end, settings.time_zone),
    )
    return settings


def _devices(conn: _Conn, rows: Sequence[Sequence[Any]]) -> list[DeviceRecord]:
    if not rows:
        return []
    topics: dict[str, list[str]] = {}
    for token, topic in conn.execute(
        "SELECT token, topic FROM device_topics WHERE token IN (SELECT value FROM json_each(?)) ORDER BY topic",
        (_json_list(r[0] for r in rows),),
    ):
        topics.setdefault(token, []).append(topic)
    return [
        DeviceRecord(
            token=r[0],
            user_id=r[1],
            platform=r[2],
            app_version=r[3],
            active=bool(r[4]),
            last_seen_at=_dt(r[5]),
            topics=tuple(topics.get(r[0], ())),
            created_at=_dt(r[6]),
        )
        for r in rows
    ]


def _get_device(conn: _Conn, token: str) -> DeviceRecord | None:
    rows = conn.execute(f"SELECT {_DEVICE_COLS} FROM devices WHERE token = ?", (token,)).fetchall()
    found = _devices(conn, rows)
    return found[0] if found else None


def _register_device(
    conn: _Conn, user_id: str, token: str, platform: str, app_version: str, now: int
) -> DeviceRecord:
    row = conn.execute("SELECT user_id FROM devices WHERE token = ?", (token,)).fetchone()
    if row is not None and row[0] != user_id:
        conn.execute("DELETE FROM devices WHERE token = ?", (token,))
        conn.execute("DELETE FROM device_topics WHERE token = ?", (token,))
        log.info("push token moved from user %s to user %s", row[0], user_id)
    conn.execute(
        f"INSERT INTO devices ({_DEVICE_COLS}) VALUES (?, ?, ?, ?, 1, ?, ?) "
        "ON CONFLICT (token) DO UPDATE SET platform = excluded.platform, app_version = excluded.app_version, "
        "active = 1, last_seen_at = excluded.last_seen_at",
        (token, user_id, platform, app_version, now, now),
    )
    device = _get_device(conn, token)
    assert device is not None
    return device


def _unregister_device(conn: _Conn, token: str, user_id: str | None) -> bool:
    if user_id is None:
        cur = conn.execute("DELETE FROM devices WHERE token = ?", (token,))
    else:
        cur = conn.execute("DELETE FROM devices WHERE token = ? AND user_id = ?", (token, user_id))
    if cur.rowcount:
        conn.execute("DELETE FROM device_topics WHERE token = ?", (token,))
    return cur.rowcount > 0


def _change_topics(conn: _Conn, token: str, topics: Sequence[str], add: bool) -> DeviceRecord:
    if conn.execute("SELECT 1 FROM devices WHERE token = ?", (token,)).fetchone() is None:
        raise NotFound("no such device token")
    if add:
        conn.executemany(
            "INSERT OR IGNORE INTO device_topics (token, topic) VALUES (?, ?)", [(token, t) for t in topics]
        )
    else:
        conn.executemany("DELETE FROM device_topics WHERE token = ? AND topic = ?", [(token, t) for t in topics])
    device = _get_device(conn, token)
    assert device is not None
    return device


# -- jobs ---------------------------------------------------------------------------------------


def _insert_job(
    conn: _Conn,
    *,
    queue: str,
    kind: str,
    payload: dict[str, Any],
    now: int,
    run_at: int,
    priority: int,
    max_attempts: int,
    dedupe_key: str | None,
) -> tuple[JobRecord, bool]:
    if dedupe_key is not None:
        row = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE dedupe_key = ?", (dedupe_key,)).fetchone()
        if row is not None:
            return _job(row), False
    jid = new_id("j")
    conn.execute(
        "INSERT INTO jobs (id, queue, kind, payload, priority, status, attempts, max_attempts, run_at, dedupe_key, "
        "created_at) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?)",
        (jid, queue, kind, dumps(payload), priority, max_attempts, run_at, dedupe_key, now),
    )
    job = JobRecord(
        id=jid,
        queue=queue,
        kind=kind,
        payload=dict(payload),
        priority=priority,
        status="queued",
        attempts=0,
        max_attempts=max_attempts,
        run_at=_dt(run_at),
        last_error=None,
        dedupe_key=dedupe_key,
        lease_owner=None,
        lease_expires_at=None,
        created_at=_dt(now),
        finished_at=None,
    )
    return job, True


def _claim(conn: _Conn, queue: str, limit: int, owner: str, expires: int, now: int) -> list[JobRecord]:
    candidates = conn.execute(
        "SELECT priority, run_at, n FROM jobs WHERE status = 'queued' AND queue = ? AND run_at <= ? "
        "ORDER BY priority DESC, run_at, n LIMIT ?",
        (queue, now, limit),
    ).fetchall()
    candidates += conn.execute(
        "SELECT priority, run_at, n FROM jobs WHERE status = 'running' AND queue = ? AND lease_expires_at <= ?",
        (queue, now),
    ).fetchall()
    if not candidates:
        return []
    candidates.sort(key=lambda r: (-r[0], r[1], r[2]))
    chosen = [r[2] for r in candidates[:limit]]
    rows = conn.execute(
        f"UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1 "
        f"WHERE n IN (SELECT value FROM json_each(?)) RETURNING priority, run_at, n, {_JOB_COLS}",
        (owner, expires, dumps(chosen)),
    ).fetchall()
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return [_job(r[3:]) for r in rows]


def _renew(conn: _Conn, job_ids: Sequence[str], owner: str, expires: int) -> set[str]:
    rows = conn.execute(
        "UPDATE jobs SET lease_expires_at = ? WHERE status = 'running' AND lease_owner = ? "
        "AND id IN (SELECT value FROM json_each(?)) RETURNING id",
        (expires, owner, _json_list(job_ids)),
    ).fetchall()
    return {r[0] for r in rows}


def _complete(conn: _Conn, job_id: str, owner: str, now: int) -> bool:
    cur = conn.execute(
        "UPDATE jobs SET status = 'succeeded', finished_at = ?, lease_expires_at = NULL "
        "WHERE id = ? AND status = 'running' AND lease_owner = ?",
        (now, job_id, owner),
    )
    return cur.rowcount == 1


def _fail(
    conn: _Conn, job_id: str, owner: str, error: str, now: int, retry_at: int | None, final_status: str
) -> JobRecord | None:
    if retry_at is not None:
        row = conn.execute(
            f"UPDATE jobs SET status = 'queued', run_at = ?, last_error = ?, lease_owner = NULL, "
            f"lease_expires_at = NULL WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING {_JOB_COLS}",
            (retry_at, error, job_id, owner),
        ).fetchone()
    else:
        row = conn.execute(
            f"UPDATE jobs SET status = ?, finished_at = ?, last_error = ?, lease_expires_at = NULL "
            f"WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING {_JOB_COLS}",
            (final_status, now, error, job_id, owner),
        ).fetchone()
    return None if row is None else _job(row)


def _release(conn: _Conn, owner: str, job_ids: Sequence[str], now: int) -> None:
    conn.execute(
        "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), run_at = ?, lease_owner = NULL, "
        "lease_expires_at = NULL WHERE status = 'running' AND lease_owner = ? "
        "AND id IN (SELECT value FROM json_each(?))",
        (now, owner, _json_list(job_ids)),
    )


def _get_job(conn: _Conn, job_id: str) -> JobRecord | None:
    row = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def _list_jobs(
    conn: _Conn, status: str | None, queue: str | None, kind: str | None, cursor: str | None, limit: int
) -> tuple[list[JobRecord], str | None]:
    sql = f"SELECT n, {_JOB_COLS} FROM jobs WHERE 1 = 1"
    args: list[Any] = []
    for column, value in (("status", status), ("queue", queue), ("kind", kind)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    if cursor is not None:
        (n,) = decode_cursor(cursor, (int,))
        sql += " AND n < ?"
        args.append(n)
    sql += " ORDER BY n DESC LIMIT ?"
    args.append(limit + 1)
    rows = conn.execute(sql, args).fetchall()
    page = rows[:limit]
    nxt = encode_cursor(page[-1][0]) if len(rows) > limit else None
    return [_job(r[1:]) for r in page], nxt


def _retry(conn: _Conn, job_id: str, now: int) -> JobRecord:
    job = _get_job(conn, job_id)
    if job is None:
        raise NotFound("no such job")
    if job.status not in ("dead", "failed", "cancelled"):
        raise Conflict(f"only a dead, failed or cancelled job can be retried; this one is {job.status}")
    row = conn.execute(
        f"UPDATE jobs SET status = 'queued', attempts = 0, run_at = ?, finished_at = NULL, lease_owner = NULL, "
        f"lease_expires_at = NULL WHERE id = ? RETURNING {_JOB_COLS}",
        (now, job_id),
    ).fetchone()
    return _job(row)


def _cancel(conn: _Conn, job_id: str, now: int) -> JobRecord:
    job = _get_job(conn, job_id)
    if job is None:
        raise NotFound("no such job")
    if job.status != "queued":
        raise Conflict(f"only a queued job can be cancelled; this one is {job.status}")
    row = conn.execute(
        f"UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? RETURNING {_JOB_COLS}", (now, job_id)
    ).fetchone()
    return _job(row)


def _cancel_by_prefix(conn: _Conn, prefix: str, now: int) -> int:
    upper = _prefix_upper(prefix)
    if upper is None:
        cur = conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE status = 'queued' AND dedupe_key >= ?",
            (now, prefix),
        )
    else:
        cur = conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE status = 'queued' "
            "AND dedupe_key >= ? AND dedupe_key < ?",
            (now, prefix, upper),
        )
    return cur.rowcount


def _next_job_time(conn: _Conn, queues: Sequence[str]) -> datetime | None:
    qs = _json_list(queues)
    row = conn.execute(
        "SELECT MIN(t) FROM ("
        "SELECT MIN(run_at) AS t FROM jobs WHERE status = 'queued' AND queue IN (SELECT value FROM json_each(?)) "
        "UNION ALL SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running' "
        "AND queue IN (SELECT value FROM json_each(?)))",
        (qs, qs),
    ).fetchone()
    return _odt(row[0])


def _cron_claim(conn: _Conn, name: str, tick: int) -> bool:
    cur = conn.execute(
        "INSERT INTO cron_ticks (name, last_tick) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
        "SET last_tick = excluded.last_tick WHERE excluded.last_tick > cron_ticks.last_tick",
        (name, tick),
    )
    return cur.rowcount == 1


def _rowcount(sql: str) -> Callable[..., int]:
    def run(conn: _Conn, before: int) -> int:
        return conn.execute(sql, (before,)).rowcount

    return run


_delete_read_notifications = _rowcount(
    "DELETE FROM notifications WHERE read_at IS NOT NULL AND read_at < ?"
)
_delete_finished_jobs = _rowcount(
    "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? AND status IN "
    + "(" + ", ".join(f"'{s}'" for s in FINISHED_JOB_STATUSES) + ")"
)
_purge_deleted_messages = _rowcount(
    "UPDATE messages SET body = '', media_url = NULL, purged = 1 WHERE deleted = 1 AND purged = 0 AND deleted_at < ?"
)
_deactivate_stale_devices = _rowcount("UPDATE devices SET active = 0 WHERE active = 1 AND last_seen_at < ?")


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


def _split_statements(sql: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise RuntimeError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:80]!r}")
    return out


def _migrate(conn: _Conn, migrations: list[Migration], apply: bool, now: int) -> list[str]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        current = 0
        if exists:
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        pending = pending_migrations(migrations, current, apply=apply)
        if pending and not exists:
            conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at INTEGER NOT NULL)"
            )
        for m in pending:
            for statement in _split_statements(m.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)", (m.version, m.name, now)
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [m.name for m in pending]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Write:
    fn: Callable[[_Conn], Any]
    wakes_jobs: bool
    done: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[Any] | None = None


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
        err = Unavailable(f"the SQLite store failed: {exc}")
        err.__cause__ = exc
        return err
    return exc


class SQLiteStore:
    """The embedded store (see the module docstring for its design).

    Args:
        path: the database file; its folder is created if missing.
        config: ``store`` settings (batch size, readers, apply_migrations).
        clock: wall time, only for the ``applied_at`` of migrations.
    """

    def __init__(self, path: str | Path, *, config: StoreConfig | None = None, clock: WallClock) -> None:
        self.path = Path(path)
        self.config = config or StoreConfig()
        self.clock = clock
        self._write_send: trio.MemorySendChannel[_Write] | None = None
        self._readers: list[_Conn] = []
        self._reader_slots: trio.CapacityLimiter | None = None
        self._jobs_event = trio.Event()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    def _connect(self) -> _Conn:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S, cached_statements=256
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    async def migrate(self) -> list[str]:
        """Apply pending migrations now (the ``realtimed migrate`` command); returns their names."""
        return await trio.to_thread.run_sync(self._migrate_sync, True)

    def _migrate_sync(self, apply: bool) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            return self._migrate_on(conn, apply)
        finally:
            conn.close()

    def _migrate_on(self, conn: _Conn, apply: bool) -> list[str]:
        applied = _migrate(conn, load_migrations("sqlite"), apply, _us(self.clock.now()))
        for name in applied:
            log.info("store: applied migration %s to %s", name, self.path)
        return applied

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (see the module docstring).

        Raises:
            SchemaVersionError: the file's schema is newer, or migrations are
                pending with ``store.apply_migrations`` off.
        """
        conns: list[_Conn] = []

        def open_all() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conns.append(self._connect())
            self._migrate_on(conns[0], self.config.apply_migrations)
            for _ in range(self.config.sqlite_readers):
                conns.append(self._connect())

        try:
            try:
                await trio.to_thread.run_sync(open_all)
            except sqlite3.Error as exc:
                raise Unavailable(f"cannot open the SQLite store {self.path}: {exc}") from exc
            writer, readers = conns[0], conns[1:]
            send, recv = trio.open_memory_channel[_Write](self.config.sqlite_batch_max)
            self._readers = list(readers)
            self._reader_slots = trio.CapacityLimiter(len(readers))
            self._write_send = send
            self._closed = False
            log.info("store: SQLite %s ready (%d readers)", self.path, len(readers))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, writer, recv)
                task_status.started()
        finally:
            self._closed = True
            self._write_send = None
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                # Reads still running on a worker thread finish before their connection closes.
                while len(self._readers) < len(conns) - 1 and self._reader_slots is not None:
                    await trio.sleep(0.01)
                await trio.to_thread.run_sync(self._close_all, conns)
            log.info("store: SQLite %s closed", self.path)

    @staticmethod
    def _close_all(conns: list[_Conn]) -> None:
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing best effort
                log.warning("store: closing a SQLite connection failed: %s", exc)

    async def _writer(self, conn: _Conn, recv: trio.MemoryReceiveChannel[_Write]) -> None:
        batch: list[_Write] = []
        limit = self.config.sqlite_batch_max
        try:
            answered = 1
            while True:
                batch = [await recv.receive()]
                # A commit costs one fsync whatever its size, so fewer, larger groups carry more
                # writes. The callers the last group answered usually write again at once: wait
                # (briefly) for as many writes as that group had before committing.
                target = min(limit, answered)
                deadline = trio.current_time() + _GATHER_WAIT_S
                while len(batch) < limit:
                    try:
                        batch.append(recv.receive_nowait())
                        continue
                    except trio.WouldBlock:
                        pass
                    if len(batch) >= target:
                        break
                    with trio.move_on_at(deadline):
                        batch.append(await recv.receive())
                        continue
                    break
                await trio.to_thread.run_sync(self._commit_batch, conn, batch)
                answered = len(batch)
                wake = False
                for req in batch:
                    wake = wake or (req.wakes_jobs and isinstance(req.result, outcome.Value))
                    req.done.set()
                batch = []
                if wake:
                    self._wake_jobs()
        finally:
            closed = Unavailable("the store is shutting down")
            recv.close()
            leftovers = list(batch)
            while True:
                try:
                    leftovers.append(recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            for req in leftovers:
                if req.result is None:
                    req.result = outcome.Error(closed)
                req.done.set()

    @staticmethod
    def _commit_batch(conn: _Conn, batch: list[_Write]) -> None:
        """Run a group of writes in one transaction (worker thread).

        The group first runs as is; if any write raises, the transaction is
        rolled back and the group runs again with each write in its own
        SAVEPOINT, so that the failing one is undone alone. (Savepoints cost
        about as much as the rest of an append; writes rarely fail.)
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                values = [req.fn(conn) for req in batch]
            except Exception:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                for req in batch:
                    conn.execute("SAVEPOINT w")
                    try:
                        value = req.fn(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        req.result = outcome.Error(_translate(exc))
                    else:
                        conn.execute("RELEASE w")
                        req.result = outcome.Value(value)
            else:
                for req, value in zip(batch, values, strict=True):
                    req.result = outcome.Value(value)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("store: a SQLite write group of %d failed: %s", len(batch), exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = Unavailable(f"the SQLite store failed: {exc}")
            err.__cause__ = exc
            for req in batch:
                if req.result is None or isinstance(req.result, outcome.Value):
                    req.result = outcome.Error(err)

    async def _write(self, fn: Callable[[_Conn], _T], *, wakes_jobs: bool = False) -> _T:
        send = self._write_send
        if send is None:
            raise Unavailable("the store is not running")
        req = _Write(fn, wakes_jobs)
        try:
            await send.send(req)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the store is shutting down") from None
        await req.done.wait()
        assert req.result is not None
        result: _T = req.result.unwrap()
        return result

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        slots = self._reader_slots
        if slots is None or self._closed:
            raise Unavailable("the store is not running")
        async with slots:
            if self._closed:
                raise Unavailable("the store is shutting down")
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(self._read_sync, conn, fn, args)
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            finally:
                self._readers.append(conn)

    @staticmethod
    def _read_sync(conn: _Conn, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        # One read transaction: the queries of one call see one snapshot.
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    def _wake_jobs(self) -> None:
        self._jobs_event.set()
        self._jobs_event = trio.Event()

    # -- conversations ---------------------------------------------------------------------------

    async def open_direct(self, *, user_id: str, other_id: str, now: datetime) -> tuple[ConversationRecord, bool]:
        return await self._write(functools.partial(_open_direct, user_id=user_id, other_id=other_id, now=_us(now)))

    async def create_group(
        self, *, member_ids: Sequence[str], now: datetime, title: str | None = None, owner_id: str | None = None
    ) -> ConversationRecord:
        return await self._write(
            functools.partial(_create_group, member_ids=list(member_ids), now=_us(now), title=title, owner_id=owner_id)
        )

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        return await self._read(_load_conversation, conversation_id)

    async def get_member(self, conversation_id: str, user_id: str) -> MemberRecord | None:
        return await self._read(_get_member, conversation_id, user_id)

    async def add_members(
        self, *, conversation_id: str, user_ids: Sequence[str], now: datetime, role: str = ROLE_MEMBER
    ) -> ConversationRecord:
        return await self._write(
            functools.partial(_add_members, cid=conversation_id, user_ids=list(user_ids), now=_us(now), role=role)
        )

    async def leave_conversation(self, *, conversation_id: str, user_id: str, now: datetime) -> ConversationRecord:
        return await self._write(functools.partial(_leave, cid=conversation_id, user_id=user_id, now=_us(now)))

    async def set_title(self, *, conversation_id: str, title: str | None, now: datetime) -> ConversationRecord:
        return await self._write(functools.partial(_set_title, cid=conversation_id, title=title, now=_us(now)))

    async def set_muted(self, *, conversation_id: str, user_id: str, muted: bool) -> MemberRecord:
        return await self._write(functools.partial(_set_muted, cid=conversation_id, user_id=user_id, muted=muted))

    async def list_conversations(
        self, *, user_id: str, cursor: str | None = None, limit: int = 20
    ) -> tuple[list[ConversationRecord], str | None]:
        return await self._read(_list_conversations, user_id, cursor, clamp_limit(limit))

    async def unread_total(self, user_id: str, *, include_muted: bool = False) -> int:
        return await self._read(_unread_total, user_id, include_muted)

    async def set_contacts(self, *, user_id: str, contact_ids: Sequence[str]) -> None:
        await self._write(functools.partial(_set_contacts, user_id=user_id, contact_ids=list(contact_ids)))

    async def is_contact(self, user_id: str, other_id: str) -> bool:
        return await self._read(_is_contact, user_id, other_id)

    async def contact_ids(self, user_id: str) -> set[str]:
        return await self._read(_contact_ids, user_id)

    async def block_user(self, *, user_id: str, blocked_id: str, now: datetime) -> bool:
        def run(conn: _Conn) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, ?)",
                (user_id, blocked_id, _us(now)),
            )
            return cur.rowcount == 1

        return await self._write(run)

    async def unblock_user(self, *, user_id: str, blocked_id: str) -> bool:
        def run(conn: _Conn) -> bool:
            cur = conn.execute("DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?", (user_id, blocked_id))
            return cur.rowcount == 1

        return await self._write(run)

    async def is_blocked(self, *, user_id: str, by: str) -> bool:
        def run(conn: _Conn) -> bool:
            row = conn.execute("SELECT 1 FROM blocks WHERE user_id = ? AND blocked_id = ?", (by, user_id)).fetchone()
            return row is not None

        return await self._read(run)

    async def blocked_ids(self, user_id: str) -> set[str]:
        def run(conn: _Conn) -> set[str]:
            return {r[0] for r in conn.execute("SELECT blocked_id FROM blocks WHERE user_id = ?", (user_id,))}

        return await self._read(run)

    # -- bans ------------------------------------------------------------------------------------

    async def ban_user(self, *, user_id: str, until: datetime | None, now: datetime) -> BanRecord:
        def run(conn: _Conn) -> BanRecord:
            conn.execute("DELETE FROM bans WHERE banned_until <= ?", (_us(now),))
            conn.execute(
                "INSERT INTO bans (user_id, banned_until, created_at) VALUES (?, ?, ?) ON CONFLICT (user_id) "
                "DO UPDATE SET banned_until = excluded.banned_until, created_at = excluded.created_at",
                (user_id, None if until is None else _us(until), _us(now)),
            )
            return BanRecord(user_id=user_id, until=until, created_at=now)

        return await self._write(run)

    async def active_ban(self, *, user_id: str, now: datetime) -> BanRecord | None:
        def run(conn: _Conn) -> BanRecord | None:
            row = conn.execute(
                "SELECT banned_until, created_at FROM bans WHERE user_id = ? "
                "AND (banned_until IS NULL OR banned_until > ?)",
                (user_id, _us(now)),
            ).fetchone()
            return None if row is None else BanRecord(user_id=user_id, until=_odt(row[0]), created_at=_dt(row[1]))

        return await self._read(run)

    async def unban_user(self, *, user_id: str, now: datetime) -> bool:
        def run(conn: _Conn) -> bool:
            rows = conn.execute("DELETE FROM bans WHERE user_id = ? RETURNING banned_until", (user_id,)).fetchall()
            return any(r[0] is None or r[0] > _us(now) for r in rows)

        return await self._write(run)

    # -- messages --------------------------------------------------------------------------------

    async def append_message(
        self,
        *,
        conversation_id: str,
        sender_id: str,
        client_id: str,
        body: str,
        now: datetime,
        type: str = "text",
        media_url: str | None = None,
        reply_to: str | None = None,
        require_member: bool = True,
        jobs: Sequence[JobSpec] = (),
    ) -> tuple[MessageRecord, bool]:
        check_text("body", body)
        check_text("client_id", client_id)
        fn = functools.partial(
            _append,
            cid=conversation_id,
            sender_id=sender_id,
            client_id=client_id,
            body=body,
            now=_us(now),
            mtype=type,
            media_url=media_url,
            reply_to=reply_to,
            require_member=require_member,
            jobs=list(jobs),
        )
        return await self._write(fn, wakes_jobs=bool(jobs))

    async def get_message(self, message_id: str) -> MessageRecord | None:
        return await self._read(_load_message, message_id)

    async def edit_message(
        self, *, message_id: str, body: str, now: datetime, sender_id: str | None = None
    ) -> MessageRecord:
        check_text("body", body)
        return await self._write(
            functools.partial(_edit, message_id=message_id, body=body, now=_us(now), sender_id=sender_id)
        )

    async def delete_message(
        self, *, message_id: str, now: datetime, sender_id: str | None = None
    ) -> tuple[MessageRecord, bool]:
        return await self._write(functools.partial(_delete, message_id=message_id, now=_us(now), sender_id=sender_id))

    async def message_history(
        self,
        *,
        conversation_id: str,
        before_seq: int | None = None,
        after_seq: int | None = None,
        changed_since: int | None = None,
        limit: int = 50,
    ) -> MessagePage:
        check_history_bounds(before_seq, after_seq, changed_since)
        return await self._read(_history, conversation_id, before_seq, after_seq, changed_since, clamp_limit(limit))

    async def mark_read(self, *, conversation_id: str, user_id: str, seq: int, now: datetime) -> ReadState:
        return await self._write(
            functools.partial(_mark_read, cid=conversation_id, user_id=user_id, seq=seq, now=_us(now))
        )

    # -- notifications ---------------------------------------------------------------------------

    async def insert_notifications(
        self, *, items: Sequence[NewNotification], now: datetime
    ) -> list[tuple[NotificationRecord, bool]]:
        if not items:
            return []
        return await self._write(functools.partial(_insert_notifications, items=list(items), now=_us(now)))

    async def list_notifications(
        self,
        *,
        user_id: str,
        cursor: str | None = None,
        after_seq: int | None = None,
        unread_only: bool = False,
        limit: int = 20,
    ) -> tuple[list[NotificationRecord], str | None]:
        return await self._read(_list_notifications, user_id, cursor, after_seq, unread_only, clamp_limit(limit))

    async def mark_notifications_read(self, *, user_id: str, ids: Sequence[str], now: datetime) -> int:
        return await self._write(
            functools.partial(_mark_notifications_read, user_id=user_id, ids=list(ids), now=_us(now))
        )

    async def mark_all_notifications_read(self, *, user_id: str, now: datetime) -> tuple[int, int]:
        return await self._write(functools.partial(_mark_all_notifications_read, user_id=user_id, now=_us(now)))

    async def delete_notifications(self, *, user_id: str, ids: Sequence[str]) -> int:
        return await self._write(functools.partial(_delete_notifications, user_id=user_id, ids=list(ids)))

    async def notification_unread_count(self, user_id: str) -> int:
        return await self._read(_notification_unread_count, user_id)

    # -- preferences, devices, last seen ---------------------------------------------------------

    async def get_preferences(self, user_id: str) -> list[NotificationPreference]:
        return await self._read(_get_preferences, user_id)

    async def get_preferences_for(self, *, user_ids: Sequence[str], type: str) -> dict[str, NotificationPreference]:
        return await self._read(_get_preferences_for, list(user_ids), type)

    async def set_preference(
        self,
        *,
        user_id: str,
        type: str,
        channels: Mapping[str, bool] | None = None,
        in_app: bool | None = None,
        push: bool | None = None,
    ) -> NotificationPreference:
        settings = preference_channels(channels, in_app, push)
        return await self._write(functools.partial(_set_preference, user_id=user_id, ntype=type, channels=settings))

    async def get_user_settings(self, user_id: str) -> UserSettings:
        return (await self._read(_get_user_settings_many, [user_id]))[user_id]

    async def get_user_settings_many(self, user_ids: Sequence[str]) -> dict[str, UserSettings]:
        return await self._read(_get_user_settings_many, list(user_ids))

    async def set_user_settings(
        self, *, user_id: str, quiet_hours_start: str | None, quiet_hours_end: str | None, time_zone: str
    ) -> UserSettings:
        check_settings(quiet_hours_start, quiet_hours_end, time_zone)
        settings = UserSettings(user_id, quiet_hours_start, quiet_hours_end, time_zone)
        return await self._write(functools.partial(_set_user_settings, settings=settings))

    async def register_device(
        self, *, user_id: str, token: str, platform: str, now: datetime, app_version: str = ""
    ) -> DeviceRecord:
        check_platform(platform)
        return await self._write(
            functools.partial(
                _register_device, user_id=user_id, token=token, platform=platform, app_version=app_version, now=_us(now)
            )
        )

    async def unregister_device(self, *, token: str, user_id: str | None = None) -> bool:
        return await self._write(functools.partial(_unregister_device, token=token, user_id=user_id))

    async def get_device(self, token: str) -> DeviceRecord | None:
        return await self._read(_get_device, token)

    async def list_devices(self, user_id: str, *, active_only: bool = True) -> list[DeviceRecord]:
        def run(conn: _Conn) -> list[DeviceRecord]:
            sql = f"SELECT {_DEVICE_COLS} FROM devices WHERE user_id = ?"
            if active_only:
                sql += " AND active = 1"
            return _devices(conn, conn.execute(sql + " ORDER BY created_at, token", (user_id,)).fetchall())

        return await self._read(run)

    async def deactivate_device(self, *, token: str) -> bool:
        def run(conn: _Conn) -> bool:
            return conn.execute("UPDATE devices SET active = 0 WHERE token = ? AND active = 1", (token,)).rowcount == 1

        return await self._write(run)

    async def touch_device(self, *, token: str, now: datetime) -> bool:
        def run(conn: _Conn) -> bool:
            cur = conn.execute(
                "UPDATE devices SET last_seen_at = MAX(last_seen_at, ?) WHERE token = ?", (_us(now), token)
            )
            return cur.rowcount == 1

        return await self._write(run)

    async def add_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        return await self._write(functools.partial(_change_topics, token=token, topics=list(topics), add=True))

    async def remove_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        return await self._write(functools.partial(_change_topics, token=token, topics=list(topics), add=False))

    async def topic_devices(self, topic: str) -> list[DeviceRecord]:
        def run(conn: _Conn) -> list[DeviceRecord]:
            rows = conn.execute(
                "SELECT d.token, d.user_id, d.platform, d.app_version, d.active, d.last_seen_at, d.created_at "
                "FROM device_topics t JOIN devices d ON d.token = t.token WHERE t.topic = ? AND d.active = 1 "
                "ORDER BY d.token",
                (topic,),
            ).fetchall()
            return _devices(conn, rows)

        return await self._read(run)

    async def set_last_seen(self, *, user_id: str, at: datetime) -> None:
        def run(conn: _Conn) -> None:
            conn.execute(
                "INSERT INTO last_seen (user_id, last_seen_at) VALUES (?, ?) ON CONFLICT (user_id) DO UPDATE "
                "SET last_seen_at = MAX(last_seen_at, excluded.last_seen_at)",
                (user_id, _us(at)),
            )

        await self._write(run)

    async def get_last_seen(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        def run(conn: _Conn) -> dict[str, datetime]:
            rows = conn.execute(
                "SELECT user_id, last_seen_at FROM last_seen WHERE user_id IN (SELECT value FROM json_each(?))",
                (_json_list(user_ids),),
            )
            return {r[0]: _dt(r[1]) for r in rows}

        return await self._read(run)

    # -- jobs ------------------------------------------------------------------------------------

    async def enqueue_job(
        self,
        *,
        queue: str,
        kind: str,
        payload: dict[str, Any],
        now: datetime,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        dedupe_key: str | None = None,
    ) -> tuple[JobRecord, bool]:
        fn = functools.partial(
            _insert_job,
            queue=queue,
            kind=kind,
            payload=dict(payload),
            now=_us(now),
            run_at=_us(run_at if run_at is not None else now),
            priority=priority,
            max_attempts=max_attempts,
            dedupe_key=dedupe_key,
        )
        return await self._write(fn, wakes_jobs=True)

    async def claim_jobs(
        self, *, queue: str, limit: int, owner: str, lease_s: float, now: datetime
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        expires = _us(now + timedelta(seconds=lease_s))
        return await self._write(
            functools.partial(_claim, queue=queue, limit=limit, owner=owner, expires=expires, now=_us(now))
        )

    async def renew_leases(
        self, *, job_ids: Sequence[str], owner: str, lease_s: float, now: datetime
    ) -> set[str]:
        if not job_ids:
            return set()
        expires = _us(now + timedelta(seconds=lease_s))
        return await self._write(functools.partial(_renew, job_ids=list(job_ids), owner=owner, expires=expires))

    async def complete_job(self, *, job_id: str, owner: str, now: datetime) -> bool:
        return await self._write(functools.partial(_complete, job_id=job_id, owner=owner, now=_us(now)))

    async def fail_job(
        self,
        *,
        job_id: str,
        owner: str,
        error: str,
        now: datetime,
        retry_at: datetime | None,
        final_status: str = "dead",
    ) -> JobRecord | None:
        check_final_status(final_status)
        fn = functools.partial(
            _fail,
            job_id=job_id,
            owner=owner,
            error=error,
            now=_us(now),
            retry_at=_us(retry_at) if retry_at is not None else None,
            final_status=final_status,
        )
        return await self._write(fn, wakes_jobs=retry_at is not None)

    async def release_jobs(self, *, owner: str, job_ids: Sequence[str], now: datetime) -> None:
        if not job_ids:
            return
        await self._write(
            functools.partial(_release, owner=owner, job_ids=list(job_ids), now=_us(now)), wakes_jobs=True
        )

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._read(_get_job, job_id)

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[JobRecord], str | None]:
        return await self._read(_list_jobs, status, queue, kind, cursor, clamp_limit(limit))

    async def retry_job(self, *, job_id: str, now: datetime) -> JobRecord:
        return await self._write(functools.partial(_retry, job_id=job_id, now=_us(now)), wakes_jobs=True)

    async def cancel_job(self, *, job_id: str, now: datetime) -> JobRecord:
        return await self._write(functools.partial(_cancel, job_id=job_id, now=_us(now)))

    async def cancel_jobs_by_dedupe_prefix(self, *, prefix: str, now: datetime) -> int:
        return await self._write(functools.partial(_cancel_by_prefix, prefix=prefix, now=_us(now)))

    async def next_job_time(self, *, queues: Sequence[str]) -> datetime | None:
        return await self._read(_next_job_time, list(queues))

    async def wait_for_jobs(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            await self._jobs_event.wait()

    async def job_stats(self) -> list[tuple[str, str, int]]:
        def run(conn: _Conn) -> list[tuple[str, str, int]]:
            rows = conn.execute("SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status ORDER BY kind, status")
            return [(r[0], r[1], int(r[2])) for r in rows]

        return await self._read(run)

    async def oldest_queued_job_age_s(self, now: datetime) -> float | None:
        def run(conn: _Conn) -> int | None:
            row = conn.execute(
                "SELECT MIN(run_at) FROM jobs WHERE status = 'queued' AND run_at <= ?", (_us(now),)
            ).fetchone()
            return None if row[0] is None else int(row[0])

        oldest = await self._read(run)
        return None if oldest is None else (utc(now) - _dt(oldest)).total_seconds()

    async def cron_claim_tick(self, *, name: str, tick: datetime) -> bool:
        return await self._write(functools.partial(_cron_claim, name=name, tick=_us(tick)))

    async def cron_last_tick(self, *, name: str) -> datetime | None:
        def run(conn: _Conn) -> int | None:
            row = conn.execute("SELECT last_tick FROM cron_ticks WHERE name = ?", (name,)).fetchone()
            return None if row is None else int(row[0])

        return _odt(await self._read(run))

    # -- retention -------------------------------------------------------------------------------

    async def delete_read_notifications(self, *, before: datetime) -> int:
        return await self._write(functools.partial(_delete_read_notifications, before=_us(before)))

    async def delete_finished_jobs(self, *, before: datetime) -> int:
        return await self._write(functools.partial(_delete_finished_jobs, before=_us(before)))

    async def purge_deleted_messages(self, *, before: datetime) -> int:
        return await self._write(functools.partial(_purge_deleted_messages, before=_us(before)))

    async def deactivate_stale_devices(self, *, before: datetime) -> int:
        return await self._write(functools.partial(_deactivate_stale_devices, before=_us(before)))
