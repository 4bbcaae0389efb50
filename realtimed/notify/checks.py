"""Delivery checks: what a delivery queued for later verifies before it goes out.

A push (or a delivery on any other channel) may wait: quiet hours, a digest
window, a retry, a backlog. Meanwhile the user may have read what it is about.
Each queued delivery carries one check, a value of the ``DeliveryCheck`` union,
stored with the job as ``{"kind": ..., ...}``; when the job runs, the channel
asks ``still_wanted(store, check)``, which answers None (send it) or why not:

======================  ==============================================  ================================
check (``kind``)         about                                           not wanted when
======================  ==============================================  ================================
``NotificationCheck``    one inbox notification (``id``, ``seq``)        it was deleted (``deleted``) or read (``read``)
``MessageCheck``         one chat message (``conversation_id``, ``seq``)  the user left (``left``) or read past it (``read``)
``GroupCheck``           a digest of inbox notifications of one group    none of the group's in ``[since, until)`` is unread (``read``)
                         (``group_key``, ``since``, ``until``)
``ConversationCheck``    a digest of chat messages                       the user left or has nothing unread there (``read``)
======================  ==============================================  ================================

The stored shapes are those of earlier versions, so queued deliveries survive
an upgrade. A check of a kind this version does not know (from a newer node) is
dropped with a warning and the delivery goes out, as before.

This module imports nothing that imports a channel, so channels may use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, assert_never

import attrs

from realtimed.clock import iso
from realtimed.jobs.payload import PayloadError, field_path, req_int, req_str, req_time

if TYPE_CHECKING:
    from realtimed.store.base import Store

__all__ = [
    "ConversationCheck",
    "DeliveryCheck",
    "GroupCheck",
    "MessageCheck",
    "NotificationCheck",
    "count_unread_group",
    "decode_check",
    "encode_check",
    "still_wanted",
]

log = logging.getLogger(__name__)

# A digest counts the unread inbox newest first, at most this many pages of 100.
DIGEST_SCAN_PAGES: Final = 10


@attrs.frozen
class NotificationCheck:
    """One inbox notification is still there and unread."""

    user_id: str
    id: str
    seq: int


@attrs.frozen
class MessageCheck:
    """The user is still in the conversation and has not read up to ``seq``."""

    user_id: str
    conversation_id: str
    seq: int


@attrs.frozen
class GroupCheck:
    """Some inbox notification of ``group_key`` created in ``[since, until)`` is unread."""

    user_id: str
    group_key: str
    since: datetime
    until: datetime


@attrs.frozen
class ConversationCheck:
    """The user is still in the conversation and has unread messages there."""

    user_id: str
    conversation_id: str


DeliveryCheck = NotificationCheck | MessageCheck | GroupCheck | ConversationCheck
_KINDS: Final = ("notification", "message", "group", "conversation")


def encode_check(check: DeliveryCheck) -> dict[str, Any]:
    """The stored shape: ``{"kind": ..., "user_id": ..., ...}``."""
    match check:
        case NotificationCheck():
            return {"kind": "notification", "user_id": check.user_id, "id": check.id, "seq": check.seq}
        case MessageCheck():
            return {"kind": "message", "user_id": check.user_id, "conversation_id": check.conversation_id, "seq": check.seq}
        case GroupCheck():
            return {
                "kind": "group",
                "user_id": check.user_id,
                "group_key": check.group_key,
                "since": iso(check.since),
                "until": iso(check.until),
            }
        case ConversationCheck():
            return {"kind": "conversation", "user_id": check.user_id, "conversation_id": check.conversation_id}
        case _:
            assert_never(check)


def decode_check(data: Any, *, path: str = "check") -> DeliveryCheck | None:
    """A stored check; None for none, or for a kind this version does not know.

    Raises:
        PayloadError: a known kind with a missing or mistyped field, or a check that is not an object.
    """
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise PayloadError(path, "must be an object")
    kind = data.get("kind")
    if kind not in _KINDS:
        if not isinstance(kind, str):
            raise PayloadError(field_path(path, "kind"), f"must be one of {', '.join(_KINDS)}")
        log.warning("a delivery check of unknown kind %r is ignored", kind[:64])
        return None
    user_id = req_str(data, "user_id", prefix=path)
    if kind == "notification":
        return NotificationCheck(user_id, req_str(data, "id", prefix=path), req_int(data, "seq", prefix=path))
    if kind == "message":
        return MessageCheck(user_id, req_str(data, "conversation_id", prefix=path), req_int(data, "seq", prefix=path))
    if kind == "group":
        return GroupCheck(
            user_id,
            req_str(data, "group_key", prefix=path),
            req_time(data, "since", prefix=path),
            req_time(data, "until", prefix=path),
        )
    return ConversationCheck(user_id, req_str(data, "conversation_id", prefix=path))


async def still_wanted(store: Store, check: DeliveryCheck) -> str | None:
    """None if the delivery should go; else why not (``read``, ``deleted``, ``left``)."""
    match check:
        case NotificationCheck():
            records, _ = await store.list_notifications(user_id=check.user_id, after_seq=check.seq - 1, limit=1)
            if not records or records[0].id != check.id:
                return "deleted"
            return "read" if records[0].read_at is not None else None
        case MessageCheck():
            member = await store.get_member(check.conversation_id, check.user_id)
            if member is None or not member.active:
                return "left"
            return "read" if member.read_seq >= check.seq else None
        case GroupCheck():
            unread = await count_unread_group(
                store, user_id=check.user_id, group_key=check.group_key, since=check.since, until=check.until
            )
            return "read" if unread == 0 else None
        case ConversationCheck():
            member = await store.get_member(check.conversation_id, check.user_id)
            if member is None or not member.active or member.unread_count == 0:
                return "read"
            return None
        case _:
            assert_never(check)


async def count_unread_group(
    store: Store, *, user_id: str, group_key: str, since: datetime, until: datetime, now: datetime | None = None
) -> int:
    """Unread inbox notifications of one group created in ``[since, until)``, and
    not expired at ``now`` when given (walks the unread inbox newest first, at
    most 1,000 entries)."""
    count = 0
    cursor: str | None = None
    for _page in range(DIGEST_SCAN_PAGES):
        records, cursor = await store.list_notifications(
            user_id=user_id, cursor=cursor, unread_only=True, limit=100, now=now
        )
        for record in records:
            if record.created_at < since:
                return count
            if record.group_key == group_key and record.created_at < until:
                count += 1
        if cursor is None:
            break
    return count
