"""The Standard Webhooks signature (https://www.standardwebhooks.com), sans IO.

A delivery carries three headers: ``webhook-id`` (stable across the attempts of
one delivery, so the receiver can drop repeats), ``webhook-timestamp`` (seconds
since the epoch, of this attempt) and ``webhook-signature``: ``v1,<base64 of
HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``, one per secret, separated by a
space. A secret is ``whsec_`` followed by the base64 of the key; with two
secrets (rotation), the receiver accepts the delivery if either matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from realtimed.config import WEBHOOK_SECRET_PREFIX as SECRET_PREFIX

__all__ = ["SECRET_PREFIX", "new_secret", "sign", "signature_headers"]


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secrets: Sequence[str], *, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per secret, space-separated."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode("ascii")
        for secret in secrets
    )


def signature_headers(secrets: Sequence[str], *, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, webhook_id=webhook_id, timestamp=timestamp, body=body),
    }


def new_secret(random_bytes: bytes) -> str:
    """A secret from ``random_bytes`` (24 to 64 bytes from ``secrets.token_bytes``)."""
    return SECRET_PREFIX + base64.b64encode(random_bytes).decode("ascii")
