"""The push service: device tokens, topics, and the ``push.send`` job kind.

Every push is one ``push.send`` job for one device token (or one topic), queued
on ``push.queue`` with a dedupe key (``realtimed.notify.policy``), so that a
push survives a restart, is sent at least once, and can be cancelled while it
waits; its payload is a ``PushSend`` (``realtimed.push.jobs``). When the job
runs it first checks that the push is still wanted (the token is still active
and still the user's; the notification or message it is about is still unread:
its ``DeliveryCheck``, ``realtimed.notify.checks``), then sends through
``FcmClient`` and acts on FCM's answer:

- ``UNREGISTERED`` or an invalid token: the token is deactivated; not retried;
- a bad or oversized payload: the job fails, the token stays;
- ``SENDER_ID_MISMATCH``, ``THIRD_PARTY_AUTH_ERROR`` and other refusals of our
  credentials: the job fails, the token stays, ``realtimed_push_alarms`` rises;
- ``QUOTA_EXCEEDED``, ``UNAVAILABLE``, ``INTERNAL``, no answer, no access
  token: retried after FCM's ``Retry-After``, else after exponential backoff
  with jitter (``push.backoff_base_s``), up to ``push.max_attempts``.

What became of a push to a user's device goes to the delivery log
(``realtimed.notify.delivery_log``): ``delivered`` once FCM accepted it,
``failed:<FCM error code>`` when it failed for good (and ``device_removed`` when
its token was deactivated), ``skipped:withdrawn`` when it was no longer wanted.
``delivery.failed`` carries the same code.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import trio
from prometheus_client import Counter

from realtimed.clock import WallClock, iso
from realtimed.config import Config, PushConfig
from realtimed.errors import NotFound, Unavailable, ValidationFailed
from realtimed.jobs.gather import Gather
from realtimed.jobs.runner import DoNotRetry, JobContext, JobRunner, RetryAfter, backoff_delay
from realtimed.metrics import REGISTRY
from realtimed.notify.checks import DeliveryCheck, NotificationCheck, still_wanted
from realtimed.notify.delivery_log import DeliveryLog
from realtimed.notify.policy import push_key
from realtimed.outcomes import DELIVERED, DEVICE_REMOVED, SKIPPED_EXPIRED, SKIPPED_WITHDRAWN, failed
from realtimed.push.fcm import FcmClient, FcmResult, ServiceAccount
from realtimed.push.jobs import PUSH_SEND, PushSend
from realtimed.store.base import DeviceRecord, JobSpec, Store

__all__ = ["PUSH_SEND", "TOPIC_PATTERN", "PushSend", "PushService"]

log = logging.getLogger(__name__)

TOPIC_PATTERN: Final = re.compile(r"^[a-zA-Z0-9\-_.~%]{1,900}$")
FRESH_S: Final = 2.0  # a push job younger than this is not checked again before it is sent
QUEUE_BATCH: Final = 1000  # push.send jobs queued by one store statement
CHECK_BATCH: Final = 500  # devices (or notifications) read by one store call for the checks of push.send jobs

TOKENS_DEACTIVATED: Final = Counter(
    "realtimed_push_tokens_deactivated", "device tokens deactivated because FCM refused them", ["reason"],
    registry=REGISTRY,
)
PUSHES_SKIPPED: Final = Counter(
    "realtimed_push_skipped",
    "push.send jobs that sent nothing because the push was no longer wanted",
    ["reason"],
    registry=REGISTRY,
)


class PushService:
    """Devices, topics and push jobs of one node.

    Args:
        config: the whole configuration (``[push]`` is read from it).
        store: the started store.
        clock: wall time.
        jobs: the job runner (None: pushes cannot be queued on this node).
        rng: the source of backoff jitter (tests pass a seeded one).
        deliveries: the delivery log, told what became of each push to a user's
            device once it is known (None: none).
        transport: an httpx transport for the FCM client (tests).

    Resource handling:
        ``run`` owns the FCM client (its HTTP/2 connections) while push is
        configured, and closes it when cancelled, and the two ``Gather`` tasks
        that read the checks of concurrent ``push.send`` jobs together
        (``devices``, ``notifications``). Without
        ``push.service_account_file`` push is off: devices and topics are still
        stored, no push job is queued.

    Error handling:
        A key file that cannot be read makes ``run`` raise ``ConfigError`` at
        start. FCM's answers are handled per job (see the module docstring);
        nothing raised by a send reaches ``run``.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: Store,
        clock: WallClock,
        jobs: JobRunner | None = None,
        rng: random.Random | None = None,
        deliveries: DeliveryLog | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self._jobs = jobs
        self._rng = rng or random.Random()
        self.deliveries = deliveries
        self.client: FcmClient | None = None
        # The checks of push.send jobs that run side by side, read together.
        self.devices: Gather[str, DeviceRecord] = Gather(store.get_devices, max_batch=CHECK_BATCH)
        self.notifications: Gather[str, tuple[str, bool]] = Gather(store.notification_states, max_batch=CHECK_BATCH)

    @property
    def cfg(self) -> PushConfig:
        return self.config.push

    @property
    def enabled(self) -> bool:
        """True while an FCM client is running on this node."""
        return self.client is not None

    def runner(self) -> JobRunner:
        runner = self._jobs
        if runner is None:
            raise Unavailable("the job runner is not running on this node")
        return runner

    async def run(self, *, task_status: trio.TaskStatus[PushService] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.cfg.service_account_file:
            log.info("push is off (push.service_account_file is not set)")
            task_status.started(self)
            await trio.sleep_forever()
        account = ServiceAccount.from_file(self.cfg.service_account_file)
        client = FcmClient(self.cfg, account, clock=self.clock)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await nursery.start(self.devices.run)
                await nursery.start(self.notifications.run)
                self.client = client
                log.info("push through FCM project %s as %s", client.project_id, account.client_email)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self.client = None
            await client.aclose()

    def register_jobs(self, runner: JobRunner) -> None:
        runner.register(PUSH_SEND, self.handle_send)
        runner.serve_queue(self.cfg.queue)

    # -- queueing ----------------------------------------------------------------------------

    async def queue_push(
        self,
        message: Mapping[str, Any],
        *,
        token: str | None = None,
        topic: str | None = None,
        user_id: str | None = None,
        ref: str,
        run_at: datetime | None = None,
        check: DeliveryCheck | None = None,
    ) -> None:
        """Queue one ``push.send`` job for a device token (or a topic).

        ``ref`` names what is pushed (``n<notification id>``, ``m<message id>``,
        ...): the dedupe key is ``push:<user>:<ref>:<device>``, so the same push
        to the same device is queued once, and cancelling by prefix finds it.
        ``check`` is verified (``still_wanted``) when a push that waited runs.
        """
        payload = PushSend(message=dict(message), ref=ref, token=token, topic=topic, user_id=user_id, check=check)
        target = token if token is not None else f"/topics/{topic}"
        await self.runner().enqueue(
            PUSH_SEND,
            payload,
            queue=self.cfg.queue,
            run_at=run_at,
            max_attempts=self.cfg.max_attempts,
            dedupe_key=push_key(user_id or "", ref, target),
        )

    async def queue_pushes(self, pushes: Sequence[tuple[PushSend, datetime | None]]) -> None:
        """``queue_push`` of many ``(push, run_at)`` in one store statement and one
        commit (the dedupe keys hold as in ``queue_push``)."""
        runner = self.runner()
        specs = []
        for payload, run_at in pushes:
            target = payload.token if payload.token is not None else f"/topics/{payload.topic}"
            specs.append(
                JobSpec(
                    queue=self.cfg.queue,
                    kind=PUSH_SEND.kind,
                    payload=PUSH_SEND.encode(payload),
                    run_at=run_at,
                    max_attempts=self.cfg.max_attempts,
                    dedupe_key=push_key(payload.user_id or "", payload.ref, target),
                )
            )
        for start in range(0, len(specs), QUEUE_BATCH):
            await runner.enqueue_many(specs[start : start + QUEUE_BATCH])

    # -- the job -----------------------------------------------------------------------------

    async def handle_send(self, ctx: JobContext, payload: PushSend) -> None:
        token, topic, user_id = payload.token, payload.topic, payload.user_id
        client = self.client
        if client is None:
            raise DoNotRetry("push is not configured on this node (push.service_account_file)")
        # A push queued moments ago is sent as it is: reading a notification
        # cancels its queued pushes, and chat pushes are for users who were
        # offline a moment ago. One that waited (quiet hours, a digest, a retry,
        # a backlog) is checked again, which costs two store reads.
        now = ctx.clock.now()
        if payload.expires_at is not None and now >= payload.expires_at:
            PUSHES_SKIPPED.labels("expired").inc()
            log.info("job %s: push to %s not sent: expired", ctx.job_id, _short(token or f"/topics/{topic}"))
            await self._report(
                "delivery.failed",
                {
                    "channel": "push",
                    "code": SKIPPED_EXPIRED,
                    "error": f"the notification expired at {iso(payload.expires_at)}",
                    "user_id": user_id,
                    "token": token,
                    "job_id": ctx.job_id,
                },
            )
            await self._log(payload, SKIPPED_EXPIRED, detail=f"expired at {iso(payload.expires_at)}")
            return
        waited = ctx.attempt > 1 or (now - ctx.job.created_at).total_seconds() > FRESH_S
        skip = await self._still_wanted(token, user_id, payload.check) if waited else None
        if skip is not None:
            PUSHES_SKIPPED.labels(skip).inc()
            log.info("job %s: push to %s not sent: %s", ctx.job_id, _short(token or f"/topics/{topic}"), skip)
            await self._log(payload, SKIPPED_WITHDRAWN, detail=skip)
            return
        result = await client.send(dict(payload.message), token=token, topic=topic)
        await self._act(ctx, result, payload)

    async def _log(self, payload: PushSend, *outcomes: str, detail: str = "") -> None:
        """Log what became of a push to a user's device (a topic push names no user)."""
        deliveries = self.deliveries
        if deliveries is None or payload.user_id is None or not deliveries.enabled:
            return
        data = payload.message.get("data")
        ntype = data.get("type") if isinstance(data, Mapping) else None
        check = payload.check
        now = self.clock.now()
        detail = f"{_short(payload.token)}: {detail}" if detail else _short(payload.token)
        # Not waited for: the push's outcome is final, and its entry joins the writer's next batch.
        await deliveries.record(wait=False, entries=[
            deliveries.entry(
                at=now, user_id=payload.user_id, channel="push", type=ntype if isinstance(ntype, str) else "",
                outcome=outcome, ref=payload.ref,
                notification_id=check.id if isinstance(check, NotificationCheck) else None, detail=detail,
            )
            for outcome in outcomes
        ])

    async def _still_wanted(self, token: str | None, user_id: str | None, check: DeliveryCheck | None) -> str | None:
        """None if the push should go; else why not."""
        if token is not None:
            device = await self.devices.get(token)
            if device is None:
                # A token the server API named directly may be one this node never saw.
                if user_id:
                    return "token_unknown"
            elif not device.active:
                return "token_inactive"
            elif user_id and device.user_id != user_id:
                return "token_moved"
        if check is None:
            return None
        if isinstance(check, NotificationCheck):
            # still_wanted's answer for a notification, read together with the other jobs' checks.
            state = await self.notifications.get(check.id)
            if state is None or state[0] != check.user_id:
                return "deleted"
            return "read" if state[1] else None
        return await still_wanted(self.store, check)

    async def _act(self, ctx: JobContext, result: FcmResult, payload: PushSend) -> None:
        token = payload.token
        where = _short(token) if token is not None else "topic"
        if result.ok:
            log.debug("job %s: pushed to %s (%s)", ctx.job_id, where, result.name)
            await self._log(payload, DELIVERED)
            return
        text = result.describe()
        code = fcm_outcome(result)
        if result.deactivate:
            assert token is not None
            removed = await self.store.deactivate_device(token=token)
            if removed:
                TOKENS_DEACTIVATED.labels(result.kind).inc()
                await self._report("device.removed", {"user_id": None, "token": token, "reason": result.kind})
            log.info("job %s: token %s deactivated: %s", ctx.job_id, where, text)
            await self._log(payload, code, *((DEVICE_REMOVED,) if removed else ()), detail=result.message)
            await self._report("delivery.failed", _failed(ctx, result, text, token))
            raise DoNotRetry(f"token deactivated: {text}")
        if result.alarm:
            log.error("job %s: FCM refused our credentials for %s, token kept: %s", ctx.job_id, where, text)
            await self._log(payload, code, detail=result.message)
            await self._report("delivery.failed", _failed(ctx, result, text, token))
            raise DoNotRetry(text)
        if result.retry:
            if result.retry_after is not None:
                delay = result.retry_after
            else:
                delay = backoff_delay(
                    ctx.attempt, base_s=self.cfg.backoff_base_s, max_s=self.cfg.backoff_max_s, rng=self._rng
                )
                if result.kind == "quota":
                    delay = max(delay, self.cfg.quota_retry_s)
            if ctx.attempt >= ctx.job.max_attempts:
                # The last attempt: the job is dead now, and so is this push.
                await self._log(payload, code, detail=result.message or text)
            log.warning(
                "job %s: push to %s attempt %d/%d: %s; retry in %.1f s",
                ctx.job_id, where, ctx.attempt, ctx.job.max_attempts, text, delay,
            )
            raise RetryAfter(delay, text)
        log.warning("job %s: push to %s failed, token kept: %s", ctx.job_id, where, text)
        await self._log(payload, code, detail=result.message)
        await self._report("delivery.failed", _failed(ctx, result, text, token))
        raise DoNotRetry(text)

    # -- devices -----------------------------------------------------------------------------

    async def register_device(
        self,
        *,
        user_id: str,
        token: str,
        platform: str,
        app_version: str,
        device_info: Mapping[str, str] | None = None,
    ) -> DeviceRecord:
        """Register (or refresh) a token; one registered by another user moves here.
        ``device_info`` (checked at the edge) replaces the one stored with the token.

        Raises:
            ValidationFailed: the platform is not ios, android or web (from the store).
        """
        device: DeviceRecord = await self.store.register_device(
            user_id=user_id,
            token=token,
            platform=platform,
            app_version=app_version,
            device_info=device_info,
            now=self.clock.now(),
        )
        log.info("user %s registered a %s device %s", user_id, platform, _short(token))
        return device

    async def unregister_device(self, *, user_id: str, token: str) -> None:
        if not await self.store.unregister_device(token=token, user_id=user_id):
            raise NotFound("no such device token for this user")
        if self.event_sink is not None:
            await self.event_sink("device.removed", {"user_id": user_id, "token": token, "reason": "unregistered"})

    #: Reports ``device.removed`` and ``delivery.failed`` to the application (webhooks: ``WebhookService.emit``), set by the
    #: daemon; None reports nothing.
    event_sink: Callable[[str, Mapping[str, Any]], Awaitable[object]] | None = None


    async def _report(self, event: str, data: Mapping[str, Any]) -> None:
        if self.event_sink is None:
            return
        try:
            await self.event_sink(event, data)
        except Exception as exc:  # the push's own outcome stands
            log.error("%s not reported: %s", event, exc)

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        devices: list[DeviceRecord] = await self.store.list_devices(user_id, active_only=False)
        return devices

    # -- topics ------------------------------------------------------------------------------

    async def manage_topic(self, topic: str, tokens: Sequence[str], *, subscribe: bool) -> list[dict[str, Any]]:
        """Subscribe or unsubscribe tokens at FCM, then record it on the devices we know.

        Returns one ``{"token", "ok", "error"?}`` per token.
        """
        if not TOPIC_PATTERN.match(topic):
            raise ValidationFailed("topic", "must be 1 to 900 of letters, digits and - _ . ~ %")
        client = self.client
        if client is None:
            raise Unavailable("push is not configured on this node (push.service_account_file)")
        errors = await client.manage_topic(topic, tokens, subscribe=subscribe)
        results: list[dict[str, Any]] = []
        for token, error in zip(tokens, errors, strict=True):
            if error is None:
                try:
                    if subscribe:
                        await self.store.add_device_topics(token=token, topics=[topic])
                    else:
                        await self.store.remove_device_topics(token=token, topics=[topic])
                except NotFound:
                    pass  # a token FCM knows and this node does not: FCM's answer is what counts
                results.append({"token": token, "ok": True})
            else:
                results.append({"token": token, "ok": False, "error": error})
        log.info(
            "topic %s: %s %d token(s), %d refused",
            topic, "subscribed" if subscribe else "unsubscribed", len(tokens), sum(1 for e in errors if e),
        )
        return results


def fcm_outcome(result: FcmResult) -> str:
    """The delivery log's code of a push FCM refused: ``failed:<FCM error code>``
    (``failed:HTTP_<status>`` when FCM gave none, ``failed:<kind>`` without an answer)."""
    if result.code:
        return failed(result.code)
    return failed(f"HTTP_{result.status}" if result.status else result.kind)


def _failed(ctx: JobContext, result: FcmResult, text: str, token: str | None) -> dict[str, Any]:
    """The data of ``delivery.failed`` for a push that failed for good."""
    user_id = ctx.payload.get("user_id")
    return {
        "channel": "push",
        "code": fcm_outcome(result),
        "reason": result.kind,
        "error": text,
        "user_id": user_id if isinstance(user_id, str) else None,
        "token": token,
        "job_id": ctx.job_id,
    }


def _short(token: str | None) -> str:
    if token is None:
        return "-"
    return token if len(token) <= 12 else f"{token[:6]}…{token[-4:]}"
