"""What the store knows about users beyond chat: contacts, blocks, last-seen times,
and what a connecting session reads.

``UserStore`` is the Protocol; ``UserRules`` holds its rules, written once
(a user is their own contact and never in their own contact list).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

from realtimed.store.bans import BanRecord

__all__ = ["SessionStart", "UserRules", "UserStore"]


@attrs.frozen
class SessionStart:
    """What a session being admitted reads, in one store call.

    Attributes:
        ban: the user's ban in force (``BanStore.active_ban``), or None.
        unread_total: unread messages of the conversations the user has not
            muted (``ChatStore.unread_total``).
        notifications_unread: the user's unread notifications
            (``InboxStore.notification_unread_count``).
    """

    ban: BanRecord | None
    unread_total: int
    notifications_unread: int


class UserStore(Protocol):
    """Contacts (added by the app's backend, or shared conversations), blocks and
    last-seen times. Each call is one transaction; nothing here expires."""

    async def set_contacts(self, *, user_id: str, contact_ids: Sequence[str]) -> None:
        """Replace the contacts the app's backend added for ``user_id``."""
        ...

    async def is_contact(self, user_id: str, other_id: str) -> bool:
        """True if either added the other as a contact, or they share a
        conversation (both current members)."""
        ...

    async def contact_ids(self, user_id: str) -> set[str]:
        """Everyone ``is_contact(user_id, x)`` holds for (presence fan-out)."""
        ...

    async def block_user(self, *, user_id: str, blocked_id: str, now: datetime) -> bool:
        """``user_id`` blocks ``blocked_id``; False if already blocked."""
        ...

    async def unblock_user(self, *, user_id: str, blocked_id: str) -> bool:
        """Lift a block; False if there was none."""
        ...

    async def is_blocked(self, *, user_id: str, by: str) -> bool:
        """True if ``by`` has blocked ``user_id``."""
        ...

    async def blocked_ids(self, user_id: str) -> set[str]:
        """The users ``user_id`` has blocked."""
        ...

    async def set_last_seen(self, *, user_id: str, at: datetime) -> None:
        """Record that the user was last seen ``at`` (a later time only moves it forward)."""
        ...

    async def get_last_seen(self, user_ids: Sequence[str]) -> dict[str, datetime]:
        """Last-seen times of the users that have one."""
        ...

    async def session_start(self, *, user_id: str, now: datetime) -> SessionStart:
        """The ban in force at ``now`` and the unread counts of ``session.ready``, in
        one statement (one round trip on a connect), each as its own call answers it."""
        ...

    async def presence_audience(self, user_id: str) -> tuple[set[str], datetime | None]:
        """``contact_ids(user_id)`` and, when there is any, the user's last-seen time
        (None without contacts), in one round trip (a ``presence.updated``)."""
        ...


class UserRules(abc.ABC):
    """``UserStore``'s rules over a backend's primitives."""

    async def set_contacts(self, *, user_id: str, contact_ids: Sequence[str]) -> None:
        await self._replace_contacts(user_id, [c for c in dict.fromkeys(contact_ids) if c != user_id])

    async def is_contact(self, user_id: str, other_id: str) -> bool:
        return user_id == other_id or await self._related(user_id, other_id)

    async def contact_ids(self, user_id: str) -> set[str]:
        return await self._related_ids(user_id) - {user_id}

    async def presence_audience(self, user_id: str) -> tuple[set[str], datetime | None]:
        related, seen = await self._related_ids_and_last_seen(user_id)
        contacts = related - {user_id}
        return contacts, seen if contacts else None

    @abc.abstractmethod
    async def _replace_contacts(self, user_id: str, contact_ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def _related(self, user_id: str, other_id: str) -> bool:
        """A contact either way, or a shared conversation (two different users)."""

    @abc.abstractmethod
    async def _related_ids(self, user_id: str) -> set[str]:
        """Contacts either way and current members of the user's conversations (the user too)."""

    @abc.abstractmethod
    async def _related_ids_and_last_seen(self, user_id: str) -> tuple[set[str], datetime | None]:
        """``_related_ids`` and the user's last-seen time, in one round trip."""
