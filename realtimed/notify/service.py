"""The notification service: the policy pipeline, the inbox ops, the job kinds.

``notify(users, type, vars, data)`` (the server API) runs the pipeline of
DESIGN.md:

1. the type's templates (config) render title and body; a missing var is a
   ``VALIDATION_ERROR`` naming it;
2. each recipient's preference for the type and channel applies (a channel
   the type does not use is off for everyone);
3. in one store transaction every recipient with the in-app channel on gets the
   notification with their next ``seq`` (a repeated dedupe key changes
   nothing), and each new one goes live to every device as ``notification.new``;
4. push is considered for recipients with the push channel on: not while they
   are active on a connected device (``notify.push_skip_when_active``); the
   rest go to ``notify.push`` jobs of ``notify.plan_batch`` recipients, which
   apply, per recipient and in this order, the digest window (the first of a
   group in a window is pushed, the rest wait for the window's digest push),
   the daily and per-type hourly caps, and quiet hours in the user's time zone
   (the push waits for their end); ``critical`` skips those three;
5. one ``push.send`` job per active device; reading or deleting the
   notification before it runs cancels it (and it checks again when it runs).

Chat hands each message for offline participants to the same push steps as the
``new_message`` type through the ``chat.offline`` job kind (no inbox entry:
chat has its own unread counts); the push is dropped once the recipient's read
cursor has passed the message.

Job kinds: ``notify.send`` (a notification scheduled for later, run at its
time), ``notify.push`` (push planning), ``notify.digest`` (a window's digest
push) and ``chat.offline``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import attrs
import trio
from prometheus_client import Counter

from realtimed.clock import WallClock, iso, parse_iso
from realtimed.config import Config, NotificationTypeConfig, NotifyConfig
from realtimed.errors import ApiError, ValidationFailed
from realtimed.gateway.ops import Caller, OpRegistry
from realtimed.jobs.runner import JobContext, JobRunner
from realtimed.live import Live
from realtimed.metrics import REGISTRY
from realtimed.notify.policy import (
    Activity,
    PushCaps,
    SharedCaps,
    digest_key,
    digest_window,
    inbox_push_prefix,
    is_active,
    push_prefix,
    quiet_until,
)
from realtimed.notify.templates import TemplateError, render
from realtimed.notify.types import type_table
from realtimed.push.messages import build_message
from realtimed.push.service import PushService
from realtimed.router import Router
from realtimed.store.base import NewNotification, NotificationRecord, Store, UserSettings

__all__ = ["CHAT_OFFLINE", "NOTIFY_DIGEST", "NOTIFY_PUSH", "NOTIFY_SEND", "NotifyService"]

log = logging.getLogger(__name__)

NOTIFY_SEND: Final = "notify.send"
NOTIFY_PUSH: Final = "notify.push"
NOTIFY_DIGEST: Final = "notify.digest"
CHAT_OFFLINE: Final = "chat.offline"
CHAT_TYPE: Final = "new_message"
PLAN_CONCURRENCY: Final = 16
DIGEST_SCAN_PAGES: Final = 10

NOTIFICATIONS: Final = Counter(
    "realtimed_notifications", "notifications stored in inboxes, by type", ["type"], registry=REGISTRY
)
PUSH_DECISIONS: Final = Counter(
    "realtimed_notify_push_decisions",
    "what the pipeline decided about pushing to a user: queued, deferred_quiet, active, daily_cap, hourly_cap, "
    "digest_held, no_devices, read, off",
    ["type", "decision"],
    registry=REGISTRY,
)


@attrs.frozen
class _Plan:
    """One push to consider for one user."""

    user_id: str
    type: NotificationTypeConfig
    vars: Mapping[str, Any]
    data: Mapping[str, Any]
    title: str
    body: str
    group_key: str
    ref: str
    check: Mapping[str, Any] | None
    digest: str | None  # "inbox" or "chat": how the digest counts; None: no digest for this push
    conversation_id: str | None = None


def group_key(ntype: NotificationTypeConfig, values: Mapping[str, Any]) -> str:
    if ntype.group_by:
        return f"{ntype.name}:{values.get(ntype.group_by, '')}"
    return ntype.name


class NotifyService:
    """Notifications of one node: the pipeline, the inbox, the push policy.

    Args:
        config: the configuration in force (read at each use, so a reload applies).
        store: inboxes, preferences, settings, devices.
        clock: wall time.
        router: delivers ``notification.*`` events live.
        jobs: the job runner (scheduled notifications, push planning, digests).
        push: the push service (devices and ``push.send`` jobs).
        caps: the push caps (in memory by default; shared in a cluster).
        activity: activity on the other nodes of a cluster (None on one node).

    Resource handling:
        Holds no connection and no task of its own: ``run`` only reports ready.
        The per-user push counts of the caps live in memory (see ``PushCaps``),
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
        push: PushService,
        caps: SharedCaps | None = None,
        activity: Activity | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self.clock = clock
        self.router = router
        self.jobs = jobs
        self.push = push
        self.caps: SharedCaps = caps or PushCaps()
        self.activity = activity

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

    async def run(self, *, task_status: trio.TaskStatus[NotifyService] = trio.TASK_STATUS_IGNORED) -> None:
        log.info("notifications: %d types (%s)", len(self.types), ", ".join(sorted(self.types)))
        task_status.started(self)
        await trio.sleep_forever()

    def register(self, ops: OpRegistry) -> None:
        """Answer the ``notification.*`` ops (socket and ``POST /api/v1/ops/{op}``)."""
        ops.register("notification.list", self._op_list)
        ops.register("notification.read", self._op_read)
        ops.register("notification.read_all", self._op_read_all)
        ops.register("notification.delete", self._op_delete)

    def register_jobs(self, runner: JobRunner) -> None:
        runner.register(NOTIFY_SEND, self._job_send)
        runner.register(NOTIFY_PUSH, self._job_plan)
        runner.register(NOTIFY_DIGEST, self._job_digest)
        runner.register(CHAT_OFFLINE, self._job_chat_offline)

    def register_checks(self) -> None:
        """Teach the push service to re-check, when a push job runs, that it is still wanted."""
        self.push.add_check("notification", self._check_notification)
        self.push.add_check("message", self._check_message)
        self.push.add_check("group", self._check_group)
        self.push.add_check("conversation", self._check_conversation)

    async def _active(self, user_id: str) -> bool:
        """The push-skip rule: is the user active on a connected device (of any node)?"""
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

    async def ready_fields(self, user_id: str) -> dict[str, Any]:
        """``notifications_unread`` for ``session.ready``."""
        return {"notifications_unread": await self.store.notification_unread_count(user_id)}

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
    ) -> int:
        """Run the pipeline for ``user_ids``; returns how many users it reached
        (stored in their inbox, or considered for push). A notification
        ``scheduled_for`` a later time is queued whole and runs then; it
        answers the number of recipients."""
        ntype = self.type(type)
        self.render(ntype, vars)
        users = list(dict.fromkeys(user_ids))
        if scheduled_for is not None and scheduled_for > self.clock.now():
            payload = {
                "user_ids": users,
                "type": ntype.name,
                "vars": dict(vars),
                "data": dict(data),
                "dedupe_key": dedupe_key,
            }
            job = await self.runner().enqueue(
                NOTIFY_SEND,
                payload,
                run_at=scheduled_for,
                dedupe_key=f"notify:{dedupe_key}" if dedupe_key else None,
            )
            log.info("job %s: %s to %d user(s) scheduled for %s", job.id, ntype.name, len(users), iso(scheduled_for))
            return len(users)
        return await self._deliver(ntype, users, vars, data, dedupe_key)

    async def _deliver(
        self,
        ntype: NotificationTypeConfig,
        users: Sequence[str],
        values: Mapping[str, Any],
        data: Mapping[str, Any],
        dedupe_key: str | None,
        *,
        request_id: str | None = None,
    ) -> int:
        title, body = self.render(ntype, values)
        channels = set(ntype.channels)
        prefs = await self.store.get_preferences_for(user_ids=users, type=ntype.name) if channels else {}
        inbox = [u for u in users if "in_app" in channels and prefs[u].in_app]
        push_on = {u for u in users if "push" in channels and prefs[u].push}
        group = group_key(ntype, values)
        records: dict[str, NotificationRecord] = {}
        if inbox:
            items = [
                NewNotification(
                    user_id=u,
                    type=ntype.name,
                    title=title,
                    body=body,
                    data=dict(data),
                    priority=ntype.priority,
                    group_key=group,
                    dedupe_key=dedupe_key,
                )
                for u in inbox
            ]
            results = await self.store.insert_notifications(items=items, now=self.clock.now())
            records = {rec.user_id: rec for rec, created in results if created}
            NOTIFICATIONS.labels(ntype.name).inc(len(records))
        for rec in records.values():
            await self.router.to_users((rec.user_id,), "notification.new", {"notification": rec.to_wire()}, seq=rec.seq)
        in_inbox = set(inbox)
        push_enabled = bool(self.config.push.service_account_file)
        push_only = [u for u in users if push_enabled and u in push_on and u not in in_inbox]
        candidates: list[list[Any]] = []
        if push_enabled:
            wanted = [u for u in users if u in push_on and not (u in in_inbox and u not in records)]
            active = await self._active_among(wanted)
            for u in users:
                if u not in push_on or (u in in_inbox and u not in records):
                    continue  # push off, or a repeated dedupe key
                if u in active:
                    PUSH_DECISIONS.labels(ntype.name, "active").inc()
                    continue
                record = records.get(u)
                candidates.append([u, record.id, record.seq] if record is not None else [u, None, None])
        if candidates:
            await self._queue_plans(ntype, candidates, values, data, dedupe_key, request_id or secrets.token_hex(8))
        log.info(
            "%s to %d user(s): %d stored, %d push candidate(s)", ntype.name, len(users), len(records), len(candidates)
        )
        return len(records) + len(push_only)

    async def _queue_plans(
        self,
        ntype: NotificationTypeConfig,
        candidates: list[list[Any]],
        values: Mapping[str, Any],
        data: Mapping[str, Any],
        dedupe_key: str | None,
        request_id: str,
    ) -> None:
        """One ``notify.push`` job per ``notify.plan_batch`` recipients, queued at
        once: the first plans start while the rest are still being queued, and
        the caller should not wait on them one by one."""
        runner = self.runner()
        batch = self.cfg.plan_batch

        async def one(items: list[list[Any]]) -> None:
            payload = {
                "type": ntype.name,
                "vars": dict(values),
                "data": dict(data),
                "dedupe_key": dedupe_key,
                "request_id": request_id,
                "items": items,
            }
            await runner.enqueue(NOTIFY_PUSH, payload)

        async with trio.open_nursery() as nursery:
            for start in range(0, len(candidates), batch):
                nursery.start_soon(one, candidates[start : start + batch])

    # -- job kinds ---------------------------------------------------------------------------

    async def _job_send(self, ctx: JobContext) -> None:
        """A scheduled notification, at its time."""
        p = ctx.payload
        ntype = self.types.get(p["type"])
        if ntype is None:
            log.warning("job %s: notification type %r is no longer configured; dropped", ctx.job_id, p["type"])
            return
        reached = await self._deliver(
            ntype, p["user_ids"], p.get("vars") or {}, p.get("data") or {}, p.get("dedupe_key"), request_id=ctx.job_id
        )
        log.info("job %s: scheduled %s reached %d user(s)", ctx.job_id, ntype.name, reached)

    async def _job_plan(self, ctx: JobContext) -> None:
        """Push planning for a batch of recipients of one notification."""
        p = ctx.payload
        ntype = self.types.get(p["type"])
        if ntype is None:
            log.warning("job %s: notification type %r is no longer configured; no push", ctx.job_id, p["type"])
            return
        values: dict[str, Any] = p.get("vars") or {}
        data: dict[str, Any] = p.get("data") or {}
        title, body = self.render(ntype, values)
        items: list[list[Any]] = p["items"]
        settings = await self.store.get_user_settings_many([item[0] for item in items])
        group = group_key(ntype, values)
        fallback_ref = f"nd{p['dedupe_key']}" if p.get("dedupe_key") else f"nr{p.get('request_id') or ctx.job_id}"
        plans = []
        for user_id, notification_id, seq in items:
            check = None
            if notification_id is not None:
                check = {"kind": "notification", "user_id": user_id, "id": notification_id, "seq": seq}
            plans.append(
                _Plan(
                    user_id=user_id,
                    type=ntype,
                    vars=values,
                    data={**data, "notification_id": notification_id, "seq": seq, "type": ntype.name}
                    if notification_id is not None
                    else {**data, "type": ntype.name},
                    title=title,
                    body=body,
                    group_key=group,
                    ref=f"n{notification_id}" if notification_id is not None else fallback_ref,
                    check=check,
                    digest="inbox" if notification_id is not None else None,
                )
            )
        await self._consider_all(plans, settings, ctx.job_id)

    async def _consider_all(self, plans: Sequence[_Plan], settings: Mapping[str, UserSettings], job_id: str) -> None:
        limiter = trio.Semaphore(PLAN_CONCURRENCY)

        async def one(plan: _Plan) -> None:
            async with limiter:
                await self._consider(plan, settings.get(plan.user_id) or UserSettings(plan.user_id), job_id)

        async with trio.open_nursery() as nursery:
            for plan in plans:
                nursery.start_soon(one, plan)

    async def _consider(self, plan: _Plan, settings: UserSettings, job_id: str) -> None:
        """Digest window, caps and quiet hours for one user, then one push job per device."""
        ntype = plan.type
        now = self.clock.now()
        critical = ntype.priority == "critical"
        digest = not critical and ntype.digest_window_s > 0 and plan.digest is not None
        if digest and not await self._open_digest(plan, settings, now):
            PUSH_DECISIONS.labels(ntype.name, "digest_held").inc()
            log.debug("job %s: push to %s held for the digest of %s", job_id, plan.user_id, plan.group_key)
            return
        if not critical and not await self._take_cap(ntype, plan.user_id, settings, now, job_id):
            return
        run_at = None if critical else quiet_until(
            now, start=settings.quiet_hours_start, end=settings.quiet_hours_end, time_zone=settings.time_zone
        )
        title, body = plan.title, plan.body
        if not ntype.push_content:
            title, body = render(ntype.private_title, plan.vars), render(ntype.private_body, plan.vars)
        await self._push_to_devices(plan, title, body, run_at, job_id)

    async def _take_cap(
        self, ntype: NotificationTypeConfig, user_id: str, settings: UserSettings, now: datetime, job_id: str
    ) -> bool:
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
            return False
        return True

    async def _open_digest(self, plan: _Plan, settings: UserSettings, now: datetime) -> bool:
        """Queue the digest of this window (once per user, group and window);
        True if this push is the window's first, which goes out at once."""
        start, end = digest_window(now, plan.type.digest_window_s)
        run_at = (
            quiet_until(end, start=settings.quiet_hours_start, end=settings.quiet_hours_end, time_zone=settings.time_zone)
            or end
        )
        payload: dict[str, Any] = {
            "user_id": plan.user_id,
            "type": plan.type.name,
            "group_key": plan.group_key,
            "since": iso(start),
            "until": iso(end),
            "vars": dict(plan.vars),
            "data": dict(plan.data),
            "source": plan.digest,
            "first_ref": plan.ref,
        }
        if plan.conversation_id is not None:
            payload["conversation_id"] = plan.conversation_id
        job = await self.runner().enqueue(
            NOTIFY_DIGEST, payload, run_at=run_at, dedupe_key=digest_key(plan.user_id, plan.group_key, start)
        )
        return bool(job.payload.get("first_ref") == plan.ref)

    async def _push_to_devices(self, plan: _Plan, title: str, body: str, run_at: datetime | None, job_id: str) -> None:
        ntype = plan.type
        devices = await self.store.list_devices(plan.user_id)
        if not devices:
            PUSH_DECISIONS.labels(ntype.name, "no_devices").inc()
            return
        badge = await self.store.notification_unread_count(plan.user_id)
        link = plan.data.get("link")
        message = build_message(
            title=title,
            body=body,
            data={k: v for k, v in plan.data.items() if v is not None},
            priority=ntype.priority,
            # Only grouped types replace each other on the device; others each stay.
            collapse_key=plan.group_key if ntype.group_by or ntype.digest_window_s > 0 else None,
            channel_id=ntype.android_channel_id,
            sound=ntype.sound,
            ttl_s=ntype.ttl_s,
            badge=badge,
            link=link if isinstance(link, str) else None,
        )
        for device in devices:
            await self.push.queue_push(
                message, token=device.token, user_id=plan.user_id, ref=plan.ref, run_at=run_at, check=plan.check
            )
        PUSH_DECISIONS.labels(ntype.name, "deferred_quiet" if run_at is not None else "queued").inc()
        log.debug(
            "job %s: %s push to %s on %d device(s)%s",
            job_id, ntype.name, plan.user_id, len(devices), f" at {iso(run_at)} (quiet hours)" if run_at else "",
        )

    async def _job_digest(self, ctx: JobContext) -> None:
        """At the end of a digest window: one push summing up the group, if more than one came."""
        p = ctx.payload
        ntype = self.types.get(p["type"])
        if ntype is None:
            return
        user_id: str = p["user_id"]
        since, until = parse_iso(p["since"]), parse_iso(p["until"])
        check: dict[str, Any]
        if p.get("source") == "chat":
            member = await self.store.get_member(p["conversation_id"], user_id)
            count = 0 if member is None or not member.active else member.unread_count
            check = {"kind": "conversation", "user_id": user_id, "conversation_id": p["conversation_id"]}
        else:
            count = await self.count_unread_group(user_id=user_id, group_key=p["group_key"], since=since, until=until)
            check = {"kind": "group", "user_id": user_id, "group_key": p["group_key"], "since": p["since"], "until": p["until"]}
        if count < 2:
            # The first was pushed at once; nothing more came, or it was read.
            log.debug("job %s: digest of %s for %s: %d unread, no push", ctx.job_id, p["group_key"], user_id, count)
            return
        if await self._active(user_id):
            PUSH_DECISIONS.labels(ntype.name, "active").inc()
            return
        settings = await self.store.get_user_settings(user_id)
        now = self.clock.now()
        if not await self._take_cap(ntype, user_id, settings, now, ctx.job_id):
            return
        values = {**(p.get("vars") or {}), "count": count}
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
            data={**(p.get("data") or {}), "count": count, "notification_id": None, "message_id": None, "seq": None},
            title=title,
            body=body,
            group_key=p["group_key"],
            ref=("mg" if p.get("source") == "chat" else "ng") + ctx.job_id,
            check=check,
            digest=None,
        )
        log.info("job %s: digest push to %s: %s", ctx.job_id, user_id, body)
        await self._push_to_devices(plan, title, body, run_at, ctx.job_id)

    async def _job_chat_offline(self, ctx: JobContext) -> None:
        """A chat message for participants with no connected device: a ``new_message`` push each."""
        p = ctx.payload
        message = await self.store.get_message(p["message_id"])
        if message is None or message.deleted:
            log.info("job %s: message %s is gone; no push", ctx.job_id, p.get("message_id"))
            return
        ntype = self.types.get(CHAT_TYPE)
        if ntype is None or "push" not in ntype.channels or not self.config.push.service_account_file:
            return
        conversation_id: str = p.get("conversation_id") or message.conversation_id
        recipients = [u for u in _recipients(p) if u != message.sender_id]
        if not recipients:
            return
        prefs = await self.store.get_preferences_for(user_ids=recipients, type=CHAT_TYPE)
        settings = await self.store.get_user_settings_many(recipients)
        values = {
            "sender_name": p.get("sender_name") or message.sender_id,
            "body": message.body or f"[{message.type}]",
            "conversation_id": conversation_id,
        }
        try:
            title, body = self.render(ntype, values)
        except ValidationFailed as exc:
            log.error("job %s: the new_message type cannot render a chat message: %s", ctx.job_id, exc.message)
            return
        plans = []
        for user_id in recipients:
            if not prefs[user_id].push:
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
                    ref=f"m{message.id}",
                    check={"kind": "message", "user_id": user_id, "conversation_id": conversation_id, "seq": message.seq},
                    digest="chat",
                    conversation_id=conversation_id,
                )
            )
        await self._consider_all(plans, settings, ctx.job_id)

    # -- push checks -------------------------------------------------------------------------

    async def _check_notification(self, check: Mapping[str, Any]) -> str | None:
        records, _ = await self.store.list_notifications(user_id=check["user_id"], after_seq=int(check["seq"]) - 1, limit=1)
        if not records or records[0].id != check["id"]:
            return "deleted"
        return "read" if records[0].read_at is not None else None

    async def _check_message(self, check: Mapping[str, Any]) -> str | None:
        member = await self.store.get_member(check["conversation_id"], check["user_id"])
        if member is None or not member.active:
            return "left"
        return "read" if member.read_seq >= int(check["seq"]) else None

    async def _check_group(self, check: Mapping[str, Any]) -> str | None:
        unread = await self.count_unread_group(
            user_id=check["user_id"], group_key=check["group_key"], since=parse_iso(check["since"]), until=parse_iso(check["until"])
        )
        return "read" if unread == 0 else None

    async def _check_conversation(self, check: Mapping[str, Any]) -> str | None:
        member = await self.store.get_member(check["conversation_id"], check["user_id"])
        if member is None or not member.active or member.unread_count == 0:
            return "read"
        return None

    async def count_unread_group(self, *, user_id: str, group_key: str, since: datetime, until: datetime) -> int:
        """Unread inbox notifications of one group created in ``[since, until)``
        (walks the unread inbox newest first, at most 1,000 entries)."""
        count = 0
        cursor: str | None = None
        for _page in range(DIGEST_SCAN_PAGES):
            records, cursor = await self.store.list_notifications(
                user_id=user_id, cursor=cursor, unread_only=True, limit=100
            )
            for record in records:
                if record.created_at < since:
                    return count
                if record.group_key == group_key and record.created_at < until:
                    count += 1
            if cursor is None:
                break
        return count

    # -- the inbox ---------------------------------------------------------------------------

    async def list(
        self, user_id: str, *, cursor: str | None, after_seq: int | None, unread_only: bool, limit: int
    ) -> dict[str, Any]:
        records, next_cursor = await self.store.list_notifications(
            user_id=user_id, cursor=cursor, after_seq=after_seq, unread_only=unread_only, limit=limit
        )
        return {"notifications": [r.to_wire() for r in records], "next_cursor": next_cursor}

    async def read(self, user_id: str, ids: Sequence[str]) -> dict[str, Any]:
        unread = await self.store.mark_notifications_read(user_id=user_id, ids=ids, now=self.clock.now())
        await self._to_user(user_id, "notification.read", {"ids": list(ids), "unread_count": unread})
        await self._cancel_pushes(user_id, ids)
        return {"unread_count": unread}

    async def read_all(self, user_id: str) -> dict[str, Any]:
        up_to, unread = await self.store.mark_all_notifications_read(user_id=user_id, now=self.clock.now())
        await self._to_user(user_id, "notification.read", {"up_to_seq": up_to, "unread_count": unread})
        cancelled = await self.store.cancel_jobs_by_dedupe_prefix(prefix=inbox_push_prefix(user_id), now=self.clock.now())
        if cancelled:
            log.info("user %s read all: %d queued push(es) cancelled", user_id, cancelled)
        return {"unread_count": unread}

    async def delete(self, user_id: str, ids: Sequence[str]) -> dict[str, Any]:
        unread = await self.store.delete_notifications(user_id=user_id, ids=ids)
        await self._to_user(user_id, "notification.deleted", {"ids": list(ids), "unread_count": unread})
        await self._cancel_pushes(user_id, ids)
        return {"unread_count": unread}

    async def unread_count(self, user_id: str) -> int:
        count: int = await self.store.notification_unread_count(user_id)
        return count

    async def _to_user(self, user_id: str, event: str, data: dict[str, Any]) -> None:
        await self.router.to_users((user_id,), event, data)

    async def _cancel_pushes(self, user_id: str, ids: Sequence[str]) -> None:
        now = self.clock.now()
        cancelled = 0
        for notification_id in ids:
            cancelled += await self.store.cancel_jobs_by_dedupe_prefix(prefix=push_prefix(user_id, f"n{notification_id}"), now=now)
        if cancelled:
            log.info("user %s read or deleted %d notification(s): %d queued push(es) cancelled", user_id, len(ids), cancelled)

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
        stored = {p.type: p for p in await self.store.get_preferences(user_id)}
        settings: UserSettings = await self.store.get_user_settings(user_id)
        types = []
        for name, ntype in sorted(self.types.items()):
            pref = stored.get(name)
            types.append(
                {
                    "type": name,
                    "in_app": pref.in_app if pref is not None else True,
                    "push": pref.push if pref is not None else True,
                    "channels": list(ntype.channels),
                }
            )
        quiet = None
        if settings.quiet_hours_start and settings.quiet_hours_end:
            quiet = {"start": settings.quiet_hours_start, "end": settings.quiet_hours_end}
        return {"types": types, "quiet_hours": quiet, "time_zone": settings.time_zone}

    async def set_preferences(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a partial update: ``types`` (each ``{type, in_app?, push?}``),
        ``quiet_hours`` (``{start, end}`` or null), ``time_zone``."""
        changes: list[tuple[str, bool | None, bool | None]] = []
        types = body.get("types", [])
        if not isinstance(types, list):
            raise ValidationFailed("types", "must be a list of {type, in_app, push}")
        for i, item in enumerate(types):
            if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
                raise ValidationFailed(f"types[{i}]", "must be an object with a type")
            self.type(item["type"], f"types[{i}].type")
            flags: list[bool | None] = []
            for channel in ("in_app", "push"):
                value = item.get(channel)
                if value is not None and not isinstance(value, bool):
                    raise ValidationFailed(f"types[{i}].{channel}", "must be a boolean")
                flags.append(value)
            changes.append((item["type"], flags[0], flags[1]))
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
        if changes:
            current = {p.type: p for p in await self.store.get_preferences(user_id)}
            for name, in_app, push in changes:
                pref = current.get(name)
                await self.store.set_preference(
                    user_id=user_id,
                    type=name,
                    in_app=in_app if in_app is not None else (pref.in_app if pref is not None else True),
                    push=push if push is not None else (pref.push if pref is not None else True),
                )
        return await self.preferences(user_id)


def _recipients(payload: Mapping[str, Any]) -> list[str]:
    """The recipients of a ``chat.offline`` job, under any of the names chat may use."""
    for key in ("recipient_ids", "user_ids", "recipients", "to"):
        value = payload.get(key)
        if isinstance(value, list):
            return [u for u in value if isinstance(u, str)]
    return []
