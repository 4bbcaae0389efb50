"""Delivery channels: the ways a notification reaches a user.

The notification service (``realtimed.notify.service``) runs the pipeline:
templates, preferences, the out-of-app policy. A ``DeliveryChannel`` delivers.
The first two are the in-app inbox (``realtimed.notify.inbox.InAppChannel``,
``in_app``) and push through FCM (``realtimed.push.channel.FcmChannel``,
``push``); email (``realtimed.email.channel.EmailChannel``, ``email``, on a
node with ``email.enabled``) is the third, built as described below. The service knows them only through this Protocol, so a new channel
(email, SMS, ...) is a sibling package with a class that satisfies it, plus its
config section::

    # realtimed/config.py
    email: EmailConfig = _f(EmailConfig(), channel=True)   # the channel name is the section name

    # realtimed/daemon.py (_wire), where the channels are built
    channels=[InAppChannel(store, clock=clock, router=router), FcmChannel(push), EmailChannel(cfg.email, store=store, ...)]

Types use it by naming it in ``channels`` (``[[notify.types]]``), and users turn
it on or off per type like the others (``PUT /api/v1/notifications/preferences``
with ``{"type": ..., "email": false}``): preferences are stored per type and
channel name, so neither the store nor its migrations change.

Two kinds of channel:

- *immediate* (the inbox): called in the request, once, with one ``Delivery``
  per recipient who has it on, before any other channel. Its ``Receipt`` names
  the notification (``ref``, ``check``, ``data``) to the planned channels. A
  recipient it answers None for was a repeat (its dedupe key is already
  stored): no channel delivers to them again.
- *planned* (push, email, ...): called after the out-of-app policy decided
  (not while the user is active on a device, the digest window, the daily and
  hourly caps, quiet hours: ``realtimed.notify.policy``), from a job, one
  recipient at a time. ``run_at`` asks it to deliver no sooner (the end of the
  user's quiet hours). A channel that queues its deliveries verifies
  ``check`` with ``realtimed.notify.checks.still_wanted`` before one that
  waited goes out, and cancels them on ``withdraw``.

The delivery log (``realtimed.notify.delivery_log``, docs/protocol.md section
8.8): the pipeline logs what it decides for every channel (``skipped:preference``,
``skipped:active``, ``skipped:cap``, ``skipped:quiet_hours``, ``batched:digest``,
``skipped:no_endpoint`` for a ``None`` receipt). A channel logs what only it
knows, once it knows it, with the codes of ``realtimed.outcomes`` and no
others: ``delivered``, ``failed:<code>`` (``outcomes.failed``, e.g.
``outcomes.smtp_failed(550)`` for email), ``skipped:withdrawn``; it takes the
``DeliveryLog`` as a constructor argument, as the in-app and push channels do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import attrs

from realtimed.config import NotificationTypeConfig
from realtimed.notify.checks import DeliveryCheck

__all__ = ["Delivery", "DeliveryChannel", "Receipt"]


@attrs.frozen
class Delivery:
    """One notification for one user on one channel.

    Attributes:
        user_id: the recipient.
        type: the notification type (priority, grouping, TTL, sound and the
            other per-type settings a channel may use).
        title, body: rendered (for a type without ``push_content``, the
            private title and body).
        data: the app's data, with ``type`` and, when the inbox has it,
            ``notification_id`` and ``seq`` (a value of None means "not set").
        group_key: the type's group (``post_like:p1``); grouped types replace
            each other on a device.
        ref: what is delivered (``n<notification id>``, ``m<message id>``,
            ``ng<job>``...), unique per notification and user; ``withdraw`` names it.
        check: verified before a delivery that waited goes out.
        run_at: deliver no sooner than this (None: now).
        dedupe_key: the notification's dedupe key (immediate channels).
        vars: the template variables the title and body were rendered from
            (a channel with templates of its own renders them; a digest adds ``count``).
        addresses: endpoints the notification itself names for this recipient,
            by channel name (``email``: an address); a channel uses them instead of
            the recipient's stored ones.
        expires_at: the notification is of no use after this (None: never); a
            channel stores it with what it keeps and delivers nothing once it passed.
    """

    user_id: str
    type: NotificationTypeConfig
    title: str
    body: str
    data: Mapping[str, Any] = attrs.field(factory=dict)
    group_key: str = ""
    ref: str = ""
    check: DeliveryCheck | None = None
    run_at: datetime | None = None
    dedupe_key: str | None = None
    vars: Mapping[str, Any] = attrs.field(factory=dict)
    addresses: Mapping[str, str] = attrs.field(factory=dict)
    expires_at: datetime | None = None


@attrs.frozen
class Receipt:
    """What a channel did with one delivery.

    Attributes:
        ref: the delivery's name (an immediate channel names the notification here).
        check: what a later delivery of the same notification verifies.
        data: what planned channels add to ``Delivery.data`` (the inbox: ``notification_id``, ``seq``).
        endpoints: devices, addresses... the delivery was queued or made for.
    """

    ref: str
    check: DeliveryCheck | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict)
    endpoints: int = 1


class DeliveryChannel(Protocol):
    """A way notifications reach users (see the module docstring).

    Promises:
        ``deliver`` answers one entry per delivery, in order: a ``Receipt``, or
        None when nothing was delivered (an immediate channel: a repeated dedupe
        key; a planned one: no device or address to deliver to). It is
        durable when it returns: what it queued survives a restart.
        ``withdraw`` cancels queued deliveries that have not gone out; it may
        do nothing (a channel that delivers at once).

    Error handling:
        A store or backend that cannot be reached raises (``Unavailable``); the
        pipeline's job is then retried, and dedupe keys keep the deliveries
        already made single.
    """

    @property
    def name(self) -> str:
        """The channel's name in type ``channels``, preferences and config (``in_app``, ``push``)."""
        ...

    @property
    def immediate(self) -> bool:
        """True for the inbox: delivered in the request, before the planned channels."""
        ...

    def available(self) -> bool:
        """Whether this node can deliver on the channel now (push: a service account is set);
        a type's channel that is not available is skipped, as if the user had it off."""
        ...

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Receipt | None]: ...

    async def withdraw(self, *, user_id: str, refs: Sequence[str] | None) -> int:
        """Cancel the user's queued deliveries of ``refs``, or of every inbox
        notification when ``refs`` is None (a read-all); returns how many."""
        ...
