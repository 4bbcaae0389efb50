"""The push channel: notifications to every active device of a user, through FCM.

``FcmChannel`` is the planned ``DeliveryChannel`` named ``push``
(``realtimed.notify.channel``). For one delivery it builds one FCM message for
every platform (``realtimed.push.messages``: the type's priority, TTL, sound
and Android channel; the inbox's unread count as the badge; ``data.link`` as
the web link; the group as the collapse key when the type groups or digests)
and queues one ``push.send`` job per active device, at ``run_at``, carrying
the delivery's check and ``expires_at`` (the FCM TTL is cut to what is left
of the notification's life). A batch of deliveries costs two reads (devices, badges)
and one write, however many users and devices it holds. Withdrawing cancels the queued jobs by their dedupe
keys (``push:<user>:<ref>:<device>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import trio

from realtimed.notify.channel import Delivery, Receipt
from realtimed.notify.policy import inbox_push_prefix, push_prefix
from realtimed.push.jobs import PushSend
from realtimed.push.messages import build_message
from realtimed.push.service import PushService
from realtimed.store.base import DeviceRecord

__all__ = ["FcmChannel"]


class FcmChannel:
    """Push through FCM, on a node with ``push.service_account_file`` set.

    Args:
        push: the push service (devices, the store and ``push.send`` jobs).

    Error handling:
        A store or job runner that cannot be reached raises; the planning job
        that called is retried, and the dedupe keys keep the pushes already
        queued single.
    """

    name: Final = "push"
    immediate: Final = False

    def __init__(self, push: PushService) -> None:
        self.push = push

    def available(self) -> bool:
        return bool(self.push.cfg.service_account_file)

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Receipt | None]:
        """Every delivery's devices and badge are read together (two reads, run at
        once, whatever the number of deliveries) and all their ``push.send`` jobs
        are queued by one store statement."""
        if not deliveries:
            return []
        store = self.push.store
        users = list(dict.fromkeys(d.user_id for d in deliveries))
        async with trio.open_nursery() as nursery:
            devices: dict[str, list[DeviceRecord]] = {}
            badges: dict[str, int] = {}

            async def read_devices() -> None:
                devices.update(await store.list_devices_many(users))

            async def read_badges() -> None:
                badges.update(await store.notification_unread_counts(users, now=self.push.clock.now()))

            nursery.start_soon(read_devices)
            nursery.start_soon(read_badges)
        pushes: list[tuple[PushSend, datetime | None]] = []
        receipts: list[Receipt | None] = []
        for delivery in deliveries:
            mine = devices.get(delivery.user_id, [])
            if not mine:
                receipts.append(None)
                continue
            message = self._message(delivery, badges.get(delivery.user_id, 0), self.push.clock.now())
            for device in mine:
                pushes.append(
                    (
                        PushSend(
                            message=message,
                            ref=delivery.ref,
                            token=device.token,
                            user_id=delivery.user_id,
                            check=delivery.check,
                            expires_at=delivery.expires_at,
                        ),
                        delivery.run_at,
                    )
                )
            receipts.append(Receipt(ref=delivery.ref, check=delivery.check, endpoints=len(mine)))
        await self.push.queue_pushes(pushes)
        return receipts

    @staticmethod
    def _message(delivery: Delivery, badge: int, now: datetime) -> dict[str, Any]:
        ntype = delivery.type
        ttl_s = ntype.ttl_s
        if delivery.expires_at is not None:
            # FCM keeps an undelivered push no longer than the notification lives.
            start = max(now, delivery.run_at) if delivery.run_at is not None else now
            ttl_s = max(0.0, min(ttl_s, (delivery.expires_at - start).total_seconds()))
        link = delivery.data.get("link")
        return build_message(
            title=delivery.title,
            body=delivery.body,
            data={k: v for k, v in delivery.data.items() if v is not None},
            priority=ntype.priority,
            # Only grouped types replace each other on the device; others each stay.
            collapse_key=delivery.group_key if ntype.group_by or ntype.digest_window_s > 0 else None,
            channel_id=ntype.android_channel_id,
            sound=ntype.sound,
            ttl_s=ttl_s,
            badge=badge,
            link=link if isinstance(link, str) else None,
            expires_at=delivery.expires_at,
        )

    async def withdraw(self, *, user_id: str, refs: Sequence[str] | None) -> int:
        store = self.push.store
        now = self.push.clock.now()
        if refs is None:
            cancelled: int = await store.cancel_jobs_by_dedupe_prefix(prefix=inbox_push_prefix(user_id), now=now)
            return cancelled
        total = 0
        for ref in refs:
            total += await store.cancel_jobs_by_dedupe_prefix(prefix=push_prefix(user_id, ref), now=now)
        return total
