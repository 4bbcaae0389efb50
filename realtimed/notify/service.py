"""The notification service: the policy pipeline, the inbox ops, the job kinds.

``notify(users, type, vars, data)`` (the server API) runs the pipeline of
DESIGN.md over the delivery channels it was built with
(``realtimed.notify.channel``: the in-app inbox and push through FCM first):

1. the type's templates (config) render title and body; a missing var is a
   ``VALIDATION_ERROR`` naming it;
2. each recipient's preference for the type and each channel applies (a
   channel the type does not use, or that this node cannot deliver on, is off
   for everyone);
3. the immediate channel (the in-app inbox) delivers to every recipient with it
   on, in one store transaction, each notification with the user's next
   ``seq`` (a repeated dedupe key changes nothing and reaches no channel),
   and each new one goes live to every device as ``notification.new``;
4. the planned channels (push, ...) are considered for recipients with one of
   them on: not while they are active on a connected device
   (``notify.push_skip_when_active``); the rest go to ``notify.push`` jobs of
   ``notify.plan_batch`` recipients, which apply, per recipient and in this
   order, the digest window (the first of a group in a window goes at once,
   the rest wait for the window's digest), the daily and per-type hourly caps,
   and quiet hours in the user's time zone (the delivery waits for their end);
   ``critical`` skips those three. The rules count per recipient, whatever the
   number of channels;
5. each planned channel the recipient has on delivers (push: one ``push.send``
   job per active device); reading or deleting the notification before it
   goes withdraws it (and it is checked again when it runs).

Each decision of steps 2 to 5 that keeps a delivery from going (or holds it) is
logged per user and channel in the delivery log (``realtimed.notify.delivery_log``,
codes in ``realtimed.outcomes``): with the request for steps 2 to 4's
preference and activity skips, with the planning job for the rest.

A notification may have an ``expires_at``: it is stored with it, lists and
unread counts skip it from then on, and no step after it delivers it (a plan
job, a delivery deferred past it, a ``push.send`` job that runs late).

``notify`` answers, per recipient and channel, what steps 2 to 4 decided at
once (``realtimed.outcomes``: ``delivered``, ``skipped:preference``,
``skipped:active``, ``skipped:duplicate``), or ``pending``. What a job decides
later and keeps from going (expiry, the digest, a cap, quiet hours) is
reported with the ``delivery.failed`` event (``event_sink``).

Chat hands each message for offline participants to the same steps 4 and 5 as
the ``new_message`` type through the ``chat.offline`` job kind (no inbox
entry: chat has its own unread counts); the delivery is dropped once the
recipient's read cursor has passed the message.

Job kinds and their payloads: ``realtimed.notify.jobs``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal

import attrs
import trio
from prometheus_client import Counter

from realtimed.api.ops import Caller, OpHandler
from realtimed.clock import WallClock, iso
from realtimed.config import Config, NotificationTypeConfig, NotifyConfig
from realtimed.delivery.router import Router
from realtimed.errors import ApiError, ValidationFailed
from realtimed.jobs.payload import PayloadError
from realtimed.jobs.runner import JobContext, JobRunner
from realtimed.live import Live
from realtimed.metrics import REGISTRY
from realtimed.notify.channel import Delivery, DeliveryChannel, Receipt
from realtimed.notify.checks import (
    ConversationCheck,
    DeliveryCheck,
    GroupCheck,
    MessageCheck,
    NotificationCheck,
    count_unread_group,
)
from realtimed.notify.delivery_log import DeliveryLog
from realtimed.notify.jobs import (
    CHAT_OFFLINE,
    NOTIFY_DIGEST,
    NOTIFY_PUSH,
    NOTIFY_SEND,
    ChatOffline,
    NotifyDigest,
    NotifyPlan,
    NotifySend,
    PlanItem,
)
from realtimed.notify.policy import (
    Activity,
    PushCaps,
    SharedCaps,
    cap_resets,
    digest_key,
    digest_window,
    is_active,
    quiet_until,
)
from realtimed.notify.types import type_table
from realtimed.outcomes import (
    BATCHED_DIGEST,
    CAP_DAILY,
    CAP_HOURLY,
    DELIVERED,
    SKIPPED_ACTIVE,
    SKIPPED_CAP,
    SKIPPED_DUPLICATE,
    SKIPPED_EXPIRED,
    SKIPPED_NO_ENDPOINT,
    SKIPPED_PREFERENCE,
    SKIPPED_QUIET_HOURS,
)
from realtimed.store.base import DeliveryEntry, NotificationPreference, Store, UserSettings
from realtimed.templates import TemplateError, render

__all__ = ["CHAT_TYPE", "PENDING", "NotifyResult", "NotifyService"]

log = logging.getLogger(__name__)

CHAT_TYPE: Final = "new_message"
#: A recipient's channel whose delivery a job decides later (reported then, by ``delivery.failed`` if it does not go).
PENDING: Final = "pending"
PLAN_CONCURRENCY: Final = 16
# Keys of a preferences entry that name no channel (``channels`` is what GET answers; PUT ignores it).
_PREFERENCE_KEYS: Final = ("type", "channels")

# A preferences update: (type, {channel: on}) pairs.
_Changes = list[tuple[str, dict[str, bool]]]

PUSH_DECISIONS: Final = Counter(
    "realtimed_notify_push_decisions",
    "what the pipeline decided about delivering out of the app (push and the other planned channels) to a "
    "user: queued, deferred_quiet, active, daily_cap, hourly_cap, digest_held, no_devices, read, off, expired",
    ["type", "decision"],
    registry=REGISTRY,
)


@attrs.frozen
class _Plan:
    """One delivery out of the app to consider for one user."""

    user_id: str
    type: NotificationTypeConfig
    vars: Mapping[str, Any]
    data: Mapping[str, Any]
    title: str
    body: str
    group_key: str
    ref: str
    check: DeliveryCheck | None
    digest: Literal["inbox", "chat"] | None  # how the digest counts; None: no digest for this delivery
    channels: tuple[str, ...]
    conversation_id: str | None = None
    addresses: Mapping[str, str] = attrs.field(factory=dict)  # endpoints the notification names, by channel
    expires_at: datetime | None = None
    notification_id: str | None = None


@attrs.frozen
class NotifyResult:
    """What ``notify`` did.

    Attributes:
        reached: the users stored in their inbox or considered for a planned channel.
        outcomes: per recipient (in request order), per channel of the type that
            this node delivers on, the code of what was decided at once
            (``realtimed.outcomes``), or ``PENDING`` when a job decides.
    """

    reached: int
    outcomes: dict[str, dict[str, str]]

    def recipients(self) -> list[dict[str, Any]]:
        """The ``recipients`` of the server API's answer."""
        return [{"user_id": user_id, "channels": channels} for user_id, channels in self.outcomes.items()]


def group_key(ntype: NotificationTypeConfig, values: Mapping[str, Any]) -> str:
    if ntype.group_by:
        return f"{ntype.name}:{values.get(ntype.group_by, '')}"
    return ntype.name


class NotifyService:
    """Notifications of one node: the pipeline, the inbox, the out-of-app policy.

    Args:
        config: the configuration in force (read at each use, so a reload applies).
        store: preferences, settings, inboxes.
        clock: wall time.
        router: delivers ``notification.*`` events live.
        jobs: the job runner (scheduled notifications, planning, digests).
        channels: the delivery channels, each under its own name (the in-app
            inbox, push through FCM, ...). The service knows them only through
            ``DeliveryChannel``.
        caps: the push caps counted by every node of a cluster (None: this node's memory).
        activity: activity on the other nodes of a cluster (None: one node).
        deliveries: the delivery log the pipeline reports its decisions to
            (None: none); ``run`` runs its writer.

    Resource handling:
        Holds no connection; ``run`` owns the delivery log's writer task
        (``deliveries``), the only task of its own.
        The per-user counts of the caps live in memory (see ``PushCaps``),
        or in Redis in a cluster (``caps``). In a cluster, activity on
        other nodes is read from their marks (``activity``).

    Error handling:
        A request with an unknown type or a missing var is refused with
        ``VALIDATION_ERROR`` before anything is stored. A store that cannot be
        reached raises ``Unavailable`` to the caller. A job handler's failure is
        retried by the job runner; a live delivery never fails the request.
    """

    def __init__(
        self,
        config: Live[Config],
        *,
        store: Store,
        clock: WallClock,
        router: Router,
        jobs: JobRunner,
        channels: Sequence[DeliveryChannel],
        caps: SharedCaps | None = None,
        activity: Activity | None = None,
        deliveries: DeliveryLog | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self.clock = clock
        self.router = router
        self.jobs = jobs
        self.channels: dict[str, DeliveryChannel] = {}
        for channel in channels:
            if channel.name in self.channels or channel.name in _PREFERENCE_KEYS:
                raise ValueError(f"a second delivery channel named {channel.name!r}")
            self.channels[channel.name] = channel
        self.caps: SharedCaps = caps or PushCaps()
        self.activity = activity
        self.deliveries = deliveries

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config.value

    @property
    def cfg(self) -> NotifyConfig:
        return self.config.notify

    def runner(self) -> JobRunner:
        return self.jobs

    @property
    def types(self) -> dict[str, NotificationTypeConfig]:
        return type_table(self.cfg)

    def type(self, name: str, field: str = "type") -> NotificationTypeConfig:
        """The type ``name``; an unknown one is a ``ValidationFailed`` naming ``field``."""
        ntype = self.types.get(name)
        if ntype is None:
            raise ValidationFailed(field, f"unknown notification type {name!r}")
        return ntype

    def channels_of(self, ntype: NotificationTypeConfig) -> list[DeliveryChannel]:
        """The type's channels that this node can deliver on now, immediate ones first."""
        found = [self.channels[n] for n in dict.fromkeys(ntype.channels) if n in self.channels]
        return sorted((c for c in found if c.available()), key=lambda c: not c.immediate)

    async def run(self, *, task_status: trio.TaskStatus[NotifyService] = trio.TASK_STATUS_IGNORED) -> None:
        log.info(
            "notifications: %d types (%s), channels %s",
            len(self.types),
            ", ".join(sorted(self.types)),
            ", ".join(f"{name}{'' if c.available() else ' (off)'}" for name, c in self.channels.items()),
        )
        async with trio.open_nursery() as nursery:
            if self.deliveries is not None:
                await nursery.start(self.deliveries.run)
            task_status.started(self)
            await trio.sleep_forever()

    def ops(self) -> dict[str, OpHandler]:
        """The ``notification.*`` ops (socket and ``POST /api/v1/ops/{op}``), for the
        daemon to add to the op registry."""
        return {
            "notification.list": self._op_list,
            "notification.read": self._op_read,
            "notification.read_all": self._op_read_all,
            "notification.delete": self._op_delete,
        }

    def register_jobs(self, runner: JobRunner) -> None:
        runner.register(NOTIFY_SEND, self._job_send)
        runner.register(NOTIFY_PUSH, self._job_plan)
        runner.register(NOTIFY_DIGEST, self._job_digest)
        runner.register(CHAT_OFFLINE, self._job_chat_offline)

    async def _active(self, user_id: str) -> bool:
        """The skip rule: is the user active on a connected device (of any node)?"""
        return user_id in await self._active_among([user_id])

    async def _active_among(self, user_ids: Sequence[str]) -> set[str]:
        """Those of the users active on a connected device: this node's, then (in a cluster) the others'."""
        router = self.router
        if not self.cfg.push_skip_when_active:
            return set()
        now, window = trio.current_time(), self.cfg.active_window_s
        found = {u for u in user_ids if is_active(router.user_sessions(u), now=now, window_s=window)}
        rest = [u for u in user_ids if u not in found]
        if rest and self.activity is not None:
            try:
                found |= await self.activity.active(rest)
            except ApiError as exc:
                # Pushing to an active user is the lesser harm than losing a push.
                log.warning("activity on other nodes unknown (%s); pushing as if inactive", exc.message)
        return found

    # -- caps ---------------------------------------------------------------------------------

    async def cap_state(self, user_id: str) -> dict[str, Any]:
        """The push caps in force for the user per type (used, limit, when the window
        ends) and whether they are in quiet hours now. The counts are those the
        pipeline keeps (this node's, or Redis's in a cluster)."""
        settings = await self.store.get_user_settings(user_id)
        now = self.clock.now()
        types = [self.types[name] for name in sorted(self.types)]
        daily_used, hourly_used = await self.caps.usage(
            user_id=user_id, types=[t.name for t in types], now=now, time_zone=settings.time_zone
        )
        day_ends, hour_ends = cap_resets(now, settings.time_zone)
        quiet = quiet_until(
            now, start=settings.quiet_hours_start, end=settings.quiet_hours_end, time_zone=settings.time_zone
        )
        entries = []
        for ntype in types:
            caps: list[dict[str, Any]] = []
            critical = ntype.priority == "critical"
            if not critical and self.cfg.daily_cap:
                caps.append({"cap": CAP_DAILY, "used": daily_used, "limit": self.cfg.daily_cap, "resets_at": iso(day_ends)})
            hourly = ntype.hourly_cap or self.cfg.hourly_cap_per_type
            if not critical and hourly:
                caps.append(
                    {"cap": CAP_HOURLY, "used": hourly_used.get(ntype.name, 0), "limit": hourly, "resets_at": iso(hour_ends)}
                )
            entries.append({"type": ntype.name, "critical": critical, "caps": caps})
        has_quiet = bool(settings.quiet_hours_start and settings.quiet_hours_end)
        return {
            "user_id": user_id,
            "time_zone": settings.time_zone,
            "quiet_hours": (
                {"start": settings.quiet_hours_start, "end": settings.quiet_hours_end} if has_quiet else None
            ),
            "in_quiet_hours": quiet is not None,
            "quiet_until": iso(quiet),
            "types": entries,
        }

    # -- the delivery log --------------------------------------------------------------------

    @property
    def _logging(self) -> bool:
        return self.deliveries is not None and self.deliveries.enabled

    def _log(
        self,
        entries: list[DeliveryEntry],
        user_id: str,
        ntype: NotificationTypeConfig,
        channels: Sequence[str],
        outcome: str,
        *,
        plan: _Plan | None = None,
        receipt: Receipt | None = None,
        ref: str = "",
        cap: str | None = None,
        deferred_until: datetime | None = None,
        detail: str = "",
    ) -> None:
        """Add an entry per channel to ``entries`` (when the log is on); the notification
        is named by the plan, or by the inbox's receipt."""
        deliveries = self.deliveries
        if deliveries is None or not channels or not deliveries.enabled:
            return
        notification_id: Any = None
        if plan is not None:
            ref, notification_id = plan.ref, plan.data.get("notification_id")
        elif receipt is not None:
            ref, notification_id = receipt.ref, receipt.data.get("notification_id")
        now = self.clock.now()
        for channel in channels:
            entries.append(
                deliveries.entry(
                    at=now, user_id=user_id, channel=channel, type=ntype.name, outcome=outcome, ref=ref,
                    notification_id=notification_id if isinstance(notification_id, str) else None,
                    cap=cap, deferred_until=deferred_until, detail=detail,
                )
            )

    async def _record(self, entries: list[DeliveryEntry]) -> None:
        if entries and self.deliveries is not None:
            await self.deliveries.record(entries)

    # -- the pipeline ------------------------------------------------------------------------

    def render(self, ntype: NotificationTypeConfig, values: Mapping[str, Any]) -> tuple[str, str]:
        """Title and body; raises ``ValidationFailed`` naming a missing var."""
        missing = [name for name in ntype.vars if name not in values]
        if missing:
            raise ValidationFailed("vars", f"type {ntype.name!r} needs {', '.join(missing)}")
        try:
            return render(ntype.title, values), render(ntype.body, values)
        except (KeyError, TemplateError) as exc:  # prevented by the config checks
            raise ValidationFailed("vars", f"type {ntype.name!r} cannot be rendered: {exc}") from None

    async def notify(
        self,
        *,
        user_ids: Sequence[str],
        type: str,
        vars: Mapping[str, Any],
        data: Mapping[str, Any],
        dedupe_key: str | None = None,
        scheduled_for: datetime | None = None,
        addresses: Mapping[str, Mapping[str, str]] | None = None,
        expires_at: datetime | None = None,
    ) -> NotifyResult:
        """Run the pipeline for ``user_ids``; answers how many users it reached
        (stored in their inbox, or considered for a planned channel) and what
        it decided for each. A notification ``scheduled_for`` a later time is
        queued whole and runs then; it answers the number of recipients, each
        channel ``PENDING``. After ``expires_at`` the notification has left the
        inbox and no channel delivers it. ``addresses`` names endpoints per
        recipient and channel (``{"u1": {"email": ...}}``), used instead of the
        stored ones.

        Raises:
            ValidationFailed: an unknown type, a missing var, or an ``expires_at``
                not after now (and ``scheduled_for``) or beyond ``notify.max_expiry_s``.
        """
        addresses = {u: dict(a) for u, a in (addresses or {}).items() if a}
        ntype = self.type(type)
        self.render(ntype, vars)
        users = list(dict.fromkeys(user_ids))
        now = self.clock.now()
        if expires_at is not None:
            start = max(now, scheduled_for) if scheduled_for is not None else now
            if expires_at <= start:
                what = "scheduled_for" if scheduled_for is not None and scheduled_for > now else "now"
                raise ValidationFailed("expires_at", f"must be after {what}")
            if (expires_at - start).total_seconds() > self.cfg.max_expiry_s:
                raise ValidationFailed(
                    "expires_at", f"must be at most notify.max_expiry_s ({self.cfg.max_expiry_s:g} s) after {iso(start)}"
                )
        if scheduled_for is not None and scheduled_for > now:
            payload = NotifySend(
                user_ids=tuple(users),
                type=ntype.name,
                vars=dict(vars),
                data=dict(data),
                dedupe_key=dedupe_key,
                expires_at=expires_at,
                addresses=addresses,
            )
            job = await self.runner().enqueue(
                NOTIFY_SEND,
                payload,
                run_at=scheduled_for,
                dedupe_key=f"notify:{dedupe_key}" if dedupe_key else None,
            )
            log.info("job %s: %s to %d user(s) scheduled for %s", job.id, ntype.name, len(users), iso(scheduled_for))
            names = [c.name for c in self.channels_of(ntype)]
            return NotifyResult(len(users), {u: dict.fromkeys(names, PENDING) for u in users})
        return await self._deliver(ntype, users, vars, data, dedupe_key, expires_at=expires_at, addresses=addresses)

    async def _deliver(
        self,
        ntype: NotificationTypeConfig,
        users: Sequence[str],
        values: Mapping[str, Any],
        data: Mapping[str, Any],
        dedupe_key: str | None,
        *,
        request_id: str | None = None,
        addresses: Mapping[str, Mapping[str, str]] | None = None,
        expires_at: datetime | None = None,
    ) -> NotifyResult:
        title, body = self.render(ntype, values)
        channels = self.channels_of(ntype)
        decided: dict[str, dict[str, str]] = {u: {} for u in users}
        if expires_at is not None and expires_at <= self.clock.now():
            # A scheduled notification whose time came after its expiry.
            for user_id in users:
                decided[user_id] = dict.fromkeys((c.name for c in channels), SKIPPED_EXPIRED)
            log.info("%s to %d user(s) expired at %s before it went out", ntype.name, len(users), iso(expires_at))
            return NotifyResult(0, decided)
        prefs: dict[str, NotificationPreference] = (
            await self.store.get_preferences_for(user_ids=users, type=ntype.name) if channels else {}
        )
        group = group_key(ntype, values)
        receipts: dict[str, Receipt] = {}
        repeats: set[str] = set()
        for channel in channels:
            if not channel.immediate:
                continue
            targets = [u for u in users if prefs[u].enabled(channel.name)]
            for user_id in users:
                if user_id not in targets:
                    decided[user_id][channel.name] = SKIPPED_PREFERENCE
            if not targets:
                continue
            deliveries = [
                Delivery(
                    user_id=u,
                    type=ntype,
                    title=title,
                    body=body,
                    data=dict(data),
                    group_key=group,
                    dedupe_key=dedupe_key,
                    expires_at=expires_at,
                )
                for u in targets
            ]
            for user_id, receipt in zip(targets, await channel.deliver(deliveries), strict=True):
                if receipt is None:
                    repeats.add(user_id)
                    decided[user_id][channel.name] = SKIPPED_DUPLICATE
                else:
                    receipts.setdefault(user_id, receipt)
                    decided[user_id][channel.name] = DELIVERED
        entries: list[DeliveryEntry] = []
        if self._logging:
            for user_id in users:
                if user_id in repeats:
                    continue
                off = [c.name for c in channels if not prefs[user_id].enabled(c.name)]
                self._log(entries, user_id, ntype, off, SKIPPED_PREFERENCE, receipt=receipts.get(user_id))
        planned = [c for c in channels if not c.immediate]
        candidates: list[PlanItem] = []
        planned_only = 0
        if planned:
            on = {u: tuple(c.name for c in planned if prefs[u].enabled(c.name)) for u in users if u not in repeats}
            for user_id in users:
                for channel in planned:
                    if user_id in repeats:
                        decided[user_id][channel.name] = SKIPPED_DUPLICATE
                    elif channel.name not in on[user_id]:
                        decided[user_id][channel.name] = SKIPPED_PREFERENCE
            wanted = [u for u in users if on.get(u)]
            planned_only = sum(1 for u in wanted if u not in receipts)
            active = await self._active_among(wanted)
            for user_id in wanted:
                verdict = SKIPPED_ACTIVE if user_id in active else PENDING
                decided[user_id].update(dict.fromkeys(on[user_id], verdict))
                if user_id in active:
                    PUSH_DECISIONS.labels(ntype.name, "active").inc()
                    self._log(entries, user_id, ntype, on[user_id], SKIPPED_ACTIVE, receipt=receipts.get(user_id))
                    continue
                check = receipts[user_id].check if user_id in receipts else None
                if isinstance(check, NotificationCheck):
                    candidates.append(PlanItem(user_id, check.id, check.seq, on[user_id]))
                else:
                    candidates.append(PlanItem(user_id, None, None, on[user_id]))
        if candidates:
            await self._queue_plans(
                ntype, candidates, values, data, dedupe_key, request_id or secrets.token_hex(8), addresses or {}, expires_at
            )
        await self._record(entries)
        log.info(
            "%s to %d user(s): %d in the inbox, %d out-of-app candidate(s)",
            ntype.name, len(users), len(receipts), len(candidates),
        )
        return NotifyResult(len(receipts) + planned_only, decided)

    async def _queue_plans(
        self,
        ntype: NotificationTypeConfig,
        candidates: list[PlanItem],
        values: Mapping[str, Any],
        data: Mapping[str, Any],
        dedupe_key: str | None,
        request_id: str,
        addresses: Mapping[str, Mapping[str, str]],
        expires_at: datetime | None,
    ) -> None:
        """One ``notify.push`` job per ``notify.plan_batch`` recipients, queued at
        once: the first plans start while the rest are still being queued, and
        the caller should not wait on them one by one."""
        runner = self.runner()
        batch = self.cfg.plan_batch

        async def one(items: list[PlanItem]) -> None:
            payload = NotifyPlan(
                type=ntype.name,
                items=tuple(items),
                vars=dict(values),
                data=dict(data),
                dedupe_key=dedupe_key,
                request_id=request_id,
                addresses={i.user_id: addresses[i.user_id] for i in items if i.user_id in addresses},
                expires_at=expires_at,
            )
            await runner.enqueue(NOTIFY_PUSH, payload)

        async with trio.open_nursery() as nursery:
            for start in range(0, len(candidates), batch):
                nursery.start_soon(one, candidates[start : start + batch])

    # -- job kinds ---------------------------------------------------------------------------

    async def _job_send(self, ctx: JobContext, p: NotifySend) -> None:
        """A scheduled notification, at its time."""
        ntype = self.types.get(p.type)
        if ntype is None:
            log.warning("job %s: notification type %r is no longer configured; dropped", ctx.job_id, p.type)
            return
        result = await self._deliver(
            ntype, p.user_ids, p.vars, p.data, p.dedupe_key, request_id=ctx.job_id, expires_at=p.expires_at,
            addresses=p.addresses,
        )
        log.info("job %s: scheduled %s reached %d user(s)", ctx.job_id, ntype.name, result.reached)

    async def _job_plan(self, ctx: JobContext, p: NotifyPlan) -> None:
        """Out-of-app planning for a batch of recipients of one notification."""
        ntype = self.types.get(p.type)
        if ntype is None:
            log.warning("job %s: notification type %r is no longer configured; no push", ctx.job_id, p.type)
            return
        values, data = dict(p.vars), dict(p.data)
        title, body = self.render(ntype, values)
        settings = await self.store.get_user_settings_many([item.user_id for item in p.items])
        group = group_key(ntype, values)
        fallback_ref = f"nd{p.dedupe_key}" if p.dedupe_key else f"nr{p.request_id or ctx.job_id}"
        plans = []
        for item in p.items:
            if item.notification_id is not None and item.seq is not None:
                plan = _Plan(
                    user_id=item.user_id,
                    type=ntype,
                    vars=values,
                    data={**data, "notification_id": item.notification_id, "seq": item.seq, "type": ntype.name},
                    title=title,
                    body=body,
                    group_key=group,
                    ref=f"n{item.notification_id}",
                    check=NotificationCheck(item.user_id, item.notification_id, item.seq),
                    digest="inbox",
                    channels=item.channels,
                    addresses=p.addresses.get(item.user_id, {}),
                    expires_at=p.expires_at,
                    notification_id=item.notification_id,
                )
            else:
                # Not in the inbox (in-app off): nothing to point at, nothing to digest.
                plan = _Plan(
                    user_id=item.user_id,
                    type=ntype,
                    vars=values,
                    data={**data, "type": ntype.name},
                    title=title,
                    body=body,
                    group_key=group,
                    ref=fallback_ref,
                    check=None,
                    digest=None,
                    channels=item.channels,
                    addresses=p.addresses.get(item.user_id, {}),
                    expires_at=p.expires_at,
                )
            plans.append(plan)
        await self._consider_all(plans, settings, ctx.job_id)

    async def _consider_all(self, plans: Sequence[_Plan], settings: Mapping[str, UserSettings], job_id: str) -> None:
        """The policy for every plan (up to ``PLAN_CONCURRENCY`` at once), then one
        ``deliver`` per planned channel for all the plans that go out."""
        limiter = trio.Semaphore(PLAN_CONCURRENCY)
        decided: dict[int, tuple[_Plan, str, str, datetime | None]] = {}
        entries: list[DeliveryEntry] = []

        async def one(index: int, plan: _Plan) -> None:
            async with limiter:
                user_settings = settings.get(plan.user_id) or UserSettings(plan.user_id)
                decision = await self._consider(plan, user_settings, job_id, entries)
                if decision is not None:
                    decided[index] = (plan, *decision)

        async with trio.open_nursery() as nursery:
            for index, plan in enumerate(plans):
                nursery.start_soon(one, index, plan)
        await self._send_all([decided[i] for i in sorted(decided)], job_id, entries)
        await self._record(entries)

    async def _consider(
        self, plan: _Plan, settings: UserSettings, job_id: str, entries: list[DeliveryEntry]
    ) -> tuple[str, str, datetime | None] | None:
        """Digest window, caps and quiet hours for one user: the title, body and
        ``run_at`` the planned channels deliver with, or None when nothing goes."""
        ntype = plan.type
        now = self.clock.now()
        if plan.expires_at is not None and plan.expires_at <= now:
            PUSH_DECISIONS.labels(ntype.name, "expired").inc()
            self._log(entries, plan.user_id, ntype, plan.channels, SKIPPED_EXPIRED, plan=plan, detail=f"expired at {iso(plan.expires_at)}")
            await self._report_skip(plan, SKIPPED_EXPIRED, f"expired at {iso(plan.expires_at)}", job_id)
            return None
        critical = ntype.priority == "critical"
        digest = not critical and ntype.digest_window_s > 0 and plan.digest is not None
        if digest and not await self._open_digest(plan, settings, now):
            PUSH_DECISIONS.labels(ntype.name, "digest_held").inc()
            log.debug("job %s: push to %s held for the digest of %s", job_id, plan.user_id, plan.group_key)
            self._log(entries, plan.user_id, ntype, plan.channels, BATCHED_DIGEST, plan=plan, detail=plan.group_key)
            await self._report_skip(plan, BATCHED_DIGEST, f"held for the digest of {plan.group_key}", job_id)
            return None
        if not critical:
            held = await self._take_cap(ntype, plan.user_id, settings, now, job_id)
            if held is not None:
                self._log(entries, plan.user_id, ntype, plan.channels, SKIPPED_CAP, plan=plan, cap=held)
                await self._report_skip(plan, SKIPPED_CAP, f"{held} cap reached", job_id)
                return None
        run_at = None if critical else quiet_until(
            now, start=settings.quiet_hours_start, end=settings.quiet_hours_end, time_zone=settings.time_zone
        )
        if run_at is not None and plan.expires_at is not None and run_at >= plan.expires_at:
            PUSH_DECISIONS.labels(ntype.name, "expired").inc()
            self._log(entries, plan.user_id, ntype, plan.channels, SKIPPED_EXPIRED, plan=plan, detail=f"expired at {iso(plan.expires_at)}")
            await self._report_skip(
                plan, SKIPPED_QUIET_HOURS, f"quiet hours last past its expiry ({iso(plan.expires_at)})", job_id
            )
            return None
        if run_at is not None:
            await self._report_skip(plan, SKIPPED_QUIET_HOURS, f"deferred to {iso(run_at)}", job_id, run_at=run_at)
        title, body = plan.title, plan.body
        if not ntype.push_content:
            title, body = render(ntype.private_title, plan.vars), render(ntype.private_body, plan.vars)
        return title, body, run_at

    async def _take_cap(
        self, ntype: NotificationTypeConfig, user_id: str, settings: UserSettings, now: datetime, job_id: str
    ) -> str | None:
        """Count one delivery against the caps; None if it may go, else which cap
        holds it back (``daily``, ``hourly``)."""
        held = await self.caps.count(
            user_id=user_id,
            type=ntype.name,
            now=now,
            time_zone=settings.time_zone,
            daily_cap=self.cfg.daily_cap,
            hourly_cap=ntype.hourly_cap or self.cfg.hourly_cap_per_type,
        )
        if held is not None:
            PUSH_DECISIONS.labels(ntype.name, held).inc()
            log.info("job %s: no %s push to %s: %s reached", job_id, ntype.name, user_id, held.replace("_", " "))
            return CAP_DAILY if held == "daily_cap" else CAP_HOURLY
        return None

    async def _report_skip(
        self, plan: _Plan, code: str, why: str, job_id: str, *, run_at: datetime | None = None
    ) -> None:
        """``delivery.failed`` for each planned channel of ``plan`` that a policy held
        (``run_at``: quiet hours deferred it to then, it may still go)."""
        await self._report_held(
            user_id=plan.user_id,
            type_name=plan.type.name,
            channels=plan.channels,
            notification_id=plan.notification_id,
            code=code,
            why=why,
            job_id=job_id,
            run_at=run_at,
        )

    async def _report_held(
        self,
        *,
        user_id: str,
        type_name: str,
        channels: Sequence[str],
        notification_id: str | None,
        code: str,
        why: str,
        job_id: str,
        run_at: datetime | None = None,
    ) -> None:
        sink = self.event_sink
        if sink is None:
            return
        for channel in channels:
            data: dict[str, Any] = {
                "channel": channel,
                "code": code,
                "error": why,
                "user_id": user_id,
                "token": None,
                "job_id": job_id,
                "type": type_name,
                "notification_id": notification_id,
            }
            if run_at is not None:
                data["run_at"] = iso(run_at)
            try:
                await sink("delivery.failed", data)
            except Exception as exc:  # the decision stands
                log.error("job %s: delivery.failed not reported: %s", job_id, exc)

    async def _open_digest(self, plan: _Plan, settings: UserSettings, now: datetime) -> bool:
        """Queue the digest of this window (once per user, group and window);
        True if this delivery is the window's first, which goes out at once."""
        assert plan.digest is not None
        start, end = digest_window(now, plan.type.digest_window_s)
        run_at = (
            quiet_until(end, start=settings.quiet_hours_start, end=settings.quiet_hours_end, time_zone=settings.time_zone)
            or end
        )
        payload = NotifyDigest(
            user_id=plan.user_id,
            type=plan.type.name,
            group_key=plan.group_key,
            since=start,
            until=end,
            first_ref=plan.ref,
            source=plan.digest,
            vars=dict(plan.vars),
            data=dict(plan.data),
            conversation_id=plan.conversation_id,
            channels=plan.channels,
        )
        job = await self.runner().enqueue(
            NOTIFY_DIGEST, payload, run_at=run_at, dedupe_key=digest_key(plan.user_id, plan.group_key, start)
        )
        try:
            return NOTIFY_DIGEST.decode(job.payload).first_ref == plan.ref
        except PayloadError:
            return False  # a digest this version cannot read holds the window; it fails when it runs

    async def _send_all(
        self, sends: Sequence[tuple[_Plan, str, str, datetime | None]], job_id: str, entries: list[DeliveryEntry]
    ) -> None:
        """Each planned channel of each plan that this node can deliver on delivers:
        all of its plans in one call. A channel with nowhere to deliver is logged
        ``skipped:no_endpoint``, one that waits for quiet hours ``skipped:quiet_hours``."""
        if not sends:
            return
        deliveries = [
            Delivery(
                user_id=plan.user_id,
                type=plan.type,
                title=title,
                body=body,
                data=plan.data,
                group_key=plan.group_key,
                ref=plan.ref,
                check=plan.check,
                run_at=run_at,
                vars=plan.vars,
                addresses=plan.addresses,
                expires_at=plan.expires_at,
            )
            for plan, title, body, run_at in sends
        ]
        reached: list[list[str]] = [[] for _ in sends]
        names = dict.fromkeys(name for plan, *_ in sends for name in plan.channels)
        for name in names:
            channel = self.channels.get(name)
            if channel is None or channel.immediate or not channel.available():
                continue
            mine = [i for i, (plan, *_) in enumerate(sends) if name in plan.channels]
            receipts = await channel.deliver([deliveries[i] for i in mine])
            for i, receipt in zip(mine, receipts, strict=True):
                plan, run_at = sends[i][0], sends[i][3]
                if receipt is not None:
                    reached[i].append(f"{name} ({receipt.endpoints})")
                    if run_at is not None:
                        self._log(entries, plan.user_id, plan.type, (name,), SKIPPED_QUIET_HOURS, plan=plan, deferred_until=run_at)
                else:
                    self._log(entries, plan.user_id, plan.type, (name,), SKIPPED_NO_ENDPOINT, plan=plan)
        for (plan, _title, _body, run_at), went in zip(sends, reached, strict=True):
            ntype = plan.type
            if not went:
                PUSH_DECISIONS.labels(ntype.name, "no_devices").inc()
                continue
            PUSH_DECISIONS.labels(ntype.name, "deferred_quiet" if run_at is not None else "queued").inc()
            log.debug(
                "job %s: %s to %s by %s%s",
                job_id, ntype.name, plan.user_id, ", ".join(went), f" at {iso(run_at)} (quiet hours)" if run_at else "",
            )

    async def _job_digest(self, ctx: JobContext, p: NotifyDigest) -> None:
        """At the end of a digest window: one delivery summing up the group, if more than one came."""
        ntype = self.types.get(p.type)
        if ntype is None:
            return
        user_id = p.user_id
        check: DeliveryCheck
        if p.source == "chat":
            assert p.conversation_id is not None  # the payload's decoder requires it
            member = await self.store.get_member(p.conversation_id, user_id)
            count = 0 if member is None or not member.active else member.unread_count
            check = ConversationCheck(user_id, p.conversation_id)
        else:
            count = await count_unread_group(
                self.store, user_id=user_id, group_key=p.group_key, since=p.since, until=p.until, now=self.clock.now()
            )
            check = GroupCheck(user_id, p.group_key, p.since, p.until)
        if count < 2:
            # The first went at once; nothing more came, or it was read.
            log.debug("job %s: digest of %s for %s: %d unread, no push", ctx.job_id, p.group_key, user_id, count)
            return
        entries: list[DeliveryEntry] = []
        ref = ("mg" if p.source == "chat" else "ng") + ctx.job_id

        async def report(code: str, why: str) -> None:
            await self._report_held(
                user_id=user_id,
                type_name=ntype.name,
                channels=p.channels,
                notification_id=None,
                code=code,
                why=f"digest of {p.group_key}: {why}",
                job_id=ctx.job_id,
            )

        if await self._active(user_id):
            PUSH_DECISIONS.labels(ntype.name, "active").inc()
            self._log(entries, user_id, ntype, p.channels, SKIPPED_ACTIVE, ref=ref)
            await self._record(entries)
            await report(SKIPPED_ACTIVE, "active on a connected device")
            return
        settings = await self.store.get_user_settings(user_id)
        now = self.clock.now()
        held = await self._take_cap(ntype, user_id, settings, now, ctx.job_id)
        if held is not None:
            self._log(entries, user_id, ntype, p.channels, SKIPPED_CAP, ref=ref, cap=held)
            await self._record(entries)
            await report(SKIPPED_CAP, f"{held} cap reached")
            return
        values = {**p.vars, "count": count}
        if ntype.push_content:
            title = render(ntype.digest_title or ntype.title, values)
            body = render(ntype.digest_body, values)
        else:
            title, body = render(ntype.private_title, values), render(ntype.private_body, values)
        run_at = quiet_until(
            now, start=settings.quiet_hours_start, end=settings.quiet_hours_end, time_zone=settings.time_zone
        )
        plan = _Plan(
            user_id=user_id,
            type=ntype,
            vars=values,
            # The first notification's (or message's) id and seq do not name the digest.
            data={**p.data, "count": count, "notification_id": None, "message_id": None, "seq": None},
            title=title,
            body=body,
            group_key=p.group_key,
            ref=ref,
            check=check,
            digest=None,
            channels=p.channels,
        )
        log.info("job %s: digest push to %s: %s", ctx.job_id, user_id, body)
        await self._send_all([(plan, title, body, run_at)], ctx.job_id, entries)
        await self._record(entries)

    async def _job_chat_offline(self, ctx: JobContext, p: ChatOffline) -> None:
        """A chat message for participants with no connected device: a ``new_message`` delivery each."""
        message = await self.store.get_message(p.message_id)
        if message is None or message.deleted:
            log.info("job %s: message %s is gone; no push", ctx.job_id, p.message_id)
            return
        ntype = self.types.get(CHAT_TYPE)
        if ntype is None:
            return
        planned = [c for c in self.channels_of(ntype) if not c.immediate]
        if not planned:
            return
        conversation_id = p.conversation_id or message.conversation_id
        recipients = [u for u in p.recipients if u != message.sender_id]
        if not recipients:
            return
        prefs = await self.store.get_preferences_for(user_ids=recipients, type=CHAT_TYPE)
        settings = await self.store.get_user_settings_many(recipients)
        values = {
            "sender_name": p.sender_name or message.sender_id,
            "body": message.body or f"[{message.type}]",
            "conversation_id": conversation_id,
        }
        try:
            title, body = self.render(ntype, values)
        except ValidationFailed as exc:
            log.error("job %s: the new_message type cannot render a chat message: %s", ctx.job_id, exc.message)
            return
        plans = []
        entries: list[DeliveryEntry] = []
        ref = f"m{message.id}"
        for user_id in recipients:
            channels = tuple(c.name for c in planned if prefs[user_id].enabled(c.name))
            off = [c.name for c in planned if c.name not in channels]
            self._log(entries, user_id, ntype, off, SKIPPED_PREFERENCE, ref=ref)
            if not channels:
                PUSH_DECISIONS.labels(CHAT_TYPE, "off").inc()
                continue
            member = await self.store.get_member(conversation_id, user_id)
            if member is None or not member.active or member.muted:
                continue
            if member.read_seq >= message.seq:
                PUSH_DECISIONS.labels(CHAT_TYPE, "read").inc()
                continue
            if await self._active(user_id):
                PUSH_DECISIONS.labels(CHAT_TYPE, "active").inc()
                self._log(entries, user_id, ntype, channels, SKIPPED_ACTIVE, ref=ref)
                continue
            plans.append(
                _Plan(
                    user_id=user_id,
                    type=ntype,
                    vars=values,
                    data={"type": CHAT_TYPE, "conversation_id": conversation_id, "message_id": message.id, "seq": message.seq},
                    title=title,
                    body=body,
                    group_key=f"chat:{conversation_id}",
                    ref=ref,
                    check=MessageCheck(user_id, conversation_id, message.seq),
                    digest="chat",
                    channels=channels,
                    conversation_id=conversation_id,
                )
            )
        await self._record(entries)
        await self._consider_all(plans, settings, ctx.job_id)

    async def count_unread_group(self, *, user_id: str, group_key: str, since: datetime, until: datetime) -> int:
        """Unread inbox notifications of one group created in ``[since, until)``."""
        return await count_unread_group(self.store, user_id=user_id, group_key=group_key, since=since, until=until)

    #: Reports ``notification.read`` to the application (webhooks: ``WebhookService.emit``), set by the
    #: daemon; None reports nothing.
    event_sink: Callable[[str, Mapping[str, Any]], Awaitable[object]] | None = None

    # -- the inbox ---------------------------------------------------------------------------

    async def list(
        self, user_id: str, *, cursor: str | None, after_seq: int | None, unread_only: bool, limit: int
    ) -> dict[str, Any]:
        records, next_cursor = await self.store.list_notifications(
            user_id=user_id,
            cursor=cursor,
            after_seq=after_seq,
            unread_only=unread_only,
            limit=limit,
            now=self.clock.now(),
        )
        return {"notifications": [r.to_wire() for r in records], "next_cursor": next_cursor}

    async def read(self, user_id: str, ids: Sequence[str]) -> dict[str, Any]:
        unread = await self.store.mark_notifications_read(user_id=user_id, ids=ids, now=self.clock.now())
        await self._to_user(user_id, "notification.read", {"ids": list(ids), "unread_count": unread})
        if self.event_sink is not None:
            await self.event_sink("notification.read", {"user_id": user_id, "ids": list(ids), "unread_count": unread})
        await self._withdraw(user_id, [f"n{notification_id}" for notification_id in ids])
        return {"unread_count": unread}

    async def read_all(self, user_id: str) -> dict[str, Any]:
        up_to, unread = await self.store.mark_all_notifications_read(user_id=user_id, now=self.clock.now())
        await self._to_user(user_id, "notification.read", {"up_to_seq": up_to, "unread_count": unread})
        if self.event_sink is not None:
            await self.event_sink(
                "notification.read", {"user_id": user_id, "up_to_seq": up_to, "unread_count": unread}
            )
        await self._withdraw(user_id, None)
        return {"unread_count": unread}

    async def delete(self, user_id: str, ids: Sequence[str]) -> dict[str, Any]:
        unread = await self.store.delete_notifications(user_id=user_id, ids=ids, now=self.clock.now())
        await self._to_user(user_id, "notification.deleted", {"ids": list(ids), "unread_count": unread})
        await self._withdraw(user_id, [f"n{notification_id}" for notification_id in ids])
        return {"unread_count": unread}

    async def unread_count(self, user_id: str) -> int:
        count: int = await self.store.notification_unread_count(user_id, now=self.clock.now())
        return count

    async def _to_user(self, user_id: str, event: str, data: dict[str, Any]) -> None:
        await self.router.to_users((user_id,), event, data)

    async def _withdraw(self, user_id: str, refs: Sequence[str] | None) -> None:
        """Every channel cancels its queued deliveries of ``refs`` (None: of the whole inbox)."""
        cancelled = 0
        for channel in self.channels.values():
            cancelled += await channel.withdraw(user_id=user_id, refs=refs)
        if cancelled:
            what = "read all" if refs is None else f"read or deleted {len(refs)} notification(s)"
            log.info("user %s %s: %d queued deliveries cancelled", user_id, what, cancelled)

    # -- ops ---------------------------------------------------------------------------------

    async def _op_list(self, caller: Caller, value: Any) -> dict[str, Any]:
        return await self.list(
            caller.user_id,
            cursor=value.cursor,
            after_seq=value.after_seq,
            unread_only=value.unread_only,
            limit=value.limit,
        )

    async def _op_read(self, caller: Caller, value: Any) -> dict[str, Any]:
        return await self.read(caller.user_id, value.ids)

    async def _op_read_all(self, caller: Caller, value: Any) -> dict[str, Any]:
        return await self.read_all(caller.user_id)

    async def _op_delete(self, caller: Caller, value: Any) -> dict[str, Any]:
        return await self.delete(caller.user_id, value.ids)

    # -- preferences -------------------------------------------------------------------------

    async def preferences(self, user_id: str) -> dict[str, Any]:
        """Per type: ``type``, one boolean per channel of this node (``in_app``,
        ``push``, ...) and ``channels``, the channels the type uses; then the
        quiet hours and the time zone."""
        stored = {p.type: p for p in await self.store.get_preferences(user_id)}
        settings: UserSettings = await self.store.get_user_settings(user_id)
        types = []
        for name, ntype in sorted(self.types.items()):
            pref = stored.get(name) or NotificationPreference(user_id, name)
            entry: dict[str, Any] = {"type": name}
            for channel in self.channels:
                entry[channel] = pref.enabled(channel)
            entry["channels"] = list(ntype.channels)
            types.append(entry)
        quiet = None
        if settings.quiet_hours_start and settings.quiet_hours_end:
            quiet = {"start": settings.quiet_hours_start, "end": settings.quiet_hours_end}
        return {"types": types, "quiet_hours": quiet, "time_zone": settings.time_zone}

    def _type_changes(self, types: Any) -> _Changes:
        """``types`` of a preferences update: ``[{type, <channel>: bool, ...}]``."""
        if not isinstance(types, list):
            raise ValidationFailed("types", "must be a list of {type, <channel>: true or false}")
        changes: _Changes = []
        for i, item in enumerate(types):
            if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
                raise ValidationFailed(f"types[{i}]", "must be an object with a type")
            self.type(item["type"], f"types[{i}].type")
            settings: dict[str, bool] = {}
            for key, value in item.items():
                if key in _PREFERENCE_KEYS:
                    continue
                field = f"types[{i}].{str(key)[:64]}"
                if key not in self.channels:
                    raise ValidationFailed(field, f"not a delivery channel of this node ({', '.join(self.channels)})")
                if value is None:
                    continue
                if not isinstance(value, bool):
                    raise ValidationFailed(field, "must be a boolean")
                settings[key] = value
            changes.append((item["type"], settings))
        return changes

    async def set_preferences(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a partial update: ``types`` (each ``{type, <channel>?: bool}``, the
        channels being ``in_app``, ``push`` and any other of this node; a channel
        not named keeps its setting), ``quiet_hours`` (``{start, end}`` or null),
        ``time_zone``."""
        changes = self._type_changes(body.get("types", []))
        settings: UserSettings = await self.store.get_user_settings(user_id)
        start, end, zone_name = settings.quiet_hours_start, settings.quiet_hours_end, settings.time_zone
        settings_changed = False
        if "quiet_hours" in body:
            quiet = body["quiet_hours"]
            if quiet is None:
                start = end = None
            elif isinstance(quiet, Mapping) and isinstance(quiet.get("start"), str) and isinstance(quiet.get("end"), str):
                start, end = quiet["start"], quiet["end"]
            else:
                raise ValidationFailed("quiet_hours", 'must be null or {"start": "HH:MM", "end": "HH:MM"}')
            settings_changed = True
        if "time_zone" in body:
            if not isinstance(body["time_zone"], str):
                raise ValidationFailed("time_zone", "must be an IANA time zone name")
            zone_name = body["time_zone"]
            settings_changed = True
        if settings_changed:
            await self.store.set_user_settings(
                user_id=user_id, quiet_hours_start=start, quiet_hours_end=end, time_zone=zone_name
            )
        for name, channels in changes:
            if channels:
                await self.store.set_preference(user_id=user_id, type=name, channels=channels)
        return await self.preferences(user_id)
