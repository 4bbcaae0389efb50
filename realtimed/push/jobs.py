"""The ``push.send`` job kind and its payload.

One ``push.send`` job sends one FCM message to one device token or one topic.
Its payload is the message without its target (``realtimed.push.messages``),
the target, the user the token belonged to when the push was planned, the
``ref`` of what is pushed (``n<notification id>``, ``m<message id>``, ...) and
the delivery check verified before a push that waited is sent
(``realtimed.notify.checks``), and the notification's ``expires_at`` (written
only when it has one), after which the push is not sent. The stored shape is the one earlier versions
wrote and read.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from realtimed.clock import iso
from realtimed.jobs.payload import JobType, PayloadError, obj, opt_str, opt_time
from realtimed.notify.checks import DeliveryCheck, decode_check, encode_check

__all__ = ["PUSH_SEND", "PushSend"]


@attrs.frozen
class PushSend:
    """One push to one device ``token`` or one ``topic`` (exactly one of them)."""

    message: Mapping[str, Any]
    ref: str = ""
    token: str | None = None
    topic: str | None = None
    user_id: str | None = None
    check: DeliveryCheck | None = None
    expires_at: datetime | None = None  # not sent after this (the notification's expires_at)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": dict(self.message), "ref": self.ref}
        if self.token is not None:
            out["token"] = self.token
        if self.topic is not None:
            out["topic"] = self.topic
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.check is not None:
            out["check"] = encode_check(self.check)
        if self.expires_at is not None:
            out["expires_at"] = iso(self.expires_at)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PushSend:
        token, topic = opt_str(data, "token"), opt_str(data, "topic")
        if (token is None) == (topic is None):
            raise PayloadError("token", "give exactly one of token and topic")
        return cls(
            message=obj(data, "message"),
            ref=opt_str(data, "ref") or "",
            token=token,
            topic=topic,
            user_id=opt_str(data, "user_id"),
            check=decode_check(data.get("check")),
            expires_at=opt_time(data, "expires_at"),
        )


PUSH_SEND: Final = JobType("push.send", PushSend)
