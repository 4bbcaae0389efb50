"""The outcome codes of the delivery log, defined once (docs/protocol.md, "Delivery log").

Every channel (``in_app``, ``push``, and any later one), the delivery log's
routes and the ``delivery.failed`` webhook use these strings, and only these:

=========================  =============================================================
code                       meaning
=========================  =============================================================
``delivered``              in-app: stored in the inbox and handed to the user's live
                           sessions (or stored for a user with none); push: accepted by FCM;
                           email: accepted by the SMTP server
``skipped:preference``     the user turned the channel off for the type
``skipped:quiet_hours``    held until the end of the user's quiet hours (``deferred_until``);
                           the delivery itself is logged when it goes
``skipped:cap``            over a push cap (``cap``: ``daily`` or ``hourly``)
``skipped:active``         the user was active on a connected device (no out-of-app delivery)
``skipped:no_endpoint``    no device token (push), no address, to deliver to
``skipped:withdrawn``      a queued delivery no longer wanted when it was due: the
                           notification was read or deleted, the token was deactivated
``skipped:duplicate``      the notification's dedupe key was used before: nothing is
                           delivered again (answered by ``POST /server/v1/notifications``)
``skipped:expired``        the notification's ``expires_at`` passed before it went out
``batched:digest``         held for the digest of its group's window (``notify.digest``)
``failed:<code>``          refused for good: FCM's error code for push (``failed:UNREGISTERED``,
                           ``failed:INVALID_ARGUMENT``, ``failed:SENDER_ID_MISMATCH``...,
                           ``failed:HTTP_<status>`` when FCM gave no code, ``failed:network`` when
                           no answer came); ``failed:smtp_<reply>`` for email
``device_removed``         the device token was deactivated after FCM's answer
=========================  =============================================================
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "BATCHED_DIGEST",
    "CAPS",
    "CAP_DAILY",
    "CAP_HOURLY",
    "DELIVERED",
    "DEVICE_REMOVED",
    "FAILED_PREFIX",
    "FAMILIES",
    "OUTCOMES",
    "SKIPPED_ACTIVE",
    "SKIPPED_CAP",
    "SKIPPED_DUPLICATE",
    "SKIPPED_EXPIRED",
    "SKIPPED_NO_ENDPOINT",
    "SKIPPED_PREFERENCE",
    "SKIPPED_QUIET_HOURS",
    "SKIPPED_WITHDRAWN",
    "failed",
    "is_outcome",
    "smtp_failed",
]

DELIVERED: Final = "delivered"
SKIPPED_PREFERENCE: Final = "skipped:preference"
SKIPPED_QUIET_HOURS: Final = "skipped:quiet_hours"
SKIPPED_CAP: Final = "skipped:cap"
SKIPPED_ACTIVE: Final = "skipped:active"
SKIPPED_NO_ENDPOINT: Final = "skipped:no_endpoint"
SKIPPED_WITHDRAWN: Final = "skipped:withdrawn"
SKIPPED_DUPLICATE: Final = "skipped:duplicate"
SKIPPED_EXPIRED: Final = "skipped:expired"
BATCHED_DIGEST: Final = "batched:digest"
DEVICE_REMOVED: Final = "device_removed"
FAILED_PREFIX: Final = "failed:"

#: The codes without a part of their own (``failed:<code>`` is the one with).
OUTCOMES: Final[tuple[str, ...]] = (
    DELIVERED,
    SKIPPED_PREFERENCE,
    SKIPPED_QUIET_HOURS,
    SKIPPED_CAP,
    SKIPPED_ACTIVE,
    SKIPPED_NO_ENDPOINT,
    SKIPPED_WITHDRAWN,
    SKIPPED_DUPLICATE,
    SKIPPED_EXPIRED,
    BATCHED_DIGEST,
    DEVICE_REMOVED,
)
#: A filter of the log may name a family: every ``failed:...``, every ``skipped:...``.
FAMILIES: Final[tuple[str, ...]] = ("failed", "skipped", "batched")

#: The caps ``skipped:cap`` names: per user per local day, per user and type per UTC hour.
CAP_DAILY: Final = "daily"
CAP_HOURLY: Final = "hourly"
CAPS: Final[tuple[str, ...]] = (CAP_DAILY, CAP_HOURLY)

_CODE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def failed(code: str) -> str:
    """``failed:<code>``; a code that is not 1 to 64 of letters, digits, ``_ . -`` becomes ``failed:other``."""
    return FAILED_PREFIX + (code if _CODE.fullmatch(code) else "other")


def smtp_failed(reply: int) -> str:
    """``failed:smtp_<reply code>`` (``failed:smtp_550``)."""
    return failed(f"smtp_{reply}")


def is_outcome(value: str) -> bool:
    """True for a code of the table (``failed:<code>`` included)."""
    if value in OUTCOMES:
        return True
    return value.startswith(FAILED_PREFIX) and _CODE.fullmatch(value[len(FAILED_PREFIX) :]) is not None
