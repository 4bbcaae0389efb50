"""Push devices in the store: tokens, their owners and topics.

``DeviceStore`` is the Protocol and ``DeviceRecord`` its record. Written once
here: the platforms a token may have, record building from rows, and the
rules of ``DeviceRules`` before a backend's primitives.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

import attrs

from realtimed.clock import iso
from realtimed.errors import NotFound, ValidationFailed
from realtimed.store.values import Row, RowCodec, utc

__all__ = ["DEVICE_COLS", "PLATFORMS", "DeviceRecord", "DeviceRules", "DeviceStore"]

PLATFORMS: Final[tuple[str, ...]] = ("ios", "android", "web")
DEVICE_COLS: Final = "token, user_id, platform, app_version, active, last_seen_at, created_at, device_info"


@attrs.frozen
class DeviceRecord:
    """A push token; ``token`` is unique across users."""

    token: str
    user_id: str
    platform: str
    app_version: str
    active: bool
    last_seen_at: datetime
    topics: tuple[str, ...]
    created_at: datetime
    device_info: Mapping[str, str] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "platform": self.platform,
            "app_version": self.app_version,
            "active": self.active,
            "last_seen_at": iso(self.last_seen_at),
            "topics": list(self.topics),
            "created_at": iso(self.created_at),
            "device_info": dict(self.device_info),
        }


def devices_from(
    rows: Sequence[Row], topics: Mapping[str, Sequence[str]], codec: RowCodec
) -> list[DeviceRecord]:
    """Devices from rows of ``DEVICE_COLS``, each with its topics (by token, in order)."""
    return [
        DeviceRecord(
            token=r["token"],
            user_id=r["user_id"],
            platform=r["platform"],
            app_version=r["app_version"],
            active=bool(r["active"]),
            last_seen_at=codec.time(r["last_seen_at"]),
            topics=tuple(topics.get(r["token"], ())),
            created_at=codec.time(r["created_at"]),
            device_info=codec.json(r["device_info"]) or {},
        )
        for r in rows
    ]


def topics_by_token(rows: Sequence[Row]) -> dict[str, list[str]]:
    """Rows of ``token, topic`` (in topic order), grouped by token."""
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["token"], []).append(r["topic"])
    return out


def check_platform(platform: str) -> None:
    if platform not in PLATFORMS:
        raise ValidationFailed("platform", f"must be one of {', '.join(PLATFORMS)}")


def no_device() -> NotFound:
    return NotFound("no such device token")


class DeviceStore(Protocol):
    """Push tokens. A token belongs to one user at a time; nothing expires by
    itself (``deactivate_stale_devices`` is an explicit retention call)."""

    async def register_device(
        self,
        *,
        user_id: str,
        token: str,
        platform: str,
        now: datetime,
        app_version: str = "",
        device_info: Mapping[str, str] | None = None,
    ) -> DeviceRecord:
        """Register (or refresh) a push token; it is active and seen ``now``.
        A token that belonged to another user moves to this one and loses its topics.
        ``device_info`` (model, OS, app version: strings checked at the edge)
        replaces what was stored with the token.

        Raises:
            ValidationFailed: ``platform`` is not ios, android or web.
        """
        ...

    async def unregister_device(self, *, token: str, user_id: str | None = None) -> bool:
        """Forget a token (only if it is ``user_id``'s, when given); False if nothing was removed."""
        ...

    async def get_device(self, token: str) -> DeviceRecord | None: ...

    async def list_devices(self, user_id: str, *, active_only: bool = True) -> list[DeviceRecord]: ...

    async def get_devices(self, tokens: Sequence[str]) -> dict[str, DeviceRecord]:
        """The devices of ``tokens`` that exist, by token, in one read (the push
        senders' checks gathered together)."""
        ...

    async def list_devices_many(self, user_ids: Sequence[str]) -> dict[str, list[DeviceRecord]]:
        """The active devices of each of ``user_ids`` (in ``list_devices`` order),
        in one read; a user without one is missing from the answer."""
        ...

    async def deactivate_device(self, *, token: str) -> bool:
        """Mark a token inactive (FCM said it is gone); False if unknown or already inactive."""
        ...

    async def touch_device(self, *, token: str, now: datetime) -> bool:
        """Record that the token was seen ``now``; False if unknown."""
        ...

    async def add_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        """Raises NotFound for an unknown token."""
        ...

    async def remove_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        """Raises NotFound for an unknown token."""
        ...

    async def topic_devices(self, topic: str) -> list[DeviceRecord]:
        """Active devices subscribed to ``topic``."""
        ...


class DeviceRules(abc.ABC):
    """``DeviceStore``'s rules over a backend's primitives."""

    async def register_device(
        self,
        *,
        user_id: str,
        token: str,
        platform: str,
        now: datetime,
        app_version: str = "",
        device_info: Mapping[str, str] | None = None,
    ) -> DeviceRecord:
        check_platform(platform)
        return await self._register(user_id, token, platform, app_version, dict(device_info or {}), utc(now))

    async def touch_device(self, *, token: str, now: datetime) -> bool:
        return await self._touch(token, utc(now))

    async def add_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        return await self._change_topics(token, list(topics), add=True)

    async def remove_device_topics(self, *, token: str, topics: Sequence[str]) -> DeviceRecord:
        return await self._change_topics(token, list(topics), add=False)

    @abc.abstractmethod
    async def _register(
        self, user_id: str, token: str, platform: str, app_version: str, device_info: dict[str, str], now: datetime
    ) -> DeviceRecord:
        """Register the token (moving it, without its topics, from another user); ``device_info`` replaces the stored one."""

    @abc.abstractmethod
    async def _touch(self, token: str, now: datetime) -> bool: ...

    @abc.abstractmethod
    async def _change_topics(self, token: str, topics: list[str], *, add: bool) -> DeviceRecord:
        """Raises ``no_device()`` for an unknown token."""
