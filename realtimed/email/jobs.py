"""The ``email.send`` and ``email.digest`` job kinds and their payloads.

One ``email.send`` job sends one email to one address. Its payload is the
email as rendered when it was planned (subject, text, HTML, the unsubscribe
link and the Message-ID, which a retry keeps), the address, whether the
address came from the store (then it is checked again before an email that
waited goes out), the recipient, the ``ref`` of what is mailed and the
delivery check (``realtimed.notify.checks``).

One ``email.digest`` job, at the end of a user's digest window (an hour or a
UTC day), gathers the unread notifications of the window that the user gets by
email into one ``email.send``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import attrs

from realtimed.clock import iso
from realtimed.jobs.payload import JobType, opt_time, req_str, req_time
from realtimed.notify.checks import DeliveryCheck, decode_check, encode_check

__all__ = [
    "EMAIL_DIGEST",
    "EMAIL_SEND",
    "EmailDigest",
    "EmailSend",
    "digest_job_key",
    "email_key",
    "email_prefix",
    "inbox_email_prefix",
]


def _q(part: str) -> str:
    return quote(part, safe="")


def email_key(user_id: str, ref: str) -> str:
    """The dedupe key of the email of ``ref`` to a user: ``email:<user>:<ref>:``."""
    return f"email:{_q(user_id)}:{_q(ref)}:"


def email_prefix(user_id: str, ref: str) -> str:
    return email_key(user_id, ref)


def digest_job_key(user_id: str, since: datetime) -> str:
    """The dedupe key of a user's digest of the window starting at ``since``."""
    return f"email-digest:{_q(user_id)}:{int(since.timestamp())}"


def inbox_email_prefix(user_id: str) -> str:
    """The prefix of every email job about a user's inbox (refs starting with ``n``)."""
    return f"email:{_q(user_id)}:n"


@attrs.frozen
class EmailSend:
    """One email to one address."""

    to: str
    user_id: str
    type: str
    subject: str
    text: str
    html: str
    unsubscribe_url: str
    message_id: str
    ref: str = ""
    stored: bool = True
    check: DeliveryCheck | None = None
    expires_at: datetime | None = None  # not sent after this (the notification's expires_at)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "to": self.to,
            "user_id": self.user_id,
            "type": self.type,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
            "unsubscribe_url": self.unsubscribe_url,
            "message_id": self.message_id,
            "ref": self.ref,
            "stored": self.stored,
        }
        if self.check is not None:
            out["check"] = encode_check(self.check)
        if self.expires_at is not None:
            out["expires_at"] = iso(self.expires_at)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmailSend:
        return cls(
            to=req_str(data, "to", allow_empty=False),
            user_id=req_str(data, "user_id"),
            type=req_str(data, "type"),
            subject=req_str(data, "subject"),
            text=req_str(data, "text"),
            html=req_str(data, "html"),
            unsubscribe_url=req_str(data, "unsubscribe_url"),
            message_id=req_str(data, "message_id"),
            ref=req_str(data, "ref"),
            stored=data.get("stored") is not False,
            check=decode_check(data.get("check")),
            expires_at=opt_time(data, "expires_at"),
        )


@attrs.frozen
class EmailDigest:
    """A user's digest email of the unread notifications created in ``[since, until)``."""

    user_id: str
    since: datetime
    until: datetime

    def to_json(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "since": iso(self.since), "until": iso(self.until)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EmailDigest:
        return cls(user_id=req_str(data, "user_id"), since=req_time(data, "since"), until=req_time(data, "until"))


EMAIL_SEND: Final = JobType("email.send", EmailSend)
EMAIL_DIGEST: Final = JobType("email.digest", EmailDigest)
