"""PostgreSQL: conversations, members, messages, read cursors (``ChatStore``).

``append_message``, the hot path, is grouped: appends queue in a few lanes (a
conversation always in the same lane, ``store.pool_max / 4`` lanes) and each
lane sends what is waiting as one call of the ``realtimed_append_messages`` SQL
function (migration 0001) while the previous group of that lane is in flight.
A group is one round trip and one commit; each append in it keeps its own
outcome (created, repeated, not found, forbidden), and none is answered before
the group is committed.

``mark_read`` is one round trip too: the ``realtimed_mark_read`` SQL function
(migration 0004).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import attrs
import outcome
import trio

from realtimed.errors import Conflict, Unavailable
from realtimed.store import chat
from realtimed.store.jobs import NewJob
from realtimed.store.postgres.engine import CODEC, Conn, PostgresEngine, Rollback
from realtimed.store.values import dumps, from_micros, new_id, to_micros

__all__ = ["PostgresChat"]

log = logging.getLogger(__name__)

_APPEND_GROUP_MAX: Final = 256
_APPEND_MESSAGES: Final = (
    "SELECT * FROM realtimed_append_messages(" + ", ".join(f"${n}" for n in range(1, 20)) + ")"
)


async def _load_conversations(conn: Conn, ids: Sequence[str]) -> dict[str, chat.ConversationRecord]:
    rows = await conn.fetch(
        f"SELECT {', '.join('c.' + col for col in chat.CONVERSATION_COLS.split(', '))}, "
        + ", ".join(f"m.{col} AS m_{col}" for col in chat.MSG_COLS.split(", "))
        + " FROM conversations c LEFT JOIN messages m ON m.id = c.last_message_id WHERE c.id = ANY($1::text[])",
        list(ids),
    )
    if not rows:
        return {}
    members: dict[str, list[chat.MemberRecord]] = {}
    for r in await conn.fetch(
        f"SELECT conversation_id, {chat.MEMBER_COLS} FROM members WHERE conversation_id = ANY($1::text[]) "
        "AND left_at IS NULL ORDER BY joined_at, user_id",
        list(ids),
    ):
        members.setdefault(r["conversation_id"], []).append(chat.member_from(r, CODEC))
    return {
        r["id"]: chat.conversation_from(
            r,
            CODEC,
            members.get(r["id"], ()),
            chat.message_from(r, CODEC, "m_") if r["m_id"] is not None else None,
        )
        for r in rows
    }


async def _load_conversation(conn: Conn, cid: str) -> chat.ConversationRecord | None:
    return (await _load_conversations(conn, [cid])).get(cid)


async def _must_conversation(conn: Conn, cid: str) -> chat.ConversationRecord:
    conv = await _load_conversation(conn, cid)
    if conv is None:
        raise chat.no_conversation()
    return conv


async def _lock_conversation(conn: Conn, cid: str, now: datetime) -> Any:
    """Lock the conversation row (always before its members) and touch ``updated_at``."""
    row = await conn.fetchrow(
        "UPDATE conversations SET updated_at = $2 WHERE id = $1 RETURNING type, last_seq, version", cid, now
    )
    if row is None:
        raise chat.no_conversation()
    return row


async def _open_direct(
    conn: Conn, key: str, member_ids: list[str], now: datetime
) -> tuple[chat.ConversationRecord, bool]:
    cid = new_id("c")
    inserted = await conn.fetchval(
        "INSERT INTO conversations (id, type, title, direct_key, created_at, updated_at, activity_at) "
        "VALUES ($1, 'direct', NULL, $2, $3, $3, $3) ON CONFLICT (direct_key) DO NOTHING RETURNING id",
        cid,
        key,
        now,
    )
    if inserted is not None:
        await conn.executemany(
            "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)",
            [(cid, uid, chat.ROLE_MEMBER, now) for uid in member_ids],
        )
        return await _must_conversation(conn, cid), True
    cid = await conn.fetchval("SELECT id FROM conversations WHERE direct_key = $1 FOR UPDATE", key)
    await conn.execute(
        "UPDATE members SET left_at = NULL, joined_at = $2 WHERE conversation_id = $1 AND left_at IS NOT NULL",
        cid,
        now,
    )
    return await _must_conversation(conn, cid), False


async def _create_group(
    conn: Conn, members: list[tuple[str, str]], title: str | None, now: datetime
) -> chat.ConversationRecord:
    cid = new_id("c")
    await conn.execute(
        "INSERT INTO conversations (id, type, title, created_at, updated_at, activity_at) "
        "VALUES ($1, 'group', $2, $3, $3, $3)",
        cid,
        title,
        now,
    )
    await conn.execute(
        "INSERT INTO members (conversation_id, user_id, role, joined_at) "
        "SELECT $1, u.user_id, u.role, $4 FROM unnest($2::text[], $3::text[]) AS u(user_id, role)",
        cid,
        [uid for uid, _ in members],
        [role for _, role in members],
        now,
    )
    return await _must_conversation(conn, cid)


async def _add_members(
    conn: Conn, cid: str, user_ids: list[str], role: str, now: datetime
) -> chat.ConversationRecord:
    head = await _lock_conversation(conn, cid, now)
    chat.require_group(head["type"], change="members")
    await conn.execute(
        "INSERT INTO members (conversation_id, user_id, role, joined_at, read_seq) "
        "SELECT $1, u, $3, $4, $5 FROM unnest($2::text[]) AS u "
        "ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = excluded.role, joined_at = excluded.joined_at, "
        "left_at = NULL, muted = false, read_seq = excluded.read_seq, read_at = NULL, unread_count = 0 "
        "WHERE members.left_at IS NOT NULL",
        cid,
        user_ids,
        role,
        now,
        head["last_seq"],
    )
    return await _must_conversation(conn, cid)


async def _leave(conn: Conn, cid: str, user_id: str, now: datetime) -> chat.ConversationRecord:
    head = await _lock_conversation(conn, cid, now)
    status = await conn.execute(
        "UPDATE members SET left_at = $3, unread_count = 0, "
        "read_at = CASE WHEN read_seq < $4 THEN $3 ELSE read_at END, read_seq = GREATEST(read_seq, $4) "
        "WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL",
        cid,
        user_id,
        now,
        head["last_seq"],
    )
    if status == "UPDATE 0":
        raise chat.not_a_member()
    return await _must_conversation(conn, cid)


async def _set_title(conn: Conn, cid: str, title: str | None, now: datetime) -> chat.ConversationRecord:
    head = await _lock_conversation(conn, cid, now)
    chat.require_group(head["type"], change="title")
    await conn.execute("UPDATE conversations SET title = $2 WHERE id = $1", cid, title)
    return await _must_conversation(conn, cid)


async def _set_muted(conn: Conn, cid: str, user_id: str, muted: bool) -> chat.MemberRecord:
    row = await conn.fetchrow(
        f"UPDATE members SET muted = $3 WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL "
        f"RETURNING {chat.MEMBER_COLS}",
        cid,
        user_id,
        muted,
    )
    if row is None:
        raise chat.not_a_member()
    return chat.member_from(row, CODEC)


async def _get_member(conn: Conn, cid: str, user_id: str) -> chat.MemberRecord | None:
    row = await conn.fetchrow(
        f"SELECT {chat.MEMBER_COLS} FROM members WHERE conversation_id = $1 AND user_id = $2", cid, user_id
    )
    return None if row is None else chat.member_from(row, CODEC)


async def _list_conversations(
    conn: Conn, user_id: str, after: tuple[int, str] | None, limit: int
) -> tuple[list[chat.ConversationRecord], str | None]:
    # A conversation's place: its last message, or when the user joined it if later.
    mine = (
        "SELECT m.conversation_id AS cid, GREATEST(c.activity_at, m.joined_at) AS act FROM members m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = $1 AND m.left_at IS NULL"
    )
    if after is None:
        rows = await conn.fetch(
            f"SELECT cid, act FROM ({mine}) AS mine ORDER BY act DESC, cid DESC LIMIT $2", user_id, limit + 1
        )
    else:
        rows = await conn.fetch(
            f"SELECT cid, act FROM ({mine}) AS mine WHERE (act, cid) < ($2, $3) ORDER BY act DESC, cid DESC LIMIT $4",
            user_id,
            from_micros(after[0]),
            after[1],
            limit + 1,
        )
    page, nxt = chat.conversation_cursor([(r["cid"], to_micros(r["act"])) for r in rows], limit)
    loaded = await _load_conversations(conn, [cid for cid, _ in page])
    return [loaded[cid] for cid, _ in page if cid in loaded], nxt


@attrs.define(eq=False)
class _Pending:
    """One ``append_message`` call waiting for its group."""

    new: chat.NewMessage
    done: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[tuple[chat.MessageRecord, bool]] | None = None


async def _append_group(
    conn: Conn, group: list[_Pending]
) -> list[outcome.Outcome[tuple[chat.MessageRecord, bool]]]:
    """asyncio side: append a group of messages in one statement; one outcome per request."""
    news = [p.new for p in group]
    job_items = [n for n, new in enumerate(news, start=1) for _ in new.jobs]
    # The SQL function adds message_id and seq to each payload.
    jobs = [NewJob.of(spec, payload=spec.payload, now=new.now) for new in news for spec in new.jobs]
    rows = await conn.fetch(
        _APPEND_MESSAGES,
        [n.now for n in news],
        [n.conversation_id for n in news],
        [n.sender_id for n in news],
        [n.client_id for n in news],
        [n.message_id for n in news],
        [n.type for n in news],
        [n.body for n in news],
        [n.media_url for n in news],
        [n.reply_to for n in news],
        [n.require_member for n in news],
        job_items,
        [j.id for j in jobs],
        [j.queue for j in jobs],
        [j.kind for j in jobs],
        [dumps(j.payload) for j in jobs],
        [j.priority for j in jobs],
        [j.max_attempts for j in jobs],
        [j.run_at for j in jobs],
        [j.dedupe_key for j in jobs],
    )
    by_item = {r["out_item"]: r for r in rows}
    existing_ids = [r["out_existing_id"] for r in rows if r["out_status"] == "existing"]
    existing: dict[str, chat.MessageRecord] = {}
    if existing_ids:
        found = await conn.fetch(
            f"SELECT {chat.MSG_COLS} FROM messages WHERE id = ANY($1::text[])", existing_ids
        )
        existing = {r["id"]: chat.message_from(r, CODEC) for r in found}
    out: list[outcome.Outcome[tuple[chat.MessageRecord, bool]]] = []
    for n, new in enumerate(news, start=1):
        row = by_item[n]
        status = row["out_status"]
        if status == "created":
            out.append(outcome.Value((new.record(row["out_seq"], row["out_version"]), True)))
        elif status == "existing":
            try:
                out.append(outcome.Value((new.repeat_of(existing[row["out_existing_id"]]), False)))
            except Conflict as exc:
                out.append(outcome.Error(exc))
        else:
            out.append(outcome.Error(new.refusal(status)))
    return out


async def _load_message(conn: Conn, message_id: str) -> chat.MessageRecord | None:
    row = await conn.fetchrow(f"SELECT {chat.MSG_COLS} FROM messages WHERE id = $1", message_id)
    return None if row is None else chat.message_from(row, CODEC)


async def _bump_version(conn: Conn, cid: str, now: datetime) -> int:
    version: int = await conn.fetchval(
        "UPDATE conversations SET version = version + 1, updated_at = $2 WHERE id = $1 RETURNING version",
        cid,
        now,
    )
    return version


async def _edit(
    conn: Conn, message_id: str, body: str, now: datetime, sender_id: str | None
) -> chat.MessageRecord:
    msg = chat.may_change(await _load_message(conn, message_id), sender_id)
    version = await _bump_version(conn, msg.conversation_id, now)
    row = await conn.fetchrow(
        f"UPDATE messages SET body = $2, edited_at = $3, version = $4 WHERE id = $1 AND NOT deleted "
        f"RETURNING {chat.MSG_COLS}",
        message_id,
        body,
        now,
        version,
    )
    if row is None:
        raise chat.deleted_message()
    return chat.message_from(row, CODEC)


async def _delete(
    conn: Conn, message_id: str, now: datetime, sender_id: str | None
) -> tuple[chat.MessageRecord, bool]:
    msg = chat.may_change(await _load_message(conn, message_id), sender_id)
    if msg.deleted:
        return msg, False
    version = await _bump_version(conn, msg.conversation_id, now)
    row = await conn.fetchrow(
        f"UPDATE messages SET deleted = true, deleted_at = $2, version = $3 WHERE id = $1 AND NOT deleted "
        f"RETURNING {chat.MSG_COLS}",
        message_id,
        now,
        version,
    )
    if row is None:  # deleted meanwhile: this call changes nothing after all
        raise Rollback((chat.may_change(await _load_message(conn, message_id), None), False))
    await conn.execute(
        "UPDATE members SET unread_count = unread_count - 1 WHERE conversation_id = $1 AND left_at IS NULL "
        "AND user_id <> $2 AND read_seq < $3 AND unread_count > 0",
        msg.conversation_id,
        msg.sender_id,
        msg.seq,
    )
    return chat.message_from(row, CODEC), True


async def _history(conn: Conn, cid: str, bound: chat.HistoryBound, limit: int) -> chat.MessagePage:
    version = await conn.fetchval("SELECT version FROM conversations WHERE id = $1", cid)
    if version is None:
        raise chat.no_conversation()
    sql = f"SELECT {chat.MSG_COLS} FROM messages WHERE conversation_id = $1"
    args: list[object] = [cid]
    if bound.op is not None:
        args.append(bound.value)
        sql += f" AND {bound.column} {bound.op} ${len(args)}"
    args.append(limit + 1)
    sql += f" ORDER BY {bound.column}{' DESC' if bound.descending else ''} LIMIT ${len(args)}"
    rows = await conn.fetch(sql, *args)
    return bound.page([chat.message_from(r, CODEC) for r in rows], limit, version)


async def _mark_read(conn: Conn, cid: str, user_id: str, seq: int, now: datetime) -> chat.ReadState:
    """One round trip: the ``realtimed_mark_read`` function (migration 0004) locks the
    member row first (an append waiting for it counts its message after this read)."""
    row = await conn.fetchrow("SELECT * FROM realtimed_mark_read($1, $2, $3, $4)", cid, user_id, seq, now)
    status = row["out_status"]
    if status == "no_conversation":
        raise chat.no_conversation()
    if status == "not_member":
        raise chat.not_a_member()
    return chat.ReadState(
        cid, user_id, row["out_read_seq"], row["out_read_at"], row["out_unread"], row["out_changed"]
    )


class PostgresChat(PostgresEngine, chat.ChatRules):
    """``ChatStore`` on PostgreSQL, with appends grouped in lanes (see the module docstring)."""

    _append_lanes: tuple[trio.MemorySendChannel[_Pending], ...] = ()

    # -- grouped appends -------------------------------------------------------------------------

    def _start_batching(self, nursery: trio.Nursery) -> None:
        super()._start_batching(nursery)
        lanes = []
        for _ in range(max(1, self.config.pool_max // 4)):
            send, recv = trio.open_memory_channel[_Pending](_APPEND_GROUP_MAX)
            nursery.start_soon(self._append_lane, recv)
            lanes.append(send)
        self._append_lanes = tuple(lanes)

    def _stop_batching(self) -> None:
        self._append_lanes = ()
        super()._stop_batching()

    async def _append(self, new: chat.NewMessage) -> tuple[chat.MessageRecord, bool]:
        req = _Pending(new)
        lanes = self._append_lanes
        if not lanes:
            raise Unavailable("the store is not running")
        try:
            await lanes[hash(new.conversation_id) % len(lanes)].send(req)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the store is shutting down") from None
        await req.done.wait()
        assert req.result is not None
        return req.result.unwrap()

    async def _append_lane(self, recv: trio.MemoryReceiveChannel[_Pending]) -> None:
        """Send one lane's waiting appends to PostgreSQL as groups, one group at a time.

        A conversation always uses the same lane (``_append``), so the appends to
        one conversation queue up here while a group is in flight and go
        together in the next, and lanes never wait for each other's conversation
        locks. Under load one round trip and one commit carry many appends;
        alone, an append goes at once.
        """
        try:
            while True:
                group = [await recv.receive()]
                while len(group) < _APPEND_GROUP_MAX:
                    try:
                        group.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._send_group(group)
        finally:
            recv.close()
            closing = Unavailable("the store is shutting down")
            while True:
                try:
                    req = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                req.result = outcome.Error(closing)
                req.done.set()

    async def _send_group(self, group: list[_Pending]) -> None:
        try:
            results = await self._call(_append_group, group, tx=False)
        except Unavailable as exc:
            for req in group:
                err = Unavailable(exc.message)
                err.__cause__ = exc.__cause__
                req.result = outcome.Error(err)
        except Exception as exc:
            if len(group) > 1:
                # The statement failed as a whole and changed nothing: send each append alone,
                # so that only the one at fault fails.
                log.warning(
                    "store: a group of %d appends failed (%s); sending them one by one", len(group), exc
                )
                for req in group:
                    await self._send_group([req])
                return
            log.exception("store: an append failed")
            group[0].result = outcome.Error(exc)
        else:
            for req, result in zip(group, results, strict=True):
                req.result = result
            if any(req.new.jobs for req in group):
                self._wake_jobs()
        finally:
            for req in group:
                if req.result is None:
                    req.result = outcome.Error(Unavailable("the store is shutting down"))
                req.done.set()

    # -- the other calls -------------------------------------------------------------------------

    async def _open_direct(
        self, key: str, member_ids: list[str], now: datetime
    ) -> tuple[chat.ConversationRecord, bool]:
        return await self._call(_open_direct, key, member_ids, now)

    async def _create_group(
        self, members: list[tuple[str, str]], title: str | None, now: datetime
    ) -> chat.ConversationRecord:
        return await self._call(_create_group, members, title, now)

    async def get_conversation(self, conversation_id: str) -> chat.ConversationRecord | None:
        return await self._call(_load_conversation, conversation_id, tx=False, read=True)

    async def get_member(self, conversation_id: str, user_id: str) -> chat.MemberRecord | None:
        return await self._call(_get_member, conversation_id, user_id, tx=False, read=True)

    async def _add_members(
        self, cid: str, user_ids: list[str], role: str, now: datetime
    ) -> chat.ConversationRecord:
        return await self._call(_add_members, cid, user_ids, role, now)

    async def _leave(self, cid: str, user_id: str, now: datetime) -> chat.ConversationRecord:
        return await self._call(_leave, cid, user_id, now)

    async def _set_title(self, cid: str, title: str | None, now: datetime) -> chat.ConversationRecord:
        return await self._call(_set_title, cid, title, now)

    async def set_muted(self, *, conversation_id: str, user_id: str, muted: bool) -> chat.MemberRecord:
        return await self._call(_set_muted, conversation_id, user_id, muted, tx=False)

    async def _list_conversations(
        self, user_id: str, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[chat.ConversationRecord], str | None]:
        return await self._call(_list_conversations, user_id, after, limit, tx=False, read=True)

    async def unread_total(self, user_id: str, *, include_muted: bool = False) -> int:
        sql = "SELECT COALESCE(SUM(unread_count), 0) FROM members WHERE user_id = $1 AND left_at IS NULL"
        if not include_muted:
            sql += " AND NOT muted"
        return int(await self._call(lambda conn: conn.fetchval(sql, user_id), tx=False, read=True))

    async def get_message(self, message_id: str) -> chat.MessageRecord | None:
        return await self._call(_load_message, message_id, tx=False, read=True)

    async def _edit(
        self, message_id: str, body: str, now: datetime, sender_id: str | None
    ) -> chat.MessageRecord:
        return await self._call(_edit, message_id, body, now, sender_id)

    async def _delete(
        self, message_id: str, now: datetime, sender_id: str | None
    ) -> tuple[chat.MessageRecord, bool]:
        return await self._call(_delete, message_id, now, sender_id)

    async def _history(self, cid: str, bound: chat.HistoryBound, limit: int) -> chat.MessagePage:
        return await self._call(_history, cid, bound, limit, tx=False, read=True)

    async def _mark_read(self, cid: str, user_id: str, seq: int, now: datetime) -> chat.ReadState:
        return await self._call(_mark_read, cid, user_id, seq, now, tx=False)
