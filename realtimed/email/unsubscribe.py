"""Signed one-click unsubscribe links.

A link is ``<email.public_base_url>/email/unsubscribe/<token>``. The token
names the user, the notification type (``*``: all email) and when the link
stops working, and carries an HMAC-SHA256 of those under
``email.unsubscribe_secret`` (cut to 16 bytes), so that nobody can make one
for another user or type, and a changed character is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime
from typing import Final

import attrs

__all__ = ["ALL_TYPES", "Unsubscribe", "sign", "verify"]

ALL_TYPES: Final = "*"
_SIG_BYTES: Final = 16
MAX_TOKEN_CHARS: Final = 1024


@attrs.frozen
class Unsubscribe:
    user_id: str
    type: str  # a notification type, or ALL_TYPES
    expires: int  # seconds since the epoch


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), b"realtimed-unsubscribe\n" + payload, hashlib.sha256).digest()[:_SIG_BYTES]


def sign(secret: str, what: Unsubscribe) -> str:
    payload = f"{what.user_id}\n{what.type}\n{what.expires}".encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def verify(secret: str, token: str, *, now: datetime) -> Unsubscribe | str:
    """The link's request, or why it is refused (``invalid``, ``expired``)."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        return "invalid"
    payload_text, sig_text = token.split(".")
    try:
        payload, sig = _unb64(payload_text), _unb64(sig_text)
    except (binascii.Error, ValueError):
        return "invalid"
    if not hmac.compare_digest(sig, _mac(secret, payload)):
        return "invalid"
    try:
        user_id, type_, expires = payload.decode().split("\n")
        what = Unsubscribe(user_id, type_, int(expires))
    except ValueError:
        return "invalid"
    if what.expires <= now.timestamp():
        return "expired"
    return what
