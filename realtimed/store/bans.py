"""Bans in the store: a user refused on every door until a time.

``BanStore`` is the Protocol and ``BanRecord`` its record; ``BanRules`` holds
the rules, written once: what a ban call answers, and when a ban is in force.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

import attrs

from realtimed.clock import iso
from realtimed.store.values import utc

__all__ = ["BanRecord", "BanRules", "BanStore"]


@attrs.frozen
class BanRecord:
    """A user refused on every door until ``until`` (None: until lifted)."""

    user_id: str
    until: datetime | None
    created_at: datetime

    def in_force(self, now: datetime) -> bool:
        return self.until is None or self.until > now

    def to_wire(self) -> dict[str, Any]:
        return {"banned": True, "banned_until": iso(self.until), "banned_at": iso(self.created_at)}


class BanStore(Protocol):
    """Bans. Expiry: a ban whose ``until`` has passed is no longer in force
    (``active_ban``); ended bans are deleted when the next ban is set."""

    async def ban_user(self, *, user_id: str, until: datetime | None, now: datetime) -> BanRecord:
        """Ban ``user_id`` until ``until`` (None: until ``unban_user``), replacing
        any earlier ban of theirs, longer or shorter. Bans that ended before
        ``now`` are deleted in the same transaction, so the table holds only
        bans in force and those that ended since the last ban."""
        ...

    async def active_ban(self, *, user_id: str, now: datetime) -> BanRecord | None:
        """The user's ban if it is in force at ``now`` (no ``until``, or ``until > now``)."""
        ...

    async def unban_user(self, *, user_id: str, now: datetime) -> bool:
        """Lift the user's ban; True if one was in force at ``now`` (an ended one
        is deleted too, and answers False)."""
        ...


class BanRules(abc.ABC):
    """``BanStore``'s rules over a backend's primitives."""

    async def ban_user(self, *, user_id: str, until: datetime | None, now: datetime) -> BanRecord:
        await self._put_ban(user_id, None if until is None else utc(until), utc(now))
        return BanRecord(user_id=user_id, until=until, created_at=now)

    async def active_ban(self, *, user_id: str, now: datetime) -> BanRecord | None:
        return await self._ban_in_force(user_id, utc(now))

    async def unban_user(self, *, user_id: str, now: datetime) -> bool:
        at = utc(now)
        return any(until is None or until > at for until in await self._delete_ban(user_id))

    @abc.abstractmethod
    async def _put_ban(self, user_id: str, until: datetime | None, now: datetime) -> None:
        """Delete the bans that ended by ``now``, then set the user's."""

    @abc.abstractmethod
    async def _ban_in_force(self, user_id: str, now: datetime) -> BanRecord | None: ...

    @abc.abstractmethod
    async def _delete_ban(self, user_id: str) -> Iterable[datetime | None]:
        """Delete the user's ban; the ``until`` of what was deleted."""
