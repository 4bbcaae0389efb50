"""The in-app channel: the user's notification inbox, and live delivery to their devices.

``InAppChannel`` is the immediate ``DeliveryChannel`` (``realtimed.notify.channel``):
it stores one notification per recipient in one store transaction, each with
the user's next ``seq`` (a repeated dedupe key stores nothing and answers
None), then sends each new one as ``notification.new`` to every device of its
user. Its receipts name the notification to the planned channels: ref
``n<id>``, a ``NotificationCheck`` and ``{notification_id, seq}`` for their data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from prometheus_client import Counter

from realtimed.clock import WallClock
from realtimed.config import IN_APP_CHANNEL
from realtimed.delivery.router import Router
from realtimed.metrics import REGISTRY
from realtimed.notify.channel import Delivery, Receipt
from realtimed.notify.checks import NotificationCheck
from realtimed.notify.delivery_log import DeliveryLog
from realtimed.store.base import NewNotification, Store

__all__ = ["InAppChannel"]

NOTIFICATIONS: Final = Counter(
    "realtimed_notifications", "notifications stored in inboxes, by type", ["type"], registry=REGISTRY
)


class InAppChannel:
    """The inbox of every user, on every node.

    Args:
        store: the inboxes.
        clock: wall time.
        router: delivers ``notification.new`` live.
        deliveries: the delivery log (None: none); each new notification is
            logged ``delivered`` in the transaction that stores it.

    Error handling:
        A store that cannot be reached raises ``Unavailable`` before anything
        is delivered live; a live delivery never fails.
    """

    name: Final = IN_APP_CHANNEL
    immediate: Final = True
    #: Reports ``notification.new`` to the application (webhooks: ``WebhookService.emit``), set by the
    #: daemon; None reports nothing.
    event_sink: Callable[[str, Mapping[str, Any]], Awaitable[object]] | None = None


    def __init__(self, store: Store, *, clock: WallClock, router: Router, deliveries: DeliveryLog | None = None) -> None:
        self._store = store
        self._clock = clock
        self._router = router
        self._deliveries = deliveries

    def available(self) -> bool:
        return True

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Receipt | None]:
        if not deliveries:
            return []
        items = [
            NewNotification(
                user_id=d.user_id,
                type=d.type.name,
                title=d.title,
                body=d.body,
                data=dict(d.data),
                priority=d.type.priority,
                group_key=d.group_key,
                dedupe_key=d.dedupe_key,
                expires_at=d.expires_at,
            )
            for d in deliveries
        ]
        # Stored means delivered (the live sends below never fail): logged in the same transaction.
        logged = self._deliveries is not None and self._deliveries.enabled
        results = await self._store.insert_notifications(
            items=items, now=self._clock.now(), log_channel=self.name if logged else None
        )
        receipts: list[Receipt | None] = []
        created = []
        for record, new in results:
            if not new:
                receipts.append(None)
                continue
            created.append(record)
            receipts.append(
                Receipt(
                    ref=f"n{record.id}",
                    check=NotificationCheck(record.user_id, record.id, record.seq),
                    data={"notification_id": record.id, "seq": record.seq},
                )
            )
        for record in created:
            NOTIFICATIONS.labels(record.type).inc()
        for record in created:
            await self._router.to_users(
                (record.user_id,), "notification.new", {"notification": record.to_wire()}, seq=record.seq
            )
        if self.event_sink is not None:
            for record in created:
                await self.event_sink("notification.new", {"user_id": record.user_id, "notification": record.to_wire()})
        return receipts

    async def withdraw(self, *, user_id: str, refs: Sequence[str] | None) -> int:
        # The inbox itself is where reads and deletes happen; nothing is queued here.
        return 0
