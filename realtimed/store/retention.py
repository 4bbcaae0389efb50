"""Retention in the store: deleting or purging what has aged out, on explicit calls.

``RetentionStore`` is the Protocol; the built-in retention job kinds call it
(``realtimed.jobs.builtin``) with cutoffs computed from the configuration.
``RetentionRules`` holds the rules written once: the statuses that count as
finished, and the cutoff in UTC.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Literal, Protocol

from realtimed.store.jobs import FINISHED_JOB_STATUSES
from realtimed.store.values import utc

__all__ = ["FINISHED_STATUSES_SQL", "InboxSweep", "RetentionRules", "RetentionStore", "Sweep"]

Sweep = Literal["read_notifications", "finished_jobs", "deleted_messages", "stale_devices"]
#: The sweeps of notifications that may be unread: each also lowers the unread counters of their users.
InboxSweep = Literal["expired_notifications", "unread_notifications"]

# The job statuses retention deletes, as an SQL list ('succeeded', ...).
FINISHED_STATUSES_SQL: Final = "(" + ", ".join(f"'{s}'" for s in FINISHED_JOB_STATUSES) + ")"


class RetentionStore(Protocol):
    """Retention deletes. Nothing here runs by itself: each is one call, one
    transaction, and returns how many rows it changed."""

    async def delete_read_notifications(self, *, before: datetime) -> int:
        """Delete notifications read before ``before``; returns how many."""
        ...

    async def delete_expired_notifications(self, *, now: datetime) -> int:
        """Delete notifications whose ``expires_at`` is at or before ``now``, read
        or not; the unread counters of their users drop in the same transaction."""
        ...

    async def delete_unread_notifications(self, *, before: datetime) -> int:
        """Delete unread notifications created before ``before``; the unread
        counters of their users drop in the same transaction."""
        ...

    async def delete_finished_jobs(self, *, before: datetime) -> int:
        """Delete succeeded, failed, dead and cancelled jobs finished before ``before``."""
        ...

    async def purge_deleted_messages(self, *, before: datetime) -> int:
        """Clear body and media of messages deleted before ``before`` (the row
        and its ``seq`` stay); returns how many were purged."""
        ...

    async def deactivate_stale_devices(self, *, before: datetime) -> int:
        """Deactivate active tokens last seen before ``before``; returns how many."""
        ...

    async def delete_feed_activities(self, *, prefix: str, before: datetime, except_prefixes: Sequence[str] = ()) -> int:
        """Remove from the feeds whose name starts with ``prefix`` (and with none of
        ``except_prefixes`` longer than it) the activities whose time is before ``before``,
        and delete the activities left in no feed; returns how many were removed from
        feeds. (Written with the feeds' other rules: ``store.feeds.FeedRules``.)"""
        ...


class RetentionRules(abc.ABC):
    """``RetentionStore`` over one backend primitive: a sweep and its cutoff."""

    async def delete_read_notifications(self, *, before: datetime) -> int:
        return await self._sweep("read_notifications", utc(before))

    async def delete_expired_notifications(self, *, now: datetime) -> int:
        return await self._sweep_inbox("expired_notifications", utc(now))

    async def delete_unread_notifications(self, *, before: datetime) -> int:
        return await self._sweep_inbox("unread_notifications", utc(before))

    async def delete_finished_jobs(self, *, before: datetime) -> int:
        return await self._sweep("finished_jobs", utc(before))

    async def purge_deleted_messages(self, *, before: datetime) -> int:
        return await self._sweep("deleted_messages", utc(before))

    async def deactivate_stale_devices(self, *, before: datetime) -> int:
        return await self._sweep("stale_devices", utc(before))

    @abc.abstractmethod
    async def _sweep(self, sweep: Sweep, before: datetime) -> int:
        """Run the statement of ``sweep`` with its cutoff; how many rows it changed."""

    @abc.abstractmethod
    async def _sweep_inbox(self, sweep: InboxSweep, cutoff: datetime) -> int:
        """Delete the notifications of ``sweep`` up to ``cutoff`` and lower the unread
        counters by the unread ones among them, in one transaction; how many were deleted."""
