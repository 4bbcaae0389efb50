"""The reason codes of a delivery's outcome, as the server API and the webhooks report them.

A code names what happened to one notification for one recipient on one
channel: ``delivered``, or ``<verdict>:<reason>``. ``POST /server/v1/notifications``
answers the codes it can decide at once; what a job decides later (caps,
quiet hours, the active-user skip, a digest, an expiry, a refusal from a
provider) is reported with the ``delivery.failed`` webhook, with the same codes.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BATCHED_DIGEST",
    "DELIVERED",
    "SKIPPED_ACTIVE",
    "SKIPPED_CAP",
    "SKIPPED_DUPLICATE",
    "SKIPPED_EXPIRED",
    "SKIPPED_PREFERENCE",
    "SKIPPED_QUIET_HOURS",
    "failed",
]

DELIVERED: Final = "delivered"
SKIPPED_PREFERENCE: Final = "skipped:preference"
SKIPPED_ACTIVE: Final = "skipped:active"
SKIPPED_QUIET_HOURS: Final = "skipped:quiet_hours"
SKIPPED_CAP: Final = "skipped:cap"
BATCHED_DIGEST: Final = "batched:digest"
#: The notification's dedupe key was used before: nothing is delivered again.
SKIPPED_DUPLICATE: Final = "skipped:duplicate"
#: The notification's ``expires_at`` passed before the delivery went out.
SKIPPED_EXPIRED: Final = "skipped:expired"


def failed(code: str) -> str:
    """The code of a delivery that failed for ``code`` (a provider's reason: ``unregistered``, ...)."""
    return "failed:" + code
