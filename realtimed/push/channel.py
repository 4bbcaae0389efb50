"""The push channel: notifications to every active device of a user, through FCM.

``FcmChannel`` is the planned ``DeliveryChannel`` named ``push``
(``realtimed.notify.channel``). For one delivery it builds one FCM message for
every platform (``realtimed.push.messages``: the type's priority, TTL, sound
and Android channel; the inbox's unread count as the badge; ``data.link`` as
the web link; the group as the collapse key when the type groups or digests)
and queues one ``push.send`` job per active device, at ``run_at``, carrying
the delivery's check. Withdrawing cancels the queued jobs by their dedupe
keys (``push:<user>:<ref>:<device>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from realtimed.notify.channel import Delivery, Receipt
from realtimed.notify.policy import inbox_push_prefix, push_prefix
from realtimed.push.messages import build_message
from realtimed.push.service import PushService

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
        return [await self._deliver(delivery) for delivery in deliveries]

    async def _deliver(self, delivery: Delivery) -> Receipt | None:
        store = self.push.store
        devices = await store.list_devices(delivery.user_id)
        if not devices:
            return None
        ntype = delivery.type
        badge = await store.notification_unread_count(delivery.user_id)
        link = delivery.data.get("link")
        message = build_message(
            title=delivery.title,
            body=delivery.body,
            data={k: v for k, v in delivery.data.items() if v is not None},
            priority=ntype.priority,
            # Only grouped types replace each other on the device; others each stay.
            collapse_key=delivery.group_key if ntype.group_by or ntype.digest_window_s > 0 else None,
            channel_id=ntype.android_channel_id,
            sound=ntype.sound,
            ttl_s=ntype.ttl_s,
            badge=badge,
            link=link if isinstance(link, str) else None,
        )
        for device in devices:
            await self.push.queue_push(
                message,
                token=device.token,
                user_id=delivery.user_id,
                ref=delivery.ref,
                run_at=delivery.run_at,
                check=delivery.check,
            )
        return Receipt(ref=delivery.ref, check=delivery.check, endpoints=len(devices))

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
