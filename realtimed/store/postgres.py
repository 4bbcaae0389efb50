"""The PostgreSQL store: asyncpg on the asyncio side of trio-asyncio.

A trio-asyncio loop must be running around the store (``async with
trio_asyncio.open_loop():``); the daemon and the ``realtimed migrate`` command
open one when ``store.backend`` is ``postgres``. Without it ``run`` and
``migrate`` raise ``RuntimeError`` saying so. ``run`` keeps the loop it found,
so any Trio task may then call the store.

Each store call crosses the Trio/asyncio bridge once: the whole call (pool
acquire, transaction, statements) runs as one asyncio coroutine, and asyncpg
prepares and caches every statement per connection. ``append_message``, the hot
path, is grouped: appends queue in a few lanes (a conversation always in the
same lane, ``store.pool_max / 4`` lanes) and each lane sends what is waiting
as one call of the ``realtimed_append_messages`` SQL function (migration 0001)
while the previous group of that lane is in flight. A group is one round trip
and one commit; each append in it keeps its own outcome (created, repeated,
not found, forbidden), and none is answered before the group is committed.

Concurrency: rows are locked in one order (a conversation before its members;
a user's notification counter before their notifications), so concurrent calls
wait rather than deadlock; jobs are claimed with ``FOR UPDATE SKIP LOCKED``. A
deadlock or serialization failure that happens anyway is retried.

Job wake-ups: ``enqueue_job`` (and ``append_message`` with jobs) sends
``NOTIFY realtimed_jobs`` inside its transaction; one dedicated connection
LISTENs and wakes ``wait_for_jobs`` on every node. It reconnects by itself.

Resource handling: ``run`` migrates, opens a pool of ``store.pool_min`` to
``store.pool_max`` connections and the LISTEN connection, and closes them all
when cancelled.

Error handling: a refused or lost connection, a connect timeout, a statement
timeout (``store.statement_timeout_s``) or a server shutting down becomes
``Unavailable`` at once; the pool's connections are then expired so that the
next call connects afresh, and calls succeed again as soon as the server is
back, with no restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeAlias, TypeVar

import asyncpg
import attrs
import outcome
import trio
import trio_asyncio

from realtimed.clock import WallClock
from realtimed.config import StoreConfig
from realtimed.errors import Conflict, Forbidden, NotFound, Unavailable, ValidationFailed
from realtimed.store._common import (
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

__all__ = ["JOBS_CHANNEL", "PostgresStore"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg has no type hints)
_Pool: TypeAlias = Any  # asyncpg.Pool

JOBS_CHANNEL: Final = "realtimed_jobs"
_MIGRATION_LOCK: Final = 0x7274_6D69_6772  # pg_advisory_xact_lock key for migrations
_RETRIES: Final = 3
_LISTEN_KEEPALIVE_S: Final = 30.0
_APPEND_GROUP_MAX: Final = 256
_CLOSE_TIMEOUT_S: Final = 5.0

# Errors that mean "the database cannot be reached now", not "this call is wrong".
_UNAVAILABLE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    OSError,  # refused, reset, unreachable; TimeoutError (connect, acquire, command) is one too
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, statement timeout, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.InterfaceError,  # connection closed under us, pool closing
)
_CLOSE_ERRORS: Final[tuple[type[BaseException], ...]] = (TimeoutError, *_UNAVAILABLE_ERRORS)
_RETRY_ERRORS: Final = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)

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


def _require_loop() -> Any:
    """The trio-asyncio loop of the calling task, or a RuntimeError saying how to open one."""
    loop = trio_asyncio.current_loop.get()
    if loop is None:
        raise RuntimeError(
            "the PostgreSQL store needs a trio-asyncio loop: run it inside `async with trio_asyncio.open_loop():`"
        )
    return loop


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


def _message(r: Any, prefix: str = "") -> MessageRecord:
    return MessageRecord(
        id=r[prefix + "id"],
        conversation_id=r[prefix + "conversation_id"],
        seq=r[prefix + "seq"],
        version=r[prefix + "version"],
        sender_id=r[prefix + "sender_id"],
        client_id=r[prefix + "client_id"],
        type=r[prefix + "type"],
        body=r[prefix + "body"],
        media_url=r[prefix + "media_url"],
        reply_to=r[prefix + "reply_to"],
        created_at=r[prefix + "created_at"],
        edited_at=r[prefix + "edited_at"],
        deleted_at=r[prefix + "deleted_at"],
        deleted=r[prefix + "deleted"],
    )


def _member(r: Any) -> MemberRecord:
    return MemberRecord(
        user_id=r["user_id"],
        role=r["role"],
        joined_at=r["joined_at"],
        left_at=r["left_at"],
        muted=r["muted"],
        read_seq=r["read_seq"],
        read_at=r["read_at"],
        unread_count=r["unread_count"],
    )


def _notification(r: Any) -> NotificationRecord:
    return NotificationRecord(
        id=r["id"],
        user_id=r["user_id"],
        seq=r["seq"],
        type=r["type"],
        title=r["title"],
        body=r["body"],
        data=r["data"],
        priority=r["priority"],
        group_key=r["group_key"],
        dedupe_key=r["dedupe_key"],
        created_at=r["created_at"],
        read_at=r["read_at"],
    )


def _job(r: Any) -> JobRecord:
    return JobRecord(
        id=r["id"],
        queue=r["queue"],
        kind=r["kind"],
        payload=r["payload"],
        priority=r["priority"],
        status=r["status"],
        attempts=r["attempts"],
        max_attempts=r["max_attempts"],
        run_at=r["run_at"],
        last_error=r["last_error"],
        dedupe_key=r["dedupe_key"],
        lease_owner=r["lease_owner"],
        lease_expires_at=r["lease_expires_at"],
        created_at=r["created_at"],
        finished_at=r["finished_at"],
    )


def _prefix_upper(prefix: str) -> str | None:
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# ---------------------------------------------------------------------------
# Operations: coroutines of a connection, run on the asyncio side
# ---------------------------------------------------------------------------


async def _load_conversations(conn: _Conn, ids: Sequence[str]) -> dict[str, ConversationRecord]:
    rows = await conn.fetch(
        "SELECT c.id AS c_id, c.type AS c_type, c.title, c.last_seq, c.version AS c_version, "
        "c.created_at AS c_created_at, c.updated_at, "
        + ", ".join(f"m.{col} AS m_{col}" for col in _MSG_COLS.split(", "))
        + " FROM conversations c LEFT JOIN messages m ON m.id = c.last_message_id WHERE c.id = ANY($1::text[])",
        list(ids),
    )
    if not rows:
        return {}
    members: dict[str, list[MemberRecord]] = {}
    for r in await conn.fetch(
        f"SELECT conversation_id, {_MEMBER_COLS} FROM members WHERE conversation_id = ANY($1::text[]) "
        "AND left_at IS NULL ORDER BY joined_at, user_id",
        list(ids),
    ):
        members.setdefault(r["conversation_id"], []).append(_member(r))
    out: dict[str, ConversationRecord] = {}
    for r in rows:
        out[r["c_id"]] = ConversationRecord(
            id=r["c_id"],
            type=r["c_type"],
            title=r["title"],
            members=tuple(members.get(r["c_id"], ())),
            last_message=_message(r, "m_") if r["m_id"] is not None else None,
            last_seq=r["last_seq"],
            version=r["c_version"],
            created_at=r["c_created_at"],
            updated_at=r["updated_at"],
        )
    return out


async def _load_conversation(conn: _Conn, cid: str) -> ConversationRecord | None:
    return (await _load_conversations(conn, [cid])).get(cid)


async def _must_conversation(conn: _Conn, cid: str) -> ConversationRecord:
    conv = await _load_conversation(conn, cid)
    if conv is None:
        raise NotFound("no such conversation")
    return conv


async def _lock_conversation(conn: _Conn, cid: str, now: datetime) -> Any:
    """Lock the conversation row (always before its members) and touch ``updated_at``."""
    row = await conn.fetchrow(
        "UPDATE conversations SET updated_at = $2 WHERE id = $1 RETURNING type, last_seq, version", cid, now
    )
    if row is None:
        raise NotFound("no such conversation")
    return row


async def _open_direct(conn: _Conn, user_id: str, other_id: str, now: datetime) -> tuple[ConversationRecord, bool]:
    key = direct_key(user_id, other_id)
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
            [(cid, uid, ROLE_MEMBER, now) for uid in dict.fromkeys((user_id, other_id))],
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
    conn: _Conn, member_ids: Sequence[str], now: datetime, title: str | None, owner_id: str | None
) -> ConversationRecord:
    ids = list(dict.fromkeys(([owner_id] if owner_id is not None else []) + list(member_ids)))
    if not ids:
        raise ValidationFailed("member_ids", "a group needs at least one member")
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
        "SELECT $1, u.user_id, CASE WHEN u.user_id = $3 THEN $5 ELSE $6 END, $4 "
        "FROM unnest($2::text[]) AS u(user_id)",
        cid,
        ids,
        owner_id,
        now,
        ROLE_OWNER,
        ROLE_MEMBER,
    )
    return await _must_conversation(conn, cid)


async def _add_members(
    conn: _Conn, cid: str, user_ids: Sequence[str], now: datetime, role: str
) -> ConversationRecord:
    head = await _lock_conversation(conn, cid, now)
    if head["type"] != "group":
        raise Conflict("the members of a direct conversation are fixed")
    await conn.execute(
        "INSERT INTO members (conversation_id, user_id, role, joined_at, read_seq) "
        "SELECT $1, u, $3, $4, $5 FROM unnest($2::text[]) AS u "
        "ON CONFLICT (conversation_id, user_id) DO UPDATE SET role = excluded.role, joined_at = excluded.joined_at, "
        "left_at = NULL, muted = false, read_seq = excluded.read_seq, read_at = NULL, unread_count = 0 "
        "WHERE members.left_at IS NOT NULL",
        cid,
        list(dict.fromkeys(user_ids)),
        role,
        now,
        head["last_seq"],
    )
    return await _must_conversation(conn, cid)


async def _leave(conn: _Conn, cid: str, user_id: str, now: datetime) -> ConversationRecord:
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
        raise NotFound("not a member of this conversation")
    return await _must_conversation(conn, cid)


async def _set_title(conn: _Conn, cid: str, title: str | None, now: datetime) -> ConversationRecord:
    head = await _lock_conversation(conn, cid, now)
    if head["type"] != "group":
        raise Conflict("a direct conversation has no title")
    await conn.execute("UPDATE conversations SET title = $2 WHERE id = $1", cid, title)
    return await _must_conversation(conn, cid)


async def _set_muted(conn: _Conn, cid: str, user_id: str, muted: bool) -> MemberRecord:
    row = await conn.fetchrow(
        f"UPDATE members SET muted = $3 WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL "
        f"RETURNING {_MEMBER_COLS}",
        cid,
        user_id,
        muted,
    )
    if row is None:
        raise NotFound("not a member of this conversation")
    return _member(row)


async def _get_member(conn: _Conn, cid: str, user_id: str) -> MemberRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_MEMBER_COLS} FROM members WHERE conversation_id = $1 AND user_id = $2", cid, user_id
    )
    return None if row is None else _member(row)


async def _list_conversations(
    conn: _Conn, user_id: str, cursor: str | None, limit: int
) -> tuple[list[ConversationRecord], str | None]:
    # A conversation's place: its last message, or when the user joined it if later.
    mine = (
        "SELECT m.conversation_id AS cid, GREATEST(c.activity_at, m.joined_at) AS act FROM members m "
        "JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = $1 AND m.left_at IS NULL"
    )
    if cursor is None:
        rows = await conn.fetch(
            f"SELECT cid, act FROM ({mine}) AS mine ORDER BY act DESC, cid DESC LIMIT $2", user_id, limit + 1
        )
    else:
        act_us, cid = decode_time_cursor(cursor)
        rows = await conn.fetch(
            f"SELECT cid, act FROM ({mine}) AS mine WHERE (act, cid) < ($2, $3) ORDER BY act DESC, cid DESC LIMIT $4",
            user_id,
            from_micros(act_us),
            cid,
            limit + 1,
        )
    page = rows[:limit]
    loaded = await _load_conversations(conn, [r["cid"] for r in page])
    out = [loaded[r["cid"]] for r in page if r["cid"] in loaded]
    nxt = None
    if len(rows) > limit:
        nxt = encode_cursor(to_micros(page[-1]["act"]), page[-1]["cid"])
    return out, nxt


@attrs.define(eq=False)
class _Append:
    """One ``append_message`` call waiting for its group."""

    conversation_id: str
    sender_id: str
    client_id: str
    body: str
    now: datetime
    type: str
    media_url: str | None
    reply_to: str | None
    require_member: bool
    jobs: list[JobSpec]
    message_id: str = attrs.Factory(lambda: new_id("m"))
    done: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[tuple[MessageRecord, bool]] | None = None

    def record(self, seq: int, version: int) -> MessageRecord:
        return MessageRecord(
            id=self.message_id,
            conversation_id=self.conversation_id,
            seq=seq,
            version=version,
            sender_id=self.sender_id,
            client_id=self.client_id,
            type=self.type,
            body=self.body,
            media_url=self.media_url,
            reply_to=self.reply_to,
            created_at=self.now,
        )


_APPEND_MESSAGES: Final = "SELECT * FROM realtimed_append_messages(" + ", ".join(f"${n}" for n in range(1, 20)) + ")"


async def _append_group(conn: _Conn, group: list[_Append]) -> list[outcome.Outcome[tuple[MessageRecord, bool]]]:
    """asyncio side: append a group of messages in one statement; one outcome per request."""
    job_items: list[int] = []
    jobs: list[JobSpec] = []
    for n, req in enumerate(group, start=1):
        for spec in req.jobs:
            job_items.append(n)
            jobs.append(spec)
    rows = await conn.fetch(
        _APPEND_MESSAGES,
        [r.now for r in group],
        [r.conversation_id for r in group],
        [r.sender_id for r in group],
        [r.client_id for r in group],
        [r.message_id for r in group],
        [r.type for r in group],
        [r.body for r in group],
        [r.media_url for r in group],
        [r.reply_to for r in group],
        [r.require_member for r in group],
        job_items,
        [new_id("j") for _ in jobs],
        [j.queue for j in jobs],
        [j.kind for j in jobs],
        [dumps(j.payload) for j in jobs],
        [j.priority for j in jobs],
        [j.max_attempts for j in jobs],
        [utc(j.run_at) if j.run_at is not None else group[item - 1].now for item, j in zip(job_items, jobs, strict=True)],
        [j.dedupe_key for j in jobs],
    )
    by_item = {r["out_item"]: r for r in rows}
    existing_ids = [r["out_existing_id"] for r in rows if r["out_status"] == "existing"]
    existing: dict[str, MessageRecord] = {}
    if existing_ids:
        found = await conn.fetch(f"SELECT {_MSG_COLS} FROM messages WHERE id = ANY($1::text[])", existing_ids)
        existing = {r["id"]: _message(r) for r in found}
    out: list[outcome.Outcome[tuple[MessageRecord, bool]]] = []
    for n, req in enumerate(group, start=1):
        row = by_item[n]
        status = row["out_status"]
        if status == "created":
            out.append(outcome.Value((req.record(row["out_seq"], row["out_version"]), True)))
        elif status == "existing":
            first = existing[row["out_existing_id"]]
            if (first.body, first.type, first.media_url, first.reply_to) != (
                req.body,
                req.type,
                req.media_url,
                req.reply_to,
            ):
                out.append(outcome.Error(Conflict("client_id was already used for a different message")))
            else:
                out.append(outcome.Value((first, False)))
        elif status == "not_found":
            out.append(outcome.Error(NotFound("no such conversation")))
        else:
            out.append(outcome.Error(Forbidden("not a member of this conversation")))
    return out


async def _editable(conn: _Conn, message_id: str, sender_id: str | None) -> MessageRecord:
    row = await conn.fetchrow(f"SELECT {_MSG_COLS} FROM messages WHERE id = $1", message_id)
    if row is None:
        raise NotFound("no such message")
    msg = _message(row)
    if sender_id is not None and msg.sender_id != sender_id:
        raise Forbidden("only the sender may change a message")
    return msg


async def _bump_version(conn: _Conn, cid: str, now: datetime) -> int:
    version: int = await conn.fetchval(
        "UPDATE conversations SET version = version + 1, updated_at = $2 WHERE id = $1 RETURNING version", cid, now
    )
    return version


async def _edit(conn: _Conn, message_id: str, body: str, now: datetime, sender_id: str | None) -> MessageRecord:
    msg = await _editable(conn, message_id, sender_id)
    version = await _bump_version(conn, msg.conversation_id, now)
    row = await conn.fetchrow(
        f"UPDATE messages SET body = $2, edited_at = $3, version = $4 WHERE id = $1 AND NOT deleted "
        f"RETURNING {_MSG_COLS}",
        message_id,
        body,
        now,
        version,
    )
    if row is None:
        raise Conflict("the message is deleted")
    return _message(row)


async def _delete(conn: _Conn, message_id: str, now: datetime, sender_id: str | None) -> tuple[MessageRecord, bool]:
    msg = await _editable(conn, message_id, sender_id)
    if msg.deleted:
        return msg, False
    version = await _bump_version(conn, msg.conversation_id, now)
    row = await conn.fetchrow(
        f"UPDATE messages SET deleted = true, deleted_at = $2, version = $3 WHERE id = $1 AND NOT deleted "
        f"RETURNING {_MSG_COLS}",
        message_id,
        now,
        version,
    )
    if row is None:  # deleted meanwhile: this call changes nothing after all
        raise _Rollback(await _editable(conn, message_id, None))
    await conn.execute(
        "UPDATE members SET unread_count = unread_count - 1 WHERE conversation_id = $1 AND left_at IS NULL "
        "AND user_id <> $2 AND read_seq < $3 AND unread_count > 0",
        msg.conversation_id,
        msg.sender_id,
        msg.seq,
    )
    return _message(row), True


class _Rollback(Exception):
    """Roll the transaction back and return ``value`` (as ``(value, False)``)."""

    def __init__(self, value: Any) -> None:
        super().__init__("rollback")
        self.value = value


async def _history(
    conn: _Conn,
    cid: str,
    before_seq: int | None,
    after_seq: int | None,
    changed_since: int | None,
    limit: int,
) -> MessagePage:
    version = await conn.fetchval("SELECT version FROM conversations WHERE id = $1", cid)
    if version is None:
        raise NotFound("no such conversation")
    base = f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = $1"
    if after_seq is not None:
        rows = await conn.fetch(base + " AND seq > $2 ORDER BY seq LIMIT $3", cid, after_seq, limit + 1)
    elif changed_since is not None:
        rows = await conn.fetch(base + " AND version > $2 ORDER BY version LIMIT $3", cid, changed_since, limit + 1)
    elif before_seq is not None:
        rows = await conn.fetch(base + " AND seq < $2 ORDER BY seq DESC LIMIT $3", cid, before_seq, limit + 1)
    else:
        rows = await conn.fetch(base + " ORDER BY seq DESC LIMIT $2", cid, limit + 1)
    has_more = len(rows) > limit
    messages = sorted((_message(r) for r in rows[:limit]), key=lambda m: m.seq)
    return MessagePage(messages=messages, has_more=has_more, version=version)


async def _mark_read(conn: _Conn, cid: str, user_id: str, seq: int, now: datetime) -> ReadState:
    # The member row first: an append waiting for it counts its message after this read.
    row = await conn.fetchrow(
        "SELECT read_seq, read_at, unread_count FROM members WHERE conversation_id = $1 AND user_id = $2 "
        "AND left_at IS NULL FOR UPDATE",
        cid,
        user_id,
    )
    if row is None:
        if await conn.fetchval("SELECT 1 FROM conversations WHERE id = $1", cid) is None:
            raise NotFound("no such conversation")
        raise NotFound("not a member of this conversation")
    last_seq = await conn.fetchval("SELECT last_seq FROM conversations WHERE id = $1", cid)
    target = min(seq, last_seq)
    if target <= row["read_seq"]:
        return ReadState(cid, user_id, row["read_seq"], row["read_at"], row["unread_count"], False)
    if target >= last_seq:
        unread = 0
    else:
        unread = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1 AND seq > $2 AND NOT deleted "
            "AND sender_id <> $3",
            cid,
            target,
            user_id,
        )
    await conn.execute(
        "UPDATE members SET read_seq = $3, read_at = $4, unread_count = $5 WHERE conversation_id = $1 AND user_id = $2",
        cid,
        user_id,
        target,
        now,
        unread,
    )
    return ReadState(cid, user_id, target, now, unread, True)


# -- notifications ------------------------------------------------------------------------------


async def _insert_notifications(
    conn: _Conn, items: Sequence[NewNotification], now: datetime
) -> list[tuple[NotificationRecord, bool]]:
    users = sorted({i.user_id for i in items})
    # Lock every counter in one order (creating missing ones), so concurrent inserts wait, not deadlock.
    counters = await conn.fetch(
        "INSERT INTO notification_counters (user_id) SELECT u FROM unnest($1::text[]) AS u "
        "ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id RETURNING user_id, last_seq",
        users,
    )
    last_seq = {r["user_id"]: r["last_seq"] for r in counters}
    keyed = [(i.user_id, i.dedupe_key) for i in items if i.dedupe_key is not None]
    existing: dict[tuple[str, str], NotificationRecord] = {}
    if keyed:
        rows = await conn.fetch(
            f"SELECT {_NOTE_COLS} FROM notifications WHERE (user_id, dedupe_key) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))",
            [k[0] for k in keyed],
            [k[1] for k in keyed],
        )
        existing = {(r["user_id"], r["dedupe_key"]): _notification(r) for r in rows}
    out: list[tuple[NotificationRecord, bool]] = []
    new: list[NotificationRecord] = []
    added: dict[str, int] = {}
    for item in items:
        if item.dedupe_key is not None and (item.user_id, item.dedupe_key) in existing:
            out.append((existing[(item.user_id, item.dedupe_key)], False))
            continue
        last_seq[item.user_id] += 1
        added[item.user_id] = added.get(item.user_id, 0) + 1
        record = NotificationRecord(
            id=new_id("n"),
            user_id=item.user_id,
            seq=last_seq[item.user_id],
            type=item.type,
            title=item.title,
            body=item.body,
            data=dict(item.data),
            priority=item.priority,
            group_key=item.group_key,
            dedupe_key=item.dedupe_key,
            created_at=now,
        )
        if item.dedupe_key is not None:
            existing[(item.user_id, item.dedupe_key)] = record
        new.append(record)
        out.append((record, True))
    if new:
        await conn.execute(
            f"INSERT INTO notifications ({_NOTE_COLS}) "
            "SELECT id, user_id, seq, type, title, body, data::jsonb, priority, group_key, dedupe_key, $11, NULL "
            "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], "
            "$8::text[], $9::text[], $10::text[]) "
            "AS n(id, user_id, seq, type, title, body, data, priority, group_key, dedupe_key)",
            [n.id for n in new],
            [n.user_id for n in new],
            [n.seq for n in new],
            [n.type for n in new],
            [n.title for n in new],
            [n.body for n in new],
            [dumps(n.data) for n in new],
            [n.priority for n in new],
            [n.group_key for n in new],
            [n.dedupe_key for n in new],
            now,
        )
        await conn.execute(
            "UPDATE notification_counters c SET last_seq = u.last_seq, unread_count = c.unread_count + u.added "
            "FROM unnest($1::text[], $2::bigint[], $3::int[]) AS u(user_id, last_seq, added) "
            "WHERE c.user_id = u.user_id",
            list(added),
            [last_seq[u] for u in added],
            list(added.values()),
        )
    return out


async def _lock_counter(conn: _Conn, user_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT last_seq, unread_count FROM notification_counters WHERE user_id = $1 FOR UPDATE", user_id
    )


async def _counter_add(conn: _Conn, user_id: str, delta: int) -> int:
    value = await conn.fetchval(
        "UPDATE notification_counters SET unread_count = GREATEST(unread_count + $2, 0) WHERE user_id = $1 "
        "RETURNING unread_count",
        user_id,
        delta,
    )
    return 0 if value is None else int(value)


async def _mark_notifications_read(conn: _Conn, user_id: str, ids: Sequence[str], now: datetime) -> int:
    if await _lock_counter(conn, user_id) is None:
        return 0
    status = await conn.execute(
        "UPDATE notifications SET read_at = $3 WHERE user_id = $1 AND id = ANY($2::text[]) AND read_at IS NULL",
        user_id,
        list(ids),
        now,
    )
    return await _counter_add(conn, user_id, -int(status.split()[-1]))


async def _mark_all_notifications_read(conn: _Conn, user_id: str, now: datetime) -> tuple[int, int]:
    counter = await _lock_counter(conn, user_id)
    if counter is None:
        return 0, 0
    await conn.execute(
        "UPDATE notifications SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL AND seq <= $3",
        user_id,
        now,
        counter["last_seq"],
    )
    await conn.execute("UPDATE notification_counters SET unread_count = 0 WHERE user_id = $1", user_id)
    return int(counter["last_seq"]), 0


async def _delete_notifications(conn: _Conn, user_id: str, ids: Sequence[str]) -> int:
    if await _lock_counter(conn, user_id) is None:
        return 0
    unread = await conn.fetchval(
        "WITH gone AS (DELETE FROM notifications WHERE user_id = $1 AND id = ANY($2::text[]) RETURNING read_at) "
        "SELECT count(*) FROM gone WHERE read_at IS NULL",
        user_id,
        list(ids),
    )
    return await _counter_add(conn, user_id, -int(unread))


async def _list_notifications(
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
    sql = f"SELECT {_NOTE_COLS} FROM notifications WHERE user_id = $1"
    args: list[Any] = [user_id]
    if bound is not None:
        args.append(bound)
        sql += f" AND seq {'>' if ascending else '<'} ${len(args)}"
    if unread_only:
        sql += " AND read_at IS NULL"
    args.append(limit + 1)
    sql += f" ORDER BY seq{'' if ascending else ' DESC'} LIMIT ${len(args)}"
    rows = await conn.fetch(sql, *args)
    page = [_notification(r) for r in rows[:limit]]
    nxt = encode_cursor("a" if ascending else "d", page[-1].seq) if len(rows) > limit else None
    return page, nxt


# -- devices ------------------------------------------------------------------------------------


async def _devices(conn: _Conn, rows: Sequence[Any]) -> list[DeviceRecord]:
    if not rows:
        return []
    topics: dict[str, list[str]] = {}
    for r in await conn.fetch(
        "SELECT token, topic FROM device_topics WHERE token = ANY($1::text[]) ORDER BY topic",
        [r["token"] for r in rows],
    ):
        topics.setdefault(r["token"], []).append(r["topic"])
    return [
        DeviceRecord(
            token=r["token"],
            user_id=r["user_id"],
            platform=r["platform"],
            app_version=r["app_version"],
            active=r["active"],
            last_seen_at=r["last_seen_at"],
            topics=tuple(topics.get(r["token"], ())),
            created_at=r["created_at"],
        )
        for r in rows
    ]


async def _get_device(conn: _Conn, token: str) -> DeviceRecord | None:
    found = await _devices(conn, await conn.fetch(f"SELECT {_DEVICE_COLS} FROM devices WHERE token = $1", token))
    return found[0] if found else None


async def _register_device(
    conn: _Conn, user_id: str, token: str, platform: str, app_version: str, now: datetime
) -> DeviceRecord:
    owner = await conn.fetchval("SELECT user_id FROM devices WHERE token = $1 FOR UPDATE", token)
    if owner is not None and owner != user_id:
        await conn.execute("DELETE FROM devices WHERE token = $1", token)
        await conn.execute("DELETE FROM device_topics WHERE token = $1", token)
        log.info("push token moved from user %s to user %s", owner, user_id)
    await conn.execute(
        f"INSERT INTO devices ({_DEVICE_COLS}) VALUES ($1, $2, $3, $4, true, $5, $5) "
        "ON CONFLICT (token) DO UPDATE SET platform = excluded.platform, app_version = excluded.app_version, "
        "active = true, last_seen_at = excluded.last_seen_at",
        token,
        user_id,
        platform,
        app_version,
        now,
    )
    device = await _get_device(conn, token)
    assert device is not None
    return device


async def _change_topics(conn: _Conn, token: str, topics: Sequence[str], add: bool) -> DeviceRecord:
    if await conn.fetchval("SELECT 1 FROM devices WHERE token = $1 FOR UPDATE", token) is None:
        raise NotFound("no such device token")
    if add:
        await conn.execute(
            "INSERT INTO device_topics (token, topic) SELECT $1, t FROM unnest($2::text[]) AS t "
            "ON CONFLICT DO NOTHING",
            token,
            list(topics),
        )
    else:
        await conn.execute("DELETE FROM device_topics WHERE token = $1 AND topic = ANY($2::text[])", token, list(topics))
    device = await _get_device(conn, token)
    assert device is not None
    return device


# -- jobs ---------------------------------------------------------------------------------------

_ENQUEUE: Final = (
    f"WITH ins AS (INSERT INTO jobs (id, queue, kind, payload, priority, status, attempts, max_attempts, run_at, "
    f"dedupe_key, created_at) VALUES ($1, $2, $3, $4::jsonb, $5, 'queued', 0, $6, $7, $8, $9) "
    f"ON CONFLICT (dedupe_key) DO NOTHING RETURNING {_JOB_COLS}) "
    f"SELECT ins.*, pg_notify('{JOBS_CHANNEL}', ins.queue) FROM ins"
)


async def _enqueue(
    conn: _Conn,
    queue: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
    run_at: datetime,
    priority: int,
    max_attempts: int,
    dedupe_key: str | None,
) -> tuple[JobRecord, bool]:
    for _ in range(_RETRIES):
        row = await conn.fetchrow(
            _ENQUEUE, new_id("j"), queue, kind, payload, priority, max_attempts, run_at, dedupe_key, now
        )
        if row is not None:
            return _job(row), True
        row = await conn.fetchrow(f"SELECT {_JOB_COLS} FROM jobs WHERE dedupe_key = $1", dedupe_key)
        if row is not None:
            return _job(row), False
        # The job holding the key was deleted in between: try again.
    raise Unavailable("could not enqueue the job: its dedupe key keeps changing hands")


async def _claim(
    conn: _Conn, queue: str, limit: int, owner: str, expires: datetime, now: datetime
) -> list[JobRecord]:
    rows = await conn.fetch(
        "WITH picked AS ("
        " SELECT n FROM jobs WHERE queue = $1 AND ((status = 'queued' AND run_at <= $2) "
        " OR (status = 'running' AND lease_expires_at <= $2)) "
        " ORDER BY priority DESC, run_at, n LIMIT $3 FOR UPDATE SKIP LOCKED) "
        "UPDATE jobs j SET status = 'running', lease_owner = $4, lease_expires_at = $5, attempts = j.attempts + 1 "
        f"FROM picked WHERE j.n = picked.n RETURNING j.n, {', '.join('j.' + c for c in _JOB_COLS.split(', '))}",
        queue,
        now,
        limit,
        owner,
        expires,
    )
    ordered = sorted(rows, key=lambda r: (-r["priority"], r["run_at"], r["n"]))
    return [_job(r) for r in ordered]


async def _fail(
    conn: _Conn, job_id: str, owner: str, error: str, now: datetime, retry_at: datetime | None, final_status: str
) -> JobRecord | None:
    if retry_at is not None:
        row = await conn.fetchrow(
            f"WITH upd AS (UPDATE jobs SET status = 'queued', run_at = $3, last_error = $4, lease_owner = NULL, "
            f"lease_expires_at = NULL WHERE id = $1 AND status = 'running' AND lease_owner = $2 "
            f"RETURNING {_JOB_COLS}) SELECT upd.*, pg_notify('{JOBS_CHANNEL}', upd.queue) FROM upd",
            job_id,
            owner,
            retry_at,
            error,
        )
    else:
        row = await conn.fetchrow(
            f"UPDATE jobs SET status = $3, finished_at = $4, last_error = $5, lease_expires_at = NULL "
            f"WHERE id = $1 AND status = 'running' AND lease_owner = $2 RETURNING {_JOB_COLS}",
            job_id,
            owner,
            final_status,
            now,
            error,
        )
    return None if row is None else _job(row)


async def _get_job(conn: _Conn, job_id: str) -> JobRecord | None:
    row = await conn.fetchrow(f"SELECT {_JOB_COLS} FROM jobs WHERE id = $1", job_id)
    return None if row is None else _job(row)


async def _list_jobs(
    conn: _Conn, status: str | None, queue: str | None, kind: str | None, cursor: str | None, limit: int
) -> tuple[list[JobRecord], str | None]:
    sql = f"SELECT n, {_JOB_COLS} FROM jobs WHERE true"
    args: list[Any] = []
    for column, value in (("status", status), ("queue", queue), ("kind", kind)):
        if value is not None:
            args.append(value)
            sql += f" AND {column} = ${len(args)}"
    if cursor is not None:
        (n,) = decode_cursor(cursor, (int,))
        args.append(n)
        sql += f" AND n < ${len(args)}"
    args.append(limit + 1)
    sql += f" ORDER BY n DESC LIMIT ${len(args)}"
    rows = await conn.fetch(sql, *args)
    page = rows[:limit]
    nxt = encode_cursor(page[-1]["n"]) if len(rows) > limit else None
    return [_job(r) for r in page], nxt


async def _retry(conn: _Conn, job_id: str, now: datetime) -> JobRecord:
    row = await conn.fetchrow("SELECT status FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    if row is None:
        raise NotFound("no such job")
    if row["status"] not in ("dead", "failed", "cancelled"):
        raise Conflict(f"only a dead, failed or cancelled job can be retried; this one is {row['status']}")
    updated = await conn.fetchrow(
        f"WITH upd AS (UPDATE jobs SET status = 'queued', attempts = 0, run_at = $2, finished_at = NULL, "
        f"lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 RETURNING {_JOB_COLS}) "
        f"SELECT upd.*, pg_notify('{JOBS_CHANNEL}', upd.queue) FROM upd",
        job_id,
        now,
    )
    return _job(updated)


async def _cancel(conn: _Conn, job_id: str, now: datetime) -> JobRecord:
    row = await conn.fetchrow(
        f"UPDATE jobs SET status = 'cancelled', finished_at = $2 WHERE id = $1 AND status = 'queued' "
        f"RETURNING {_JOB_COLS}",
        job_id,
        now,
    )
    if row is not None:
        return _job(row)
    status = await conn.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    if status is None:
        raise NotFound("no such job")
    raise Conflict(f"only a queued job can be cancelled; this one is {status}")


async def _cancel_by_prefix(conn: _Conn, prefix: str, now: datetime) -> int:
    upper = _prefix_upper(prefix)
    if upper is None:
        status = await conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = $1 WHERE status = 'queued' AND dedupe_key >= $2",
            now,
            prefix,
        )
    else:
        status = await conn.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = $1 WHERE status = 'queued' "
            "AND dedupe_key >= $2 AND dedupe_key < $3",
            now,
            prefix,
            upper,
        )
    return int(status.split()[-1])


def _count(status: str) -> int:
    return int(status.split()[-1])


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


async def _migrate(conn: _Conn, apply: bool, now: datetime) -> list[str]:
    migrations = load_migrations("postgres")
    async with conn.transaction():
        # Several nodes starting at once: one migrates, the others wait and find nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") if exists else 0
        pending = pending_migrations(migrations, current, apply=apply)
        if pending and not exists:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL)"
            )
        for m in pending:
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)", m.version, m.name, now
            )
    return [m.name for m in pending]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


async def _init_connection(conn: _Conn) -> None:
    await conn.set_type_codec("jsonb", encoder=dumps, decoder=loads, schema="pg_catalog")


async def _keep_session(conn: _Conn) -> None:
    """Reset nothing when a connection goes back to the pool.

    The store never changes session state on pooled connections (no SET, no
    LISTEN, only transaction-scoped locks), and asyncpg still rolls back an
    unfinished transaction; skipping the default reset query saves a round
    trip on every call.
    """


class PostgresStore:
    """The PostgreSQL store (see the module docstring).

    Args:
        config: ``store`` settings: DSN, pool size, timeouts, apply_migrations.
        clock: wall time, only for the ``applied_at`` of migrations.
        dsn: overrides ``config.postgres_dsn``.
    """

    def __init__(self, config: StoreConfig, *, clock: WallClock, dsn: str | None = None) -> None:
        self.config = config
        self.clock = clock
        self.dsn = dsn or config.postgres_dsn
        self._pool: _Pool | None = None
        self._loop: Any = None  # the trio-asyncio loop, found by run()
        self._listened = False
        self._append_lanes: list[trio.MemorySendChannel[_Append]] = []
        self._jobs_event = trio.Event()
        cfg = config
        # A whole call: a connection (maybe a new one) and a few statements.
        self._call_timeout_s = cfg.connect_timeout_s + 2 * cfg.statement_timeout_s

    # -- the bridge ------------------------------------------------------------------------------

    async def _aio(self, fn: Callable[..., Awaitable[_T]], *args: Any, timeout_s: float | None) -> _T:
        """Run an asyncio coroutine function once across the bridge, translating connection failures.

        The loop is the one ``run`` found, so any Trio task may call the store;
        before ``run`` (``migrate``) it is the calling task's.
        """
        loop = self._loop if self._loop is not None else _require_loop()
        try:
            if timeout_s is None:
                result: _T = await trio_asyncio.aio_as_trio(fn, loop=loop)(*args)
                return result
            with trio.fail_after(timeout_s):
                result = await trio_asyncio.aio_as_trio(fn, loop=loop)(*args)
                return result
        except trio.TooSlowError:
            raise Unavailable(f"PostgreSQL did not answer within {timeout_s:g} s") from None
        except _UNAVAILABLE_ERRORS as exc:
            raise Unavailable(f"PostgreSQL is unavailable: {exc or type(exc).__name__}") from exc

    async def _in_pool(
        self, pool: _Pool, fn: Callable[..., Awaitable[_T]], args: tuple[Any, ...], tx: bool
    ) -> _T:
        """asyncio side: acquire, run ``fn`` (in a transaction if ``tx``), release."""
        try:
            for attempt in range(1, _RETRIES + 1):
                try:
                    async with pool.acquire(timeout=self.config.connect_timeout_s) as conn:
                        if not tx:
                            return await fn(conn, *args)
                        try:
                            async with conn.transaction():
                                return await fn(conn, *args)
                        except _Rollback as rb:
                            return rb.value  # type: ignore[no-any-return]
                except _RETRY_ERRORS:
                    if attempt == _RETRIES:
                        raise
                    log.info("store: transaction retried after a deadlock or serialization failure")
            raise AssertionError("unreachable")
        except _UNAVAILABLE_ERRORS:
            # The server may have restarted: every pooled connection may be dead. Replace them all
            # on their next use, so that the first calls after it is back succeed.
            await pool.expire_connections()
            raise

    async def _call(
        self, fn: Callable[..., Awaitable[_T]], *args: Any, tx: bool = True, read: bool = False
    ) -> _T:
        pool = self._pool
        if pool is None:
            raise Unavailable("the store is not running")
        try:
            return await self._aio(self._in_pool, pool, fn, args, tx, timeout_s=self._call_timeout_s)
        except Unavailable:
            if not read:
                raise
        # A read is safe to repeat once, on a fresh connection.
        return await self._aio(self._in_pool, pool, fn, args, tx, timeout_s=self._call_timeout_s)

    # -- lifecycle -------------------------------------------------------------------------------

    async def _connect_one(self) -> _Conn:
        return await asyncpg.connect(
            self.dsn,
            timeout=self.config.connect_timeout_s,
            command_timeout=self.config.statement_timeout_s + 1,
            server_settings=self._server_settings(),
        )

    def _server_settings(self) -> dict[str, str]:
        return {
            "application_name": "realtimed",
            "statement_timeout": str(int(self.config.statement_timeout_s * 1000)),
            "timezone": "UTC",
        }

    async def _migrate_aio(self, apply: bool) -> list[str]:
        conn = await self._connect_one()
        try:
            return await _migrate(conn, apply, utc(self.clock.now()))
        finally:
            await conn.close(timeout=_CLOSE_TIMEOUT_S)

    async def migrate(self) -> list[str]:
        """Apply pending migrations now (the ``realtimed migrate`` command); returns their names."""
        applied = await self._aio(self._migrate_aio, True, timeout_s=None)
        for name in applied:
            log.info("store: applied migration %s", name)
        return applied

    async def _create_pool(self) -> _Pool:
        return await asyncpg.create_pool(
            self.dsn,
            min_size=self.config.pool_min,
            max_size=self.config.pool_max,
            timeout=self.config.connect_timeout_s,
            command_timeout=self.config.statement_timeout_s + 1,
            server_settings=self._server_settings(),
            statement_cache_size=256,
            init=_init_connection,
            reset=_keep_session,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (see the module docstring).

        Raises:
            RuntimeError: no trio-asyncio loop is running.
            SchemaVersionError: the schema is newer, or migrations are pending
                with ``store.apply_migrations`` off.
            Unavailable: the server cannot be reached at start.
        """
        self._loop = _require_loop()
        try:
            applied = await self._aio(self._migrate_aio, self.config.apply_migrations, timeout_s=None)
            for name in applied:
                log.info("store: applied migration %s", name)
            self._pool = await self._aio(self._create_pool, timeout_s=self._call_timeout_s)
            log.info("store: PostgreSQL ready (pool %d to %d)", self.config.pool_min, self.config.pool_max)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen_forever)
                lanes = []
                for _ in range(max(1, self.config.pool_max // 4)):
                    send, recv = trio.open_memory_channel[_Append](_APPEND_GROUP_MAX)
                    nursery.start_soon(self._append_lane, recv)
                    lanes.append(send)
                self._append_lanes = lanes
                task_status.started()
        finally:
            self._append_lanes = []
            pool, self._pool = self._pool, None
            with trio.CancelScope(shield=True):
                await self._close_pool(pool)
            self._loop = None
            if pool is not None:
                log.info("store: PostgreSQL closed")

    async def _close_pool(self, pool: _Pool | None) -> None:
        if pool is None:
            return

        async def close() -> None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
            except _CLOSE_ERRORS:
                pool.terminate()

        try:
            await trio_asyncio.aio_as_trio(close, loop=self._loop)()
        except Exception as exc:  # closing is best effort
            log.warning("store: closing the PostgreSQL pool failed: %s", exc)

    async def ping(self) -> None:
        await self._call(lambda conn: conn.fetchval("SELECT 1"), tx=False, read=True)

    # -- grouped appends -------------------------------------------------------------------------

    async def _append_lane(self, recv: trio.MemoryReceiveChannel[_Append]) -> None:
        """Send one lane's waiting appends to PostgreSQL as groups, one group at a time.

        A conversation always uses the same lane (``append_message``), so the
        appends to one conversation queue up here while a group is in flight and
        go together in the next, and lanes never wait for each other's
        conversation locks. Under load one round trip and one commit carry many
        appends; alone, an append goes at once.
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

    async def _send_group(self, group: list[_Append]) -> None:
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
                log.warning("store: a group of %d appends failed (%s); sending them one by one", len(group), exc)
                for req in group:
                    await self._send_group([req])
                return
            log.exception("store: an append failed")
            group[0].result = outcome.Error(exc)
        else:
            for req, result in zip(group, results, strict=True):
                req.result = result
            if any(req.jobs for req in group):
                self._wake_jobs()
        finally:
            for req in group:
                if req.result is None:
                    req.result = outcome.Error(Unavailable("the store is shutting down"))
                req.done.set()

    # -- job wake-ups ----------------------------------------------------------------------------

    def _wake_jobs(self) -> None:
        self._jobs_event.set()
        self._jobs_event = trio.Event()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        # Called on the asyncio side, which runs inside Trio's thread under trio-asyncio.
        self._wake_jobs()

    async def _listen_once(self) -> None:
        """asyncio side: LISTEN on one connection until it breaks."""
        conn = await self._connect_one()
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(JOBS_CHANNEL, self._on_notify)
            if self._listened:
                # Back after a break: jobs enqueued meanwhile on other nodes sent no NOTIFY that
                # reached us. Wake the waiters once so that they look now.
                self._wake_jobs()
            self._listened = True
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), _LISTEN_KEEPALIVE_S)
                except TimeoutError:
                    await conn.fetchval("SELECT 1", timeout=self.config.connect_timeout_s)
        finally:
            conn.terminate()

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            started = trio.current_time()
            try:
                await self._aio(self._listen_once, timeout_s=None)
            except Unavailable as exc:
                log.warning("store: the LISTEN connection failed (%s); reconnecting in %.1f s", exc, delay)
            else:
                log.warning("store: the LISTEN connection closed; reconnecting in %.1f s", delay)
            if trio.current_time() - started > 60:
                delay = 0.5
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def wait_for_jobs(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            await self._jobs_event.wait()

    # -- conversations ---------------------------------------------------------------------------

    async def open_direct(self, *, user_id: str, other_id: str, now: datetime) -> tuple[ConversationRecord, bool]:
        return await self._call(_open_direct, user_id, other_id, utc(now))

    async def create_group(
        self, *, member_ids: Sequence[str], now: datetime, title: str | None = None, owner_id: str | None = None
    ) -> ConversationRecord:
        return await self._call(_create_group, list(member_ids), utc(now), title, owner_id)

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        return await self._call(_load_conversation, conversation_id, tx=False, read=True)

    async def get_member(self, conversation_id: str, user_id: str) -> MemberRecord | None:
        return await self._call(_get_member, conversation_id, user_id, tx=False, read=True)

    async def add_members(
        self, *, conversation_id: str, user_ids: Sequence[str], now: datetime, role: str = ROLE_MEMBER
    ) -> ConversationRecord:
        return await self._call(_add_members, conversation_id, list(user_ids), utc(now), role)

    async def leave_conversation(self, *, conversation_id: str, user_id: str, now: datetime) -> ConversationRecord:
        return await self._call(_leave, conversation_id, user_id, utc(now))

    async def set_title(self, *, conversation_id: str, title: str | None, now: datetime) -> ConversationRecord:
        return await self._call(_set_title, conversation_id, title, utc(now))

    async def set_muted(self, *, conversation_id: str, user_id: str, muted: bool) -> MemberRecord:
        return await self._call(_set_muted, conversation_id, user_id, muted, tx=False)

    async def list_conversations(
        self, *, user_id: str, cursor: str | None = None, limit: int = 20
    ) -> tuple[list[ConversationRecord], str | None]:
        return await self._call(_list_conversations, user_id, cursor, clamp_limit(limit), tx=False, read=True)

    async def unread_total(self, user_id: str, *, include_muted: bool = False) -> int:
        sql = "SELECT COALESCE(SUM(unread_count), 0) FROM members WHERE user_id = $1 AND left_at IS NULL"
        if not include_muted:
            sql += " AND NOT muted"
        return int(await self._call(lambda conn: conn.fetchval(sql, user_id), tx=False, read=True))

    async def set_contacts(self, *, user_id: str, contact_ids: Sequence[str]) -> None:
        async def run(conn: _Conn) -> None:
            await conn.execute("DELETE FROM contacts WHERE user_id = $1", user_id)
            await conn.execute(
                "INSERT INTO contacts (user_id, contact_id) SELECT $1, c FROM unnest($2::text[]) AS c",
                user_id,
                [c for c in dict.fromkeys(contact_ids) if c != user_id],
            )

        await self._call(run)

    async def is_contact(self, user_id: str, other_id: str) -> bool:
        if user_id == other_id:
            return True
        sql = (
            "SELECT EXISTS (SELECT 1 FROM contacts WHERE (user_id = $1 AND contact_id = $2) "
            "OR (user_id = $2 AND contact_id = $1)) "
            "OR EXISTS (SELECT 1 FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
            "AND m2.user_id = $2 AND m2.left_at IS NULL WHERE m1.user_id = $1 AND m1.left_at IS NULL)"
        )
        return bool(await self._call(lambda conn: conn.fetchval(sql, user_id, other_id), tx=False, read=True))

    async def contact_ids(self, user_id: str) -> set[str]:
        sql = (
            "SELECT contact_id AS u FROM contacts WHERE user_id = $1 "
            "UNION SELECT user_id FROM contacts WHERE contact_id = $1 "
            "UNION SELECT m2.user_id FROM members m1 JOIN members m2 ON m2.conversation_id = m1.conversation_id "
            "AND m2.left_at IS NULL WHERE m1.user_id = $1 AND m1.left_at IS NULL"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False, read=True)
        return {r[0] for r in rows} - {user_id}

    async def block_user(self, *, user_id: str, blocked_id: str, now: datetime) -> bool:
        sql = (
            "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING RETURNING 1"
        )
        return await self._call(lambda conn: conn.fetchval(sql, user_id, blocked_id, utc(now)), tx=False) is not None

    async def unblock_user(self, *, user_id: str, blocked_id: str) -> bool:
        sql = "DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2"
        return _count(await self._call(lambda conn: conn.execute(sql, user_id, blocked_id), tx=False)) == 1

    async def is_blocked(self, *, user_id: str, by: str) -> bool:
        sql = "SELECT 1 FROM blocks WHERE user_id = $1 AND blocked_id = $2"
        return await self._call(lambda conn: conn.fetchval(sql, by, user_id), tx=False, read=True) is not None

    async def blocked_ids(self, user_id: str) -> set[str]:
        sql = "SELECT blocked_id FROM blocks WHERE user_id = $1"
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False, read=True)
        return {r[0] for r in rows}

    # -- bans ------------------------------------------------------------------------------------

    async def ban_user(self, *, user_id: str, until: datetime | None, now: datetime) -> BanRecord:
        at, end = utc(now), None if until is None else utc(until)

        async def run(conn: _Conn) -> None:
            await conn.execute("DELETE FROM bans WHERE banned_until <= $1", at)
            await conn.execute(
                "INSERT INTO bans (user_id, banned_until, created_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) "
                "DO UPDATE SET banned_until = excluded.banned_until, created_at = excluded.created_at",
                user_id,
                end,
                at,
            )

        await self._call(run)
        return BanRecord(user_id=user_id, until=until, created_at=now)

    async def active_ban(self, *, user_id: str, now: datetime) -> BanRecord | None:
        sql = (
            "SELECT banned_until, created_at FROM bans WHERE user_id = $1 "
            "AND (banned_until IS NULL OR banned_until > $2)"
        )
        row = await self._call(lambda conn: conn.fetchrow(sql, user_id, utc(now)), tx=False, read=True)
        return None if row is None else BanRecord(user_id=user_id, until=row[0], created_at=row[1])

    async def unban_user(self, *, user_id: str, now: datetime) -> bool:
        sql = "DELETE FROM bans WHERE user_id = $1 RETURNING banned_until"
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False)
        at = utc(now)
        return any(r[0] is None or r[0] > at for r in rows)

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
        req = _Append(
            conversation_id=conversation_id,
            sender_id=sender_id,
            client_id=client_id,
            body=body,
            now=utc(now),
            type=type,
            media_url=media_url,
            reply_to=reply_to,
            require_member=require_member,
            jobs=list(jobs),
        )
        lanes = self._append_lanes
        if not lanes:
            raise Unavailable("the store is not running")
        try:
            await lanes[hash(conversation_id) % len(lanes)].send(req)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the store is shutting down") from None
        await req.done.wait()
        assert req.result is not None
        return req.result.unwrap()

    async def get_message(self, message_id: str) -> MessageRecord | None:
        sql = f"SELECT {_MSG_COLS} FROM messages WHERE id = $1"
        row = await self._call(lambda conn: conn.fetchrow(sql, message_id), tx=False, read=True)
        return None if row is None else _message(row)

    async def edit_message(
        self, *, message_id: str, body: str, now: datetime, sender_id: str | None = None
    ) -> MessageRecord:
        check_text("body", body)
        return await self._call(_edit, message_id, body, utc(now), sender_id)

    async def delete_message(
        self, *, message_id: str, now: datetime, sender_id: str | None = None
    ) -> tuple[MessageRecord, bool]:
        result = await self._call(_delete, message_id, utc(now), sender_id)
        if isinstance(result, MessageRecord):  # rolled back: it was deleted meanwhile
            return result, False
        return result

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
        return await self._call(
            _history, conversation_id, before_seq, after_seq, changed_since, clamp_limit(limit), tx=False, read=True
        )

    async def mark_read(self, *, conversation_id: str, user_id: str, seq: int, now: datetime) -> ReadState:
        return await self._call(_mark_read, conversation_id, user_id, seq, utc(now))

    # -- notifications ---------------------------------------------------------------------------

    async def insert_notifications(
        self, *, items: Sequence[NewNotification], now: datetime
    ) -> list[tuple[NotificationRecord, bool]]:
        if not items:
            return []
        return await self._call(_insert_notifications, list(items), utc(now))

    async def list_notifications(
        self,
        *,
        user_id: str,
        cursor: str | None = None,
        after_seq: int | None = None,
        unread_only: bool = False,
        limit: int = 20,
    ) -> tuple[list[NotificationRecord], str | None]:
        return await self._call(
            _list_notifications, user_id, cursor, after_seq, unread_only, clamp_limit(limit), tx=False, read=True
        )

    async def mark_notifications_read(self, *, user_id: str, ids: Sequence[str], now: datetime) -> int:
        return await self._call(_mark_notifications_read, user_id, list(ids), utc(now))

    async def mark_all_notifications_read(self, *, user_id: str, now: datetime) -> tuple[int, int]:
        return await self._call(_mark_all_notifications_read, user_id, utc(now))

    async def delete_notifications(self, *, user_id: str, ids: Sequence[str]) -> int:
        return await self._call(_delete_notifications, user_id, list(ids))

    async def notification_unread_count(self, user_id: str) -> int:
        sql = "SELECT unread_count FROM notification_counters WHERE user_id = $1"
        value = await self._call(lambda conn: conn.fetchval(sql, user_id), tx=False, read=True)
        return 0 if value is None else int(value)

    # -- preferences, devices, last seen ---------------------------------------------------------

    async def get_preferences(self, user_id: str) -> list[NotificationPreference]:
        sql = (
            "SELECT type, channel, enabled FROM notification_channel_preferences WHERE user_id = $1 "
            "ORDER BY type, channel"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, user_id), tx=False, read=True)
        by_type: dict[str, dict[str, bool]] = {}
        for r in rows:
            by_type.setdefault(r["type"], {})[r["channel"]] = r["enabled"]
        return [NotificationPreference(user_id, ntype, channels) for ntype, channels in by_type.items()]

    async def get_preferences_for(self, *, user_ids: Sequence[str], type: str) -> dict[str, NotificationPreference]:
        sql = (
            "SELECT user_id, channel, enabled FROM notification_channel_preferences WHERE type = $1 "
            "AND user_id = ANY($2::text[])"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, type, list(user_ids)), tx=False, read=True)
        found: dict[str, dict[str, bool]] = {}
        for r in rows:
            found.setdefault(r["user_id"], {})[r["channel"]] = r["enabled"]
        return {uid: NotificationPreference(uid, type, found.get(uid, {})) for uid in user_ids}

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
        upsert = (
            "INSERT INTO notification_channel_preferences (user_id, type, channel, enabled) "
            "SELECT $1, $2, c, e FROM unnest($3::text[], $4::boolean[]) AS s (c, e) "
            "ON CONFLICT (user_id, type, channel) DO UPDATE SET enabled = excluded.enabled"
        )
        select = "SELECT channel, enabled FROM notification_channel_preferences WHERE user_id = $1 AND type = $2"

        async def run(conn: _Conn) -> list[Any]:
            if settings:
                await conn.execute(upsert, user_id, type, list(settings), list(settings.values()))
            rows: list[Any] = await conn.fetch(select, user_id, type)
            return rows

        rows = await self._call(run)
        return NotificationPreference(user_id, type, {r["channel"]: r["enabled"] for r in rows})

    async def get_user_settings(self, user_id: str) -> UserSettings:
        return (await self.get_user_settings_many([user_id]))[user_id]

    async def get_user_settings_many(self, user_ids: Sequence[str]) -> dict[str, UserSettings]:
        sql = (
            "SELECT user_id, quiet_hours_start, quiet_hours_end, time_zone FROM user_settings "
            "WHERE user_id = ANY($1::text[])"
        )
        rows = await self._call(lambda conn: conn.fetch(sql, list(user_ids)), tx=False, read=True)
        out = {uid: UserSettings(uid) for uid in user_ids}
        for r in rows:
            out[r["user_id"]] = UserSettings(r["user_id"], r["quiet_hours_start"], r["quiet_hours_end"], r["time_zone"])
        return out

    async def set_user_settings(
        self, *, user_id: str, quiet_hours_start: str | None, quiet_hours_end: str | None, time_zone: str
    ) -> UserSettings:
        check_settings(quiet_hours_start, quiet_hours_end, time_zone)
        sql = (
            "INSERT INTO user_settings (user_id, quiet_hours_start, quiet_hours_end, time_zone) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET "
            "quiet_hours_start = excluded.quiet_hours_start, quiet_hours_end = excluded.quiet_hours_end, "
            "time_zone = excluded.time_zone"
        )
        await self._call(
            lambda conn: conn.execute(sql, user_id, quiet_hours_start, quiet_hours_end, time_zone), tx=False
        )
        return UserSettings(user_id, quiet_hours_start, quiet_hours_end, time_zone)

    async def register_device(
        self, *, user_id: str, token: str, platform: str, now: datetime, app_version: str = ""
    ) -> DeviceRecord:
        check_platform(platform)
        return await self._call(_register_device, user_id, token, platform, app_version, utc(now))

    async def unregister_device(self, *, token: str, user_id: str | None = None) -> bool:
        async def run(conn: _Conn) -> bool:
            if user_id is None:
                status = await conn.execute("DELETE FROM devices WHERE token = $1", token)
            else:
                status = await conn.execute("DELETE FROM devices WHERE token = $1 AND user_id = $2", token, user_id)
            if _count(status):
                await conn.execute("DELETE FROM device_topics WHERE token = $1", token)
            return _count(status) > 0

        return await self._call(run)

    async def get_device(self, token: str) -> DeviceRecord | None:
        return await self._call(_get_device, token, tx=False, read=True)

    async def list_devices(self, user_id: str, *, active_only: bool = True) -> list[DeviceRecord]:
        sql = f"SELECT {_DEVICE_COLS} FROM devices WHERE user_id = $1"
        if active_only:
            sql += " AND active"
        sql += " ORDER BY created_at, token"

        async def run(conn: _Conn) -> list[DeviceRecord]:
            return await _devices(conn, await conn.fetch(sql, user_id))

        return await self._call(run, tx=False, read=True)

    async def deactivate_device(self, *, token: str) -> bool:
        sql = "UPDATE devices SET active = false WHERE token = $1 AND active"
        return _count(await self._call(lambda conn: conn.execute(sql, token), tx=False)) == 1

    async def touch_device(self, *, token: str, now: datetime) -> bool:
        sql = "UPDATE devices SET last_seen_at = GREATEST(last_seen_at, $2) WHERE token = $1"
        return _count(await self._call(lambda conn: conn.execute(sql, token, utc(now)), tx=False)) == 1

    async def add_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        return await self._call(_change_topics, token, list(topics), True)

    async def remove_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        return await self._call(_change_topics, token, list(topics), False)

    async def topic_devices(self, topic: str) -> list[DeviceRecord]:
        sql = (
            "SELECT d.token, d.user_id, d.platform, d.app_version, d.active, d.last_seen_at, d.created_at "
            "FROM device_topics t JOIN devices d ON d.token = t.token WHERE t.topic = $1 AND d.active "
            "ORDER BY d.token"
        )

        async def run(conn: _Conn) -> list[DeviceRecord]:
            return await _devices(conn, await conn.fetch(sql, topic))

        return await self._call(run, tx=False, read=True)

    async def set_last_seen(self, *, user_id: str, at: datetime) -> None:
        sql = (
            "INSERT INTO last_seen (user_id, last_seen_at) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE "
            "SET last_seen_at = GREATEST(last_seen.last_seen_at, excluded.last_seen_at)"
        )
        await self._call(lambda conn: conn.execute(sql, user_id, utc(at)), tx=False)

    async def get_last_seen(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        sql = "SELECT user_id, last_seen_at FROM last_seen WHERE user_id = ANY($1::text[])"
        rows = await self._call(lambda conn: conn.fetch(sql, list(user_ids)), tx=False, read=True)
        return {r["user_id"]: r["last_seen_at"] for r in rows}

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
        job, created = await self._call(
            _enqueue,
            queue,
            kind,
            dict(payload),
            utc(now),
            utc(run_at if run_at is not None else now),
            priority,
            max_attempts,
            dedupe_key,
            tx=False,
        )
        if created:
            self._wake_jobs()
        return job, created

    async def claim_jobs(
        self, *, queue: str, limit: int, owner: str, lease_s: float, now: datetime
    ) -> list[JobRecord]:
        if limit <= 0:
            return []
        now = utc(now)
        return await self._call(_claim, queue, limit, owner, now + timedelta(seconds=lease_s), now, tx=False)

    async def renew_leases(
        self, *, job_ids: Sequence[str], owner: str, lease_s: float, now: datetime
    ) -> set[str]:
        if not job_ids:
            return set()
        sql = (
            "UPDATE jobs SET lease_expires_at = $3 WHERE status = 'running' AND lease_owner = $2 "
            "AND id = ANY($1::text[]) RETURNING id"
        )
        expires = utc(now) + timedelta(seconds=lease_s)
        rows = await self._call(lambda conn: conn.fetch(sql, list(job_ids), owner, expires), tx=False)
        return {r["id"] for r in rows}

    async def complete_job(self, *, job_id: str, owner: str, now: datetime) -> bool:
        sql = (
            "UPDATE jobs SET status = 'succeeded', finished_at = $3, lease_expires_at = NULL "
            "WHERE id = $1 AND status = 'running' AND lease_owner = $2"
        )
        return _count(await self._call(lambda conn: conn.execute(sql, job_id, owner, utc(now)), tx=False)) == 1

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
        record = await self._call(
            _fail, job_id, owner, error, utc(now), utc(retry_at) if retry_at else None, final_status, tx=False
        )
        if record is not None and retry_at is not None:
            self._wake_jobs()
        return record

    async def release_jobs(self, *, owner: str, job_ids: Sequence[str], now: datetime) -> None:
        if not job_ids:
            return
        sql = (
            "WITH upd AS (UPDATE jobs SET status = 'queued', attempts = GREATEST(attempts - 1, 0), run_at = $3, "
            "lease_owner = NULL, lease_expires_at = NULL WHERE status = 'running' AND lease_owner = $2 "
            "AND id = ANY($1::text[]) RETURNING queue) "
            f"SELECT count(*) FROM (SELECT pg_notify('{JOBS_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM upd) q) n"
        )
        await self._call(lambda conn: conn.fetchval(sql, list(job_ids), owner, utc(now)), tx=False)
        self._wake_jobs()

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._call(_get_job, job_id, tx=False, read=True)

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        kind: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[JobRecord], str | None]:
        return await self._call(_list_jobs, status, queue, kind, cursor, clamp_limit(limit), tx=False, read=True)

    async def retry_job(self, *, job_id: str, now: datetime) -> JobRecord:
        job = await self._call(_retry, job_id, utc(now))
        self._wake_jobs()
        return job

    async def cancel_job(self, *, job_id: str, now: datetime) -> JobRecord:
        return await self._call(_cancel, job_id, utc(now), tx=False)

    async def cancel_jobs_by_dedupe_prefix(self, *, prefix: str, now: datetime) -> int:
        return await self._call(_cancel_by_prefix, prefix, utc(now), tx=False)

    async def next_job_time(self, *, queues: Sequence[str]) -> datetime | None:
        sql = (
            "SELECT LEAST((SELECT min(run_at) FROM jobs WHERE status = 'queued' AND queue = ANY($1::text[])), "
            "(SELECT min(lease_expires_at) FROM jobs WHERE status = 'running' AND queue = ANY($1::text[])))"
        )
        value: datetime | None = await self._call(lambda conn: conn.fetchval(sql, list(queues)), tx=False, read=True)
        return value

    async def job_stats(self) -> list[tuple[str, str, int]]:
        sql = "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status ORDER BY kind, status"
        rows = await self._call(lambda conn: conn.fetch(sql), tx=False, read=True)
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def oldest_queued_job_age_s(self, now: datetime) -> float | None:
        now = utc(now)
        sql = "SELECT min(run_at) FROM jobs WHERE status = 'queued' AND run_at <= $1"
        oldest: datetime | None = await self._call(lambda conn: conn.fetchval(sql, now), tx=False, read=True)
        return None if oldest is None else (now - oldest).total_seconds()

    async def cron_claim_tick(self, *, name: str, tick: datetime) -> bool:
        sql = (
            "INSERT INTO cron_ticks (name, last_tick) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE "
            "SET last_tick = excluded.last_tick WHERE cron_ticks.last_tick < excluded.last_tick RETURNING 1"
        )
        return await self._call(lambda conn: conn.fetchval(sql, name, utc(tick)), tx=False) is not None

    async def cron_last_tick(self, *, name: str) -> datetime | None:
        sql = "SELECT last_tick FROM cron_ticks WHERE name = $1"
        tick: datetime | None = await self._call(lambda conn: conn.fetchval(sql, name), tx=False, read=True)
        return tick

    # -- retention -------------------------------------------------------------------------------

    async def _retention(self, sql: str, before: datetime) -> int:
        return _count(await self._call(lambda conn: conn.execute(sql, utc(before)), tx=False))

    async def delete_read_notifications(self, *, before: datetime) -> int:
        return await self._retention(
            "DELETE FROM notifications WHERE read_at IS NOT NULL AND read_at < $1", before
        )

    async def delete_finished_jobs(self, *, before: datetime) -> int:
        statuses = ", ".join(f"'{s}'" for s in FINISHED_JOB_STATUSES)
        return await self._retention(
            f"DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 AND status IN ({statuses})", before
        )

    async def purge_deleted_messages(self, *, before: datetime) -> int:
        return await self._retention(
            "UPDATE messages SET body = '', media_url = NULL, purged = true "
            "WHERE deleted AND NOT purged AND deleted_at < $1",
            before,
        )

    async def deactivate_stale_devices(self, *, before: datetime) -> int:
        return await self._retention(
            "UPDATE devices SET active = false WHERE active AND last_seen_at < $1", before
        )
