"""The job kinds of the notification pipeline and their payload types.

==================  ==================  =====================================================
kind                payload             what it does
==================  ==================  =====================================================
``notify.send``      ``NotifySend``      a notification scheduled for later, run at its time
``notify.push``      ``NotifyPlan``      plans the out-of-app deliveries (push, and any other
                                         planned channel) for a batch of recipients
``notify.digest``    ``NotifyDigest``    the digest delivery of one group at the end of its window
``chat.offline``     ``ChatOffline``     a chat message for participants with no connected
                                         device (queued by chat with the message)
==================  ==================  =====================================================

The stored shapes are those of earlier versions (see ``realtimed.jobs.payload``
for the promises): jobs queued before an upgrade still run, and a node of a
cluster that has not been upgraded yet runs jobs queued by one that has. What
this version adds is only written when it differs from what an earlier version
would assume: a plan item names its channels only when they are not just push
(``[user, notification id, seq, [channels]]``), and so does a digest; a
notification's ``expires_at`` is written only when it has one.

``chat.offline`` is defined here, once: chat queues it (``offline_job_spec``),
notify handles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Literal

import attrs

from realtimed.clock import iso
from realtimed.jobs.payload import (
    JobType,
    PayloadError,
    field_path,
    obj,
    opt_int,
    opt_str,
    opt_time,
    req_str,
    req_time,
    str_list,
)
from realtimed.store.base import JobSpec

__all__ = [
    "CHAT_OFFLINE",
    "CHAT_OFFLINE_QUEUE",
    "DEFAULT_CHANNELS",
    "NOTIFY_DIGEST",
    "NOTIFY_PUSH",
    "NOTIFY_SEND",
    "ChatOffline",
    "NotifyDigest",
    "NotifyPlan",
    "NotifySend",
    "PlanItem",
    "offline_job_spec",
]

# What a payload that names no channels means: earlier versions planned push alone.
DEFAULT_CHANNELS: Final[tuple[str, ...]] = ("push",)
CHAT_OFFLINE_QUEUE: Final = "default"
# The names chat has used for the recipients of a chat.offline job, in the order they are looked for.
_RECIPIENT_KEYS: Final = ("recipient_ids", "user_ids", "recipients", "to")


def _addresses(value: Any, path: str) -> dict[str, dict[str, str]]:
    """``{user_id: {channel: endpoint}}``: endpoints a notification names for its recipients."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PayloadError(path, "must be an object")
    out: dict[str, dict[str, str]] = {}
    for user_id, endpoints in value.items():
        where = field_path(path, str(user_id))
        if not isinstance(endpoints, Mapping) or not all(isinstance(v, str) for v in endpoints.values()):
            raise PayloadError(where, "must be an object of strings")
        out[str(user_id)] = {str(k): v for k, v in endpoints.items()}
    return out


def _channels(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_CHANNELS
    channels = str_list(value, path)
    if not channels:
        raise PayloadError(path, "must name at least one channel")
    return channels


@attrs.frozen
class NotifySend:
    """A notification to run through the pipeline at its ``scheduled_for`` time."""

    user_ids: tuple[str, ...]
    type: str
    vars: Mapping[str, Any] = attrs.field(factory=dict)
    data: Mapping[str, Any] = attrs.field(factory=dict)
    dedupe_key: str | None = None
    #: Endpoints the notification names per recipient and channel (``{"u1": {"email": "a@example.com"}}``).
    addresses: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)

    expires_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_ids": list(self.user_ids),
            "type": self.type,
            "vars": dict(self.vars),
            "data": dict(self.data),
            "dedupe_key": self.dedupe_key,
        }
        if self.addresses:
            out["addresses"] = {u: dict(a) for u, a in self.addresses.items()}
        if self.expires_at is not None:
            out["expires_at"] = iso(self.expires_at)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NotifySend:
        return cls(
            user_ids=str_list(data.get("user_ids"), "user_ids"),
            type=req_str(data, "type"),
            vars=obj(data, "vars"),
            data=obj(data, "data"),
            dedupe_key=opt_str(data, "dedupe_key"),
            addresses=_addresses(data.get("addresses"), "addresses"),
            expires_at=opt_time(data, "expires_at"),
        )


@attrs.frozen
class PlanItem:
    """One recipient of a ``notify.push`` job: the inbox notification it got
    (None when the in-app channel is off for them) and the planned channels they
    have on."""

    user_id: str
    notification_id: str | None = None
    seq: int | None = None
    channels: tuple[str, ...] = DEFAULT_CHANNELS

    def to_json(self) -> list[Any]:
        item: list[Any] = [self.user_id, self.notification_id, self.seq]
        if self.channels != DEFAULT_CHANNELS:
            item.append(list(self.channels))
        return item

    @classmethod
    def from_json(cls, value: Any, path: str) -> PlanItem:
        if not isinstance(value, list) or len(value) not in (3, 4):
            raise PayloadError(path, "must be [user_id, notification_id, seq] or [user_id, notification_id, seq, channels]")
        user_id, notification_id, seq = value[0], value[1], value[2]
        if not isinstance(user_id, str):
            raise PayloadError(field_path(path, 0), "must be a string")
        if notification_id is not None and not isinstance(notification_id, str):
            raise PayloadError(field_path(path, 1), "must be a string or null")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise PayloadError(field_path(path, 2), "must be an integer or null")
        if (notification_id is None) != (seq is None):
            raise PayloadError(field_path(path, 2), "a notification id and its seq go together")
        channels = _channels(value[3] if len(value) == 4 else None, field_path(path, 3))
        return cls(user_id, notification_id, seq, channels)


@attrs.frozen
class NotifyPlan:
    """Push (and other planned channels) planning for a batch of recipients of one notification."""

    type: str
    items: tuple[PlanItem, ...]
    vars: Mapping[str, Any] = attrs.field(factory=dict)
    data: Mapping[str, Any] = attrs.field(factory=dict)
    dedupe_key: str | None = None
    request_id: str | None = None
    #: Endpoints the notification names per recipient and channel (only this batch's recipients).
    addresses: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)

    expires_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "vars": dict(self.vars),
            "data": dict(self.data),
            "dedupe_key": self.dedupe_key,
            "request_id": self.request_id,
            "items": [item.to_json() for item in self.items],
        }
        if self.addresses:
            out["addresses"] = {u: dict(a) for u, a in self.addresses.items()}
        if self.expires_at is not None:
            out["expires_at"] = iso(self.expires_at)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NotifyPlan:
        items = data.get("items")
        if not isinstance(items, list):
            raise PayloadError("items", "must be a list")
        return cls(
            type=req_str(data, "type"),
            items=tuple(PlanItem.from_json(item, field_path("items", i)) for i, item in enumerate(items)),
            vars=obj(data, "vars"),
            data=obj(data, "data"),
            dedupe_key=opt_str(data, "dedupe_key"),
            request_id=opt_str(data, "request_id"),
            addresses=_addresses(data.get("addresses"), "addresses"),
            expires_at=opt_time(data, "expires_at"),
        )


@attrs.frozen
class NotifyDigest:
    """The digest of one group for one user in one window ``[since, until)``.

    ``source`` says what it counts: unread inbox notifications of the group
    (``inbox``), or the unread messages of ``conversation_id`` (``chat``).
    ``first_ref`` names the delivery that opened the window (it went at once).
    """

    user_id: str
    type: str
    group_key: str
    since: datetime
    until: datetime
    first_ref: str
    source: Literal["inbox", "chat"] = "inbox"
    vars: Mapping[str, Any] = attrs.field(factory=dict)
    data: Mapping[str, Any] = attrs.field(factory=dict)
    conversation_id: str | None = None
    channels: tuple[str, ...] = DEFAULT_CHANNELS

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "type": self.type,
            "group_key": self.group_key,
            "since": iso(self.since),
            "until": iso(self.until),
            "vars": dict(self.vars),
            "data": dict(self.data),
            "source": self.source,
            "first_ref": self.first_ref,
        }
        if self.conversation_id is not None:
            out["conversation_id"] = self.conversation_id
        if self.channels != DEFAULT_CHANNELS:
            out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NotifyDigest:
        source: Literal["inbox", "chat"] = "chat" if data.get("source") == "chat" else "inbox"
        conversation_id = opt_str(data, "conversation_id")
        if source == "chat" and conversation_id is None:
            raise PayloadError("conversation_id", "a chat digest needs its conversation")
        return cls(
            user_id=req_str(data, "user_id"),
            type=req_str(data, "type"),
            group_key=req_str(data, "group_key"),
            since=req_time(data, "since"),
            until=req_time(data, "until"),
            first_ref=req_str(data, "first_ref"),
            source=source,
            vars=obj(data, "vars"),
            data=obj(data, "data"),
            conversation_id=conversation_id,
            channels=_channels(data.get("channels"), "channels"),
        )


@attrs.frozen
class ChatOffline:
    """A chat message for participants who had no connected device when it was sent.

    Chat queues it in the message's transaction without ``message_id`` and
    ``seq``, which the store adds (``offline_job_spec``). Recipients were
    stored under several names by earlier versions; all are read.
    """

    message_id: str
    recipients: tuple[str, ...]
    seq: int | None = None
    conversation_id: str | None = None
    sender_id: str | None = None
    sender_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conversation_id": self.conversation_id,
            "sender_id": self.sender_id,
            "recipients": list(self.recipients),
            "message_id": self.message_id,
            "seq": self.seq,
        }
        if self.sender_name is not None:
            out["sender_name"] = self.sender_name
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChatOffline:
        recipients: tuple[str, ...] = ()
        for key in _RECIPIENT_KEYS:
            value = data.get(key)
            if isinstance(value, list):
                recipients = str_list(value, key, skip_others=True)
                break
        return cls(
            message_id=req_str(data, "message_id", allow_empty=False),
            recipients=recipients,
            seq=opt_int(data, "seq"),
            conversation_id=opt_str(data, "conversation_id") or None,
            sender_id=opt_str(data, "sender_id"),
            sender_name=opt_str(data, "sender_name") or None,
        )


NOTIFY_SEND: Final = JobType("notify.send", NotifySend)
NOTIFY_PUSH: Final = JobType("notify.push", NotifyPlan)
NOTIFY_DIGEST: Final = JobType("notify.digest", NotifyDigest)
CHAT_OFFLINE: Final = JobType("chat.offline", ChatOffline)


def offline_job_spec(
    *, conversation_id: str, sender_id: str, recipients: list[str], dedupe_key: str
) -> JobSpec:
    """The ``chat.offline`` job queued with a message (``Store.append_message(jobs=...)``),
    which adds ``message_id`` and ``seq``."""
    return JobSpec(
        queue=CHAT_OFFLINE_QUEUE,
        kind=CHAT_OFFLINE.kind,
        payload={"conversation_id": conversation_id, "sender_id": sender_id, "recipients": list(recipients)},
        dedupe_key=dedupe_key,
    )
