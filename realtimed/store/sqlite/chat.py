"""SQLite: conversations, members, messages, read cursors (``ChatStore``).

Operations are plain functions of a connection, run on a worker thread: reads
in a read transaction of the pool, writes in the writer's group commit.
"""

from __future__ import annotations

import functools
from datetime import datetime

import attrs

from realtimed.store import chat
from realtimed.store.jobs import NewJob
from realtimed.store.sqlite.engine import CODEC, Conn, SQLiteEngine, us
from realtimed.store.sqlite.jobs import insert_job
from realtimed.store.values import new_id

__all__ = ["SQLiteChat"]


def _load_message(conn: Conn, message_id: str) -> chat.MessageRecord | None:
    row = conn.execute(f"SELECT {chat.MSG_COLS} FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else chat.message_from(row, CODEC)


def _load_conversation(conn: Conn, cid: str) -> chat.ConversationRecord | None:
    row = conn.execute(
        f"SELECT {chat.CONVERSATION_COLS}, last_message_id FROM conversations WHERE id = ?", (cid,)
    ).fetchone()
    if row is None:
        return None
    members = [
        chat.member_from(r, CODEC)
        for r in conn.execute(
            f"SELECT {chat.MEMBER_COLS} FROM members WHERE conversation_id = ? AND left_at IS NULL "
            "ORDER BY joined_at, user_id",
            (cid,),
        )
    ]
    last = _load_message(conn, row["last_message_id"]) if row["last_message_id"] is not None else None
    return chat.conversation_from(row, CODEC, members, last)


def _must_conversation(conn: Conn, cid: str) -> chat.ConversationRecord:
    conv = _load_conversation(conn, cid)
    if conv is None:
        raise chat.no_conversation()
    return conv


def _conv_head(conn: Conn, cid: str) -> tuple[str, int, int]:
    """(type, last_seq, version) of a conversation, or NotFound."""
    row = conn.execute("SELECT type, last_seq, version FROM conversations WHERE id = ?", (cid,)).fetchone()
    if row is None:
        raise chat.no_conversation()
    return row[0], row[1], row[2]


def _open_direct(
    conn: Conn, key: str, member_ids: list[str], now: int
) -> tuple[chat.ConversationRecord, bool]:
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
    conn.executemany(
        "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
        [(cid, uid, chat.ROLE_MEMBER, now) for uid in member_ids],
    )
    return _must_conversation(conn, cid), True


def _create_group(
    conn: Conn, members: list[tuple[str, str]], title: str | None, now: int
) -> chat.ConversationRecord:
    cid = new_id("c")
    conn.execute(
        "INSERT INTO conversations (id, type, title, created_at, updated_at, activity_at) "
        "VALUES (?, 'group', ?, ?, ?, ?)",
        (cid, title, now, now, now),
    )
    conn.executemany(
        "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?, ?, ?, ?)",
        [(cid, uid, role, now) for uid, role in members],
    )
    return _must_conversation(conn, cid)


def _add_members(conn: Conn, cid: str, user_ids: list[str], role: str, now: int) -> chat.ConversationRecord:
    ctype, last_seq, _ = _conv_head(conn, cid)
    chat.require_group(ctype, change="members")
    conn.executemany(
        "INSERT INTO members (conversation_id, user_id, role, joined_at, read_seq) "
        "VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = excluded.role, "
        "joined_at = excluded.joined_at, left_at = NULL, muted = 0, read_seq = excluded.read_seq, "
        "read_at = NULL, unread_count = 0 "
        "WHERE members.left_at IS NOT NULL",
        [(cid, uid, role, now, last_seq) for uid in user_ids],
    )
    conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
    return _must_conversation(conn, cid)


def _leave(conn: Conn, cid: str, user_id: str, now: int) -> chat.ConversationRecord:
    _, last_seq, _ = _conv_head(conn, cid)
    cur = conn.execute(
        "UPDATE members SET left_at = ?, unread_count = 0, "
        "read_at = CASE WHEN read_seq < ? THEN ? ELSE read_at END, read_seq = MAX(read_seq, ?) "
        "WHERE conversation_id = ? AND user_id = ? AND left_at IS NULL",
        (now, last_seq, now, last_seq, cid, user_id),
    )
    if cur.rowcount == 0:
        raise chat.not_a_member()
    conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, cid))
    return _must_conversation(conn, cid)


def _set_title(conn: Conn, cid: str, title: str | None, now: int) -> chat.ConversationRecord:
    ctype, _, _ = _conv_head(conn, cid)
    chat.require_group(ctype, change="title")
    conn.execute("UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?", (title, now, cid))
    return _must_conversation(conn, cid)


def _set_muted(conn: Conn, cid: str, user_id: str, muted: bool) -> chat.MemberRecord:
    row = conn.execute(
        f"UPDATE members SET muted = ? WHERE conversation_id = ? AND user_id = ? AND left_at IS NULL "
        f"RETURNING {chat.MEMBER_COLS}",
        (int(muted), cid, user_id),
    ).fetchone()
    if row is None:
        raise chat.not_a_member()
    return chat.member_from(row, CODEC)


def _get_member(conn: Conn, cid: str, user_id: str) -> chat.MemberRecord | None:
    row = conn.execute(
        f"SELECT {chat.MEMBER_COLS} FROM members WHERE conversation_id = ? AND user_id = ?", (cid, user_id)
    ).fetchone()
    return None if row is None else chat.member_from(row, CODEC)


def _list_conversations(
    conn: Conn, user_id: str, after: tuple[int, str] | None, limit: int
) -> tuple[list[chat.ConversationRecord], str | None]:
    # A conversation's place: its last message, or when the user joined it if later.
    mine = (
        "SELECT m.conversation_id AS cid, MAX(c.activity_at, m.joined_at) AS act FROM members m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = ? AND m.left_at IS NULL"
    )
    if after is None:
        rows = conn.execute(
            f"SELECT cid, act FROM ({mine}) ORDER BY act DESC, cid DESC LIMIT ?", (user_id, limit + 1)
        ).fetchall()
    else:
        rows = conn.execute(
            f"SELECT cid, act FROM ({mine}) WHERE (act, cid) < (?, ?) ORDER BY act DESC, cid DESC LIMIT ?",
            (user_id, after[0], after[1], limit + 1),
        ).fetchall()
    page, nxt = chat.conversation_cursor([(r["cid"], r["act"]) for r in rows], limit)
    return [c for c in (_load_conversation(conn, cid) for cid, _ in page) if c is not None], nxt


def _unread_total(conn: Conn, user_id: str, include_muted: bool) -> int:
    sql = "SELECT COALESCE(SUM(unread_count), 0) FROM members WHERE user_id = ? AND left_at IS NULL"
    if not include_muted:
        sql += " AND muted = 0"
    return int(conn.execute(sql, (user_id,)).fetchone()[0])


def _append(conn: Conn, new: chat.NewMessage) -> tuple[chat.MessageRecord, bool]:
    cid, sender_id = new.conversation_id, new.sender_id
    # One lookup for the conversation, the sender's membership and an earlier message with this client id.
    head = conn.execute(
        "SELECT c.type, c.last_seq, c.version, "
        "(SELECT m.left_at IS NULL FROM members m WHERE m.conversation_id = c.id AND m.user_id = ?1), "
        "(SELECT g.id FROM messages g WHERE g.conversation_id = c.id AND g.sender_id = ?1 AND g.client_id = ?2) "
        "FROM conversations c WHERE c.id = ?3",
        (sender_id, new.client_id, cid),
    ).fetchone()
    if head is None:
        raise new.refusal("not_found")
    ctype, last_seq, version, active, existing_id = head
    if existing_id is not None:
        existing = _load_message(conn, existing_id)
        assert existing is not None
        return new.repeat_of(existing), False
    direct = ctype == "direct"
    if new.require_member and (active is None or (not active and not direct)):
        raise new.refusal("forbidden")
    seq, version = last_seq + 1, version + 1
    now = us(new.now)
    conn.execute(
        "UPDATE conversations SET last_seq = ?, version = ?, last_message_id = ?, updated_at = ?, activity_at = ? "
        "WHERE id = ?",
        (seq, version, new.message_id, now, now, cid),
    )
    conn.execute(
        "INSERT INTO messages (id, conversation_id, seq, version, sender_id, client_id, type, body, media_url, "
        "reply_to, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.message_id,
            cid,
            seq,
            version,
            sender_id,
            new.client_id,
            new.type,
            new.body,
            new.media_url,
            new.reply_to,
            now,
        ),
    )
    conn.execute(
        "UPDATE members SET unread_count = unread_count + 1 WHERE conversation_id = ? AND user_id <> ? "
        "AND (left_at IS NULL OR ?)",
        (cid, sender_id, direct),
    )
    if direct:
        conn.execute(
            "UPDATE members SET left_at = NULL WHERE conversation_id = ? AND left_at IS NOT NULL", (cid,)
        )
    for spec in new.jobs:
        insert_job(conn, NewJob.of(spec, payload=new.job_payload(spec, seq), now=new.now))
    return new.record(seq, version), True


def _bump_version(conn: Conn, cid: str, now: int) -> int:
    row = conn.execute(
        "UPDATE conversations SET version = version + 1, updated_at = ? WHERE id = ? RETURNING version",
        (now, cid),
    ).fetchone()
    return int(row[0])


def _edit(conn: Conn, message_id: str, body: str, now: datetime, sender_id: str | None) -> chat.MessageRecord:
    msg = chat.may_change(_load_message(conn, message_id), sender_id)
    if msg.deleted:
        raise chat.deleted_message()
    version = _bump_version(conn, msg.conversation_id, us(now))
    conn.execute(
        "UPDATE messages SET body = ?, edited_at = ?, version = ? WHERE id = ?",
        (body, us(now), version, message_id),
    )
    return attrs.evolve(msg, body=body, edited_at=now, version=version)


def _delete(
    conn: Conn, message_id: str, now: datetime, sender_id: str | None
) -> tuple[chat.MessageRecord, bool]:
    msg = chat.may_change(_load_message(conn, message_id), sender_id)
    if msg.deleted:
        return msg, False
    version = _bump_version(conn, msg.conversation_id, us(now))
    conn.execute(
        "UPDATE messages SET deleted = 1, deleted_at = ?, version = ? WHERE id = ?",
        (us(now), version, message_id),
    )
    conn.execute(
        "UPDATE members SET unread_count = unread_count - 1 WHERE conversation_id = ? AND left_at IS NULL "
        "AND user_id <> ? AND read_seq < ? AND unread_count > 0",
        (msg.conversation_id, msg.sender_id, msg.seq),
    )
    return attrs.evolve(msg, deleted=True, deleted_at=now, version=version), True


def _history(conn: Conn, cid: str, bound: chat.HistoryBound, limit: int) -> chat.MessagePage:
    _, _, version = _conv_head(conn, cid)
    sql = f"SELECT {chat.MSG_COLS} FROM messages WHERE conversation_id = ?"
    args: list[object] = [cid]
    if bound.op is not None:
        sql += f" AND {bound.column} {bound.op} ?"
        args.append(bound.value)
    sql += f" ORDER BY {bound.column}{' DESC' if bound.descending else ''} LIMIT ?"
    args.append(limit + 1)
    rows = conn.execute(sql, args).fetchall()
    return bound.page([chat.message_from(r, CODEC) for r in rows], limit, version)


def _mark_read(conn: Conn, cid: str, user_id: str, seq: int, now: datetime) -> chat.ReadState:
    _, last_seq, _ = _conv_head(conn, cid)
    row = conn.execute(
        "SELECT read_seq, read_at, unread_count FROM members WHERE conversation_id = ? AND user_id = ? "
        "AND left_at IS NULL",
        (cid, user_id),
    ).fetchone()
    if row is None:
        raise chat.not_a_member()
    target = chat.read_target(seq, read_seq=row["read_seq"], last_seq=last_seq)
    if target is None:
        return chat.ReadState(
            cid, user_id, row["read_seq"], CODEC.opt_time(row["read_at"]), row["unread_count"], False
        )
    unread = 0
    if target < last_seq:
        unread = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND seq > ? AND deleted = 0 AND sender_id <> ?",
            (cid, target, user_id),
        ).fetchone()[0]
    conn.execute(
        "UPDATE members SET read_seq = ?, read_at = ?, unread_count = ? WHERE conversation_id = ? AND user_id = ?",
        (target, us(now), unread, cid, user_id),
    )
    return chat.ReadState(cid, user_id, target, now, unread, True)


class SQLiteChat(SQLiteEngine, chat.ChatRules):
    """``ChatStore`` on SQLite."""

    async def _open_direct(
        self, key: str, member_ids: list[str], now: datetime
    ) -> tuple[chat.ConversationRecord, bool]:
        return await self._write(functools.partial(_open_direct, key=key, member_ids=member_ids, now=us(now)))

    async def _create_group(
        self, members: list[tuple[str, str]], title: str | None, now: datetime
    ) -> chat.ConversationRecord:
        return await self._write(functools.partial(_create_group, members=members, title=title, now=us(now)))

    async def get_conversation(self, conversation_id: str) -> chat.ConversationRecord | None:
        return await self._read(_load_conversation, conversation_id)

    async def get_member(self, conversation_id: str, user_id: str) -> chat.MemberRecord | None:
        return await self._read(_get_member, conversation_id, user_id)

    async def _add_members(
        self, cid: str, user_ids: list[str], role: str, now: datetime
    ) -> chat.ConversationRecord:
        return await self._write(
            functools.partial(_add_members, cid=cid, user_ids=user_ids, role=role, now=us(now))
        )

    async def _leave(self, cid: str, user_id: str, now: datetime) -> chat.ConversationRecord:
        return await self._write(functools.partial(_leave, cid=cid, user_id=user_id, now=us(now)))

    async def _set_title(self, cid: str, title: str | None, now: datetime) -> chat.ConversationRecord:
        return await self._write(functools.partial(_set_title, cid=cid, title=title, now=us(now)))

    async def set_muted(self, *, conversation_id: str, user_id: str, muted: bool) -> chat.MemberRecord:
        return await self._write(
            functools.partial(_set_muted, cid=conversation_id, user_id=user_id, muted=muted)
        )

    async def _list_conversations(
        self, user_id: str, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[chat.ConversationRecord], str | None]:
        return await self._read(_list_conversations, user_id, after, limit)

    async def unread_total(self, user_id: str, *, include_muted: bool = False) -> int:
        return await self._read(_unread_total, user_id, include_muted)

    async def _append(self, new: chat.NewMessage) -> tuple[chat.MessageRecord, bool]:
        return await self._write(functools.partial(_append, new=new), wakes_jobs=bool(new.jobs))

    async def get_message(self, message_id: str) -> chat.MessageRecord | None:
        return await self._read(_load_message, message_id)

    async def _edit(
        self, message_id: str, body: str, now: datetime, sender_id: str | None
    ) -> chat.MessageRecord:
        return await self._write(
            functools.partial(_edit, message_id=message_id, body=body, now=now, sender_id=sender_id)
        )

    async def _delete(
        self, message_id: str, now: datetime, sender_id: str | None
    ) -> tuple[chat.MessageRecord, bool]:
        return await self._write(
            functools.partial(_delete, message_id=message_id, now=now, sender_id=sender_id)
        )

    async def _history(self, cid: str, bound: chat.HistoryBound, limit: int) -> chat.MessagePage:
        return await self._read(_history, cid, bound, limit)

    async def _mark_read(self, cid: str, user_id: str, seq: int, now: datetime) -> chat.ReadState:
        return await self._write(functools.partial(_mark_read, cid=cid, user_id=user_id, seq=seq, now=now))
