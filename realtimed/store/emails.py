"""Email addresses in the store: one per user, for the email channel.

``EmailStore`` is the Protocol and ``EmailAddressRecord`` its record. An address
is set by the application with a ``verified`` flag; a bounce or complaint that
the mail provider reports marks every user's row holding that address (compared
in lower case) as undeliverable until it is set again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import attrs

from realtimed.clock import iso
from realtimed.store.values import Row, RowCodec

__all__ = ["EMAIL_COLS", "EMAIL_DIGESTS", "EmailAddressRecord", "EmailStore", "email_from"]

EMAIL_COLS: Final = "user_id, address, verified, digest, bounced_at, bounce_kind, bounce_reason, updated_at"
#: How a user's emails go out: one per notification, or gathered per UTC hour or day.
EMAIL_DIGESTS: Final[tuple[str, ...]] = ("off", "hourly", "daily")


@attrs.frozen
class EmailAddressRecord:
    """A user's address; mailed only while ``deliverable``."""

    user_id: str
    address: str
    verified: bool
    digest: str
    bounced_at: datetime | None
    bounce_kind: str | None
    bounce_reason: str | None
    updated_at: datetime

    @property
    def deliverable(self) -> bool:
        """Verified, and no bounce or complaint reported since it was set."""
        return self.verified and self.bounced_at is None

    def to_wire(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "address": self.address,
            "verified": self.verified,
            "digest": self.digest,
            "bounced_at": iso(self.bounced_at),
            "bounce_kind": self.bounce_kind,
            "bounce_reason": self.bounce_reason,
            "updated_at": iso(self.updated_at),
        }


def email_from(row: Row, codec: RowCodec) -> EmailAddressRecord:
    """A record from a row of ``EMAIL_COLS``."""
    return EmailAddressRecord(
        user_id=row["user_id"],
        address=row["address"],
        verified=bool(row["verified"]),
        digest=row["digest"],
        bounced_at=codec.opt_time(row["bounced_at"]),
        bounce_kind=row["bounce_kind"],
        bounce_reason=row["bounce_reason"],
        updated_at=codec.time(row["updated_at"]),
    )


class EmailStore(Protocol):
    """Users' email addresses. Nothing expires."""

    async def set_email_address(
        self, *, user_id: str, address: str, verified: bool, now: datetime, digest: str | None = None
    ) -> EmailAddressRecord:
        """Set (or replace) the user's address; a bounce reported earlier is cleared.
        ``digest`` (one of ``EMAIL_DIGESTS``) replaces the user's; None keeps it
        (``off`` for a new address)."""
        ...

    async def get_email_addresses(self, user_ids: Sequence[str]) -> dict[str, EmailAddressRecord]:
        """The addresses of those of ``user_ids`` that have one, by user id."""
        ...

    async def delete_email_address(self, *, user_id: str) -> bool:
        """Forget the user's address; True if there was one."""
        ...

    async def mark_email_bounced(self, *, address: str, kind: str, reason: str, now: datetime) -> list[str]:
        """Mark every row holding ``address`` (in any case) undeliverable with ``kind``
        (``bounce``, ``complaint``) and ``reason``; returns the user ids marked
        (a row already marked keeps its first report)."""
        ...
