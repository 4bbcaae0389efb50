"""The delivery log in the store: what became of each notification on each channel.

``DeliveryLogStore`` is the Protocol, ``DeliveryEntry`` its record (the codes
are ``realtimed.outcomes``'s); ``DeliveryLogRules`` holds the rules,
written once: paging newest first with an opaque cursor, the filters, the
hourly counts. An in-app delivery is logged by ``insert_notifications(log=...)``
in the transaction that stores the notification; the other entries are written
by ``record_deliveries`` once the decision they record has been made (a push
once FCM answered), so the log never claims a delivery that did not happen.
Old entries go with ``delete_delivery_log`` (the retention job).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import attrs

from realtimed.clock import iso
from realtimed.errors import ValidationFailed
from realtimed.outcomes import DELIVERED, OUTCOMES
from realtimed.store.inbox import NotificationRecord
from realtimed.store.paging import clamp_limit, decode_cursor, encode_cursor, split_page
from realtimed.store.values import check_text, from_micros, to_micros, utc

__all__ = [
    "DETAIL_CHARS",
    "DeliveryCount",
    "DeliveryEntry",
    "DeliveryFilter",
    "DeliveryLogRules",
    "DeliveryLogStore",
    "delivered_entries",
]

#: The longest ``detail`` kept (an FCM error message, a reason); longer ones are cut.
DETAIL_CHARS: Final = 300
_HOUR_US: Final = 3_600_000_000


@attrs.frozen
class DeliveryEntry:
    """One outcome of one notification for one user on one channel.

    Attributes:
        at: when the outcome was decided.
        user_id: the recipient.
        channel: ``in_app``, ``push``, ...
        type: the notification type.
        outcome: a code of ``realtimed.outcomes``.
        notification_id: the inbox notification (None: not in the inbox, a chat message, a digest).
        ref: what was delivered: ``n<notification id>``, ``m<message id>``, ``ng<job>`` (a digest)...
        cap: the cap of ``skipped:cap`` (``daily``, ``hourly``).
        deferred_until: the end of the quiet hours of ``skipped:quiet_hours``.
        detail: a short explanation (FCM's message, the device, why a delivery was withdrawn).
        id: the entry's number, given by the store (0 before it is stored).
    """

    at: datetime
    user_id: str
    channel: str
    type: str
    outcome: str
    notification_id: str | None = None
    ref: str = ""
    cap: str | None = None
    deferred_until: datetime | None = None
    detail: str = ""
    id: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "at": iso(self.at),
            "user_id": self.user_id,
            "notification_id": self.notification_id,
            "ref": self.ref,
            "type": self.type,
            "channel": self.channel,
            "outcome": self.outcome,
            "cap": self.cap,
            "deferred_until": iso(self.deferred_until),
            "detail": self.detail,
        }


@attrs.frozen
class DeliveryFilter:
    """Which entries a page holds; None matches all. ``outcome`` is a code, or a
    family (``failed``, ``skipped``, ``batched``) matching every code ``<family>:...``.
    ``since`` is inclusive, ``until`` exclusive."""

    user_id: str | None = None
    notification_id: str | None = None
    type: str | None = None
    channel: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@attrs.frozen
class DeliveryCount:
    """How many entries of one outcome fell in one UTC hour."""

    hour: datetime
    outcome: str
    count: int


class DeliveryLogStore(Protocol):
    """The delivery log.

    Ordering: pages are newest first (by ``at``, then by id); entries written in
    one call keep their order. Atomicity: each call is one transaction.
    Expiry: entries stay until ``delete_delivery_log`` removes them.
    """

    async def record_deliveries(self, *, entries: Sequence[DeliveryEntry]) -> None:
        """Store ``entries`` in one transaction."""
        ...

    async def list_deliveries(
        self, *, where: DeliveryFilter, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[DeliveryEntry], str | None]:
        """A page newest first and the cursor of the next one (None at the end).

        Raises:
            ValidationFailed: a cursor this store did not make (field ``cursor``).
        """
        ...

    async def delivery_stats(
        self, *, since: datetime, until: datetime, channel: str | None = None
    ) -> list[DeliveryCount]:
        """Entries of ``[since, until)`` (of one channel, or all) counted per UTC hour and
        outcome, oldest hour first, outcomes in code order within an hour."""
        ...

    async def delete_delivery_log(self, *, before: datetime) -> int:
        """Delete entries older than ``before``; returns how many."""
        ...


class DeliveryLogRules(abc.ABC):
    """``DeliveryLogStore``'s rules over a backend's primitives."""

    async def record_deliveries(self, *, entries: Sequence[DeliveryEntry]) -> None:
        if not entries:
            return
        await self._record_deliveries([_clean(e) for e in entries])

    async def list_deliveries(
        self, *, where: DeliveryFilter, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[DeliveryEntry], str | None]:
        limit = clamp_limit(limit)
        after: tuple[datetime, int] | None = None
        if cursor is not None:
            micros, n = decode_cursor(cursor, (int, int))
            try:
                after = (from_micros(micros), n)
            except (OverflowError, ValueError):
                raise ValidationFailed("cursor", "not a valid cursor") from None
        where = attrs.evolve(
            where,
            since=utc(where.since) if where.since is not None else None,
            until=utc(where.until) if where.until is not None else None,
        )
        rows = await self._deliveries(where, after, limit + 1)
        page, more = split_page(rows, limit)
        last = page[-1] if page else None
        next_cursor = encode_cursor(to_micros(last.at), last.id) if more and last is not None else None
        return list(page), next_cursor

    async def delivery_stats(
        self, *, since: datetime, until: datetime, channel: str | None = None
    ) -> list[DeliveryCount]:
        rows = await self._stats(utc(since), utc(until), channel)
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return [DeliveryCount(epoch + timedelta(hours=hour), outcome, n) for hour, outcome, n in rows]

    async def delete_delivery_log(self, *, before: datetime) -> int:
        return await self._delete_deliveries(utc(before))

    @staticmethod
    def family(outcome: str | None) -> tuple[str | None, str | None]:
        """A filter's outcome as (exact code, prefix): a family matches ``<family>:...``."""
        if outcome is None:
            return None, None
        if ":" not in outcome and outcome not in OUTCOMES:
            return None, outcome + ":"
        return outcome, None

    @abc.abstractmethod
    async def _record_deliveries(self, entries: list[DeliveryEntry]) -> None: ...

    @abc.abstractmethod
    async def _deliveries(
        self, where: DeliveryFilter, after: tuple[datetime, int] | None, limit: int
    ) -> list[DeliveryEntry]:
        """Up to ``limit`` entries matching ``where`` older than ``after`` (time, id), newest first."""

    @abc.abstractmethod
    async def _stats(self, since: datetime, until: datetime, channel: str | None) -> list[tuple[int, str, int]]:
        """(hours since the epoch, outcome, count), by hour then outcome."""

    @abc.abstractmethod
    async def _delete_deliveries(self, before: datetime) -> int: ...


def _clean(entry: DeliveryEntry) -> DeliveryEntry:
    """The entry as every backend stores it: times in UTC, ``detail`` cut, no NUL anywhere."""
    for field in ("user_id", "channel", "type", "outcome", "ref"):
        check_text(field, getattr(entry, field))
    deferred = entry.deferred_until
    if (
        entry.at.tzinfo is UTC and (deferred is None or deferred.tzinfo is UTC)
        and len(entry.detail) <= DETAIL_CHARS and "\x00" not in entry.detail
    ):
        return entry  # the usual case (times from the wall clock): nothing to change
    return attrs.evolve(
        entry,
        at=utc(entry.at),
        deferred_until=utc(deferred) if deferred is not None else None,
        detail=entry.detail.replace("\x00", "")[:DETAIL_CHARS],
    )


def hour_of(at: datetime) -> int:
    """Hours since the epoch (the stats' bucket)."""
    return to_micros(at) // _HOUR_US


def delivered_entries(records: Iterable[NotificationRecord], *, channel: str, now: datetime) -> list[DeliveryEntry]:
    """The ``delivered`` entries of notifications just stored in the inbox (``insert_notifications(log_channel=)``)."""
    return [
        DeliveryEntry(
            at=now, user_id=r.user_id, channel=channel, type=r.type, outcome=DELIVERED,
            notification_id=r.id, ref=f"n{r.id}",
        )
        for r in records
    ]
