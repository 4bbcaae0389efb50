"""The Redis broker: deliveries between nodes over Redis pub/sub (coredis, native on Trio).

Topologies (``broker.redis_url``, see ``redis_url``):
    One server (``redis://``, ``rediss://``, ``unix://``); the primary that Redis
    Sentinel names (``redis+sentinel://``), asked again of the sentinels for every
    new connection, so that after a failover the reconnecting subscriber and the
    next commands reach the new primary; or a Redis Cluster (``redis+cluster://``),
    where deliveries go over sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``): each
    channel lives on the shard that owns its slot, so a Redis node carries only
    its own channels' traffic instead of every message of the cluster.

Channels:
    ``rt:r:<room>`` carries the deliveries of one app room, ``rt:u:<user>`` those
    of one user; a node subscribes to the rooms and users it holds, so it hears
    only what its own sessions need. ``rt:n:<tag>`` carries the deliveries to
    the ``device:<session_id>`` addresses of the node with that tag
    (``base.node_tag``, which its session ids carry), so a socket costs no
    subscription of its own. A delivery to more than ``FANOUT_USERS``
    users goes once on ``rt:all`` (every node listens) instead of once per user,
    and so does a delivery to everyone.

Surveys:
    A question to every node (``survey``) goes on ``rt:sv``, which every node
    listens to; the number of receivers that Redis answers to the ``PUBLISH``
    (less this node) is the number of answers to wait for. Each node answers on
    the asking node's own ``rt:sr:<node>``, through the same writer as
    deliveries. Both are JSON objects: ``{id, o, op, d}`` and ``{id, o, a}``
    (``error`` instead of ``a`` when the node's handler failed).

Messages:
    One pub/sub message per delivery: a small JSON header (origin node, target,
    exclusions, event name, the frame's stream position (``room``, ``seq``,
    ``epoch``: a user delivery's ``room`` goes as ``fr``, so it is not taken for
    the target), and for a disconnect the close code), a newline, and the frame
    exactly as encoded by the publishing node. Receiving nodes hand the
    frame to their sessions as is.

Batching:
    ``publish`` queues the message and returns; one writer task sends everything
    queued in one pipeline round trip, so under load many publishes share one
    round trip while an idle node still sends at once.

Resource handling:
    ``run`` owns the client, the subscriber task and the writer task; cancelling
    it closes all of them.

Error handling:
    While Redis cannot be reached, ``publish`` and the watch calls raise
    ``Unavailable`` at once (local sessions still get their frames from the
    router), ``ping`` raises it for ``/readyz``, and the subscriber reconnects
    and subscribes again to every channel it held when Redis returns. A cluster
    that cannot be reached at start (its client needs the slot map before any
    command) is opened again in the background with the same backoff. In a
    cluster, a shard that drops one of the subscriptions (its slot moved to
    another shard) makes the subscriber reconnect to the new owner.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final, TypeAlias, TypeVar

import anyio
import coredis
import orjson
import trio
from coredis.connection import TCPLocation
from coredis.patterns.pubsub import BasePubSub
from coredis.retry import ConstantRetryPolicy
from prometheus_client import Counter
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from realtimed import logs, metrics
from realtimed.broker.base import Close, Delivery, SurveyAnswers, SurveyHandler, device_tag, node_tag
from realtimed.config import BrokerConfig
from realtimed.errors import Unavailable
from realtimed.frames import Frame
from realtimed.redis_url import RedisTarget, parse_redis_url, redis_address

log = logging.getLogger(__name__)

# What a broken, unreachable or closing Redis client raises, through coredis and
# anyio (a pool that has exited raises RuntimeError).
LINK_ERRORS: Final = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    RuntimeError,
)

#: The client every Redis backend shares: one server or a Sentinel-managed
#: primary (``coredis.Redis``), or a Redis Cluster.
RedisClient: TypeAlias = "coredis.Redis[bytes] | coredis.RedisCluster[bytes]"

_T = TypeVar("_T")


async def redis_call(what: str, call: Awaitable[_T], *, timeout_s: float) -> _T:
    """Await one Redis command within ``timeout_s``; a link failure raises ``Unavailable``
    ("<what> unavailable: ..."), so every backend names its failures alike."""
    try:
        with trio.fail_after(timeout_s):
            return await call
    except LINK_ERRORS as exc:
        raise Unavailable(f"{what} unavailable: {exc or type(exc).__name__}") from exc


def describe_link_error(exc: BaseException) -> str:
    """One line for a Redis link failure: the first real error inside task groups, never the group's own phrase."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if not inner:
            break
        exc = inner[0]
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time (broker.timeout_s)"
    return " ".join((str(exc) or type(exc).__name__).split())


def text(value: Any) -> str:
    """A Redis reply (bytes with ``decode_responses=False``) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)

FANOUT_USERS: Final = 64
ALL_CHANNEL: Final = "rt:all"
SURVEY_CHANNEL: Final = "rt:sv"
_SURVEY_CHANNEL_BYTES: Final = SURVEY_CHANNEL.encode()
QUEUE_MAX: Final = 10_000
#: Surveys of other nodes answered at once by this node (more wait their turn).
SURVEY_CONCURRENCY: Final = 8
#: Surveys this node may have under way at once; one more is refused as Unavailable.
MAX_PENDING_SURVEYS: Final = 64

# The Redis brokers running in this process. ``realtimed_broker_connected`` is
# exported only while one runs: on the in-process broker there is nothing to be
# connected to, and a 0 there would read as an outage.
_RUNNING: Final[set[RedisBroker]] = set()


class _BrokerUpCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        if not _RUNNING:
            return
        up = GaugeMetricFamily(
            "realtimed_broker_connected", "1 while the Redis broker's subscriber is connected (absent without Redis)"
        )
        up.add_metric([], 1 if all(broker.connected for broker in _RUNNING) else 0)
        yield up


metrics.REGISTRY.register(_BrokerUpCollector())
BROKER_MESSAGES: Final = Counter(
    "realtimed_broker_messages", "broker messages by direction", ["direction"], registry=metrics.REGISTRY
)
BROKER_ERRORS: Final = Counter("realtimed_broker_errors", "broker failures by kind", ["kind"], registry=metrics.REGISTRY)


def open_client(url: str, *, timeout_s: float) -> tuple[RedisClient, list[contextlib.AbstractAsyncContextManager[Any]]]:
    """The client for ``url``, and what must be entered (in order) before it is used.

    Raises:
        ValueError: the URL is not one ``redis_url.parse_redis_url`` accepts.
    """
    target = parse_redis_url(url)
    if target.kind == "cluster":
        cluster: coredis.RedisCluster[bytes] = coredis.RedisCluster(
            startup_nodes=[TCPLocation(host, port) for host, port in target.hosts],
            username=target.username,
            password=target.password,
            connect_timeout=timeout_s,
            stream_timeout=timeout_s,
            decode_responses=False,
        )
        return cluster, [cluster]
    if target.kind == "sentinel":
        return _sentinel_client(target, timeout_s=timeout_s)
    single: coredis.Redis[bytes] = coredis.Redis.from_url(
        url, decode_responses=False, connect_timeout=timeout_s, stream_timeout=timeout_s
    )
    return single, [single]


def _sentinel_client(
    target: RedisTarget, *, timeout_s: float
) -> tuple[RedisClient, list[contextlib.AbstractAsyncContextManager[Any]]]:
    sentinel: coredis.Sentinel[bytes] = coredis.Sentinel(
        [TCPLocation(host, port) for host, port in target.hosts],
        sentinel_kwargs={
            "connect_timeout": timeout_s,
            "stream_timeout": timeout_s,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        },
        decode_responses=False,
        # As for one server: a command that met a broken connection is sent again
        # once on a new one, which asks the sentinels where the primary is now.
        retry_policy=ConstantRetryPolicy((coredis.exceptions.ConnectionError, TimeoutError), retries=2, delay=0.01),
        connect_timeout=timeout_s,
        stream_timeout=timeout_s,
        username=target.username,
        password=target.password,
        db=target.db,
    )
    primary = sentinel.primary_for(target.service)
    return primary, [sentinel, primary]


def room_channel(room: str) -> str:
    return "rt:r:" + room


def user_channel(user: str) -> str:
    return "rt:u:" + user


def node_channel(tag: str) -> str:
    """The channel of the deliveries to the ``device:`` addresses of the node with this tag."""
    return "rt:n:" + tag


def reply_channel(node: str) -> str:
    """The channel of the answers to the surveys of ``node``."""
    return "rt:sr:" + node


class _PendingSurvey:
    """A survey of this node waiting for its answers."""

    __slots__ = ("answers", "done", "expected", "failed", "received")

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.received = 0
        self.failed = False
        self.expected: int | None = None
        self.done = trio.Event()

    def take(self, message: dict[str, Any]) -> None:
        self.received += 1
        if "a" in message:
            self.answers.append(message["a"])
        else:
            self.failed = True
        if self.expected is not None and self.received >= self.expected:
            self.done.set()


def encode_message(delivery: Delivery) -> bytes:
    header: dict[str, Any] = {"o": delivery.origin, "n": delivery.frame.name}
    if delivery.room is not None:
        header["r"] = delivery.room
    elif delivery.everyone:
        header["a"] = 1
    else:
        header["u"] = delivery.users
    if delivery.exclude_users:
        header["xu"] = sorted(delivery.exclude_users)
    if delivery.exclude_session:
        header["xs"] = delivery.exclude_session
    if delivery.close is not None:
        header["c"] = [delivery.close.code, delivery.close.reason, delivery.close.session_id]
    frame = delivery.frame
    if frame.room is not None and delivery.room is None:
        # A user delivery of a conversation's event: the frame's room is metadata (the
        # Socket.IO door's second argument, recovery offsets), not where it goes.
        header["fr"] = frame.room
    if frame.seq is not None:
        header["s"] = frame.seq
    if frame.epoch is not None:
        header["e"] = frame.epoch
    return orjson.dumps(header) + b"\n" + frame.json


def decode_message(data: bytes) -> Delivery:
    head, _, body = data.partition(b"\n")
    header = orjson.loads(head)
    room = header.get("r")
    frame_room = room if room is not None else header.get("fr")
    if frame_room is not None and not isinstance(frame_room, str):
        raise ValueError("bad room in a broker message")
    frame = Frame(body, header.get("n"), room=frame_room, seq=header.get("s"), epoch=header.get("e"))
    close = None
    if "c" in header:
        raw = header["c"]
        if not (
            isinstance(raw, list)
            and len(raw) == 3
            and isinstance(raw[0], int)
            and isinstance(raw[1], str)
            and (raw[2] is None or isinstance(raw[2], str))
        ):
            raise ValueError("bad close in a broker message")
        close = Close(raw[0], raw[1], raw[2])
    return Delivery(
        frame,
        users=tuple(header.get("u", ())),
        room=room,
        exclude_users=frozenset(header.get("xu", ())),
        exclude_session=header.get("xs"),
        origin=header.get("o", ""),
        close=close,
        everyone=header.get("a") == 1,
    )


class RedisBroker:
    """Broker over Redis pub/sub (see ``base.Broker`` for the promises)."""

    def __init__(self, node: str, cfg: BrokerConfig, *, client: RedisClient | None = None) -> None:
        self.node = node
        self._cfg = cfg
        self._client: RedisClient
        self._resources: list[contextlib.AbstractAsyncContextManager[Any]]
        if client is not None:
            self._client, self._resources = client, [client]
        else:
            self._client, self._resources = open_client(cfg.redis_url, timeout_s=cfg.timeout_s)
        self._sharded = isinstance(self._client, coredis.RedisCluster)
        # Channels this node unsubscribed from whose confirmation has not come yet.
        self._leaving: Tally[str] = Tally()
        # channel → set once Redis confirmed the subscription (watchers wait on it)
        self._confirmed: dict[str, trio.Event] = {}
        self._handler: Callable[[Delivery], object] | None = None
        self._survey_handler: SurveyHandler | None = None
        self._surveys: dict[str, _PendingSurvey] = {}
        self._survey_limiter = trio.CapacityLimiter(SURVEY_CONCURRENCY)
        self._reply_channel = reply_channel(node)
        self._survey_channels = frozenset(
            {SURVEY_CHANNEL, _SURVEY_CHANNEL_BYTES, self._reply_channel, self._reply_channel.encode()}
        )
        self._node_channel = node_channel(node_tag(node))
        self._nursery: trio.Nursery | None = None
        self._channels: dict[str, int] = {}
        self._subscribe_queue: trio.MemorySendChannel[tuple[str, bool]]
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_ready = trio.Event()
        self.connected = False
        # The subscriber's current link: a failure seen elsewhere (a publish or a
        # ping that got no answer in time) cancels it, so that the subscriber
        # connects and subscribes again, and only that marks the node connected.
        self._link: trio.CancelScope | None = None
        self._last_error = "not connected yet"
        self._address = redis_address(cfg.redis_url)
        # One line when the link goes down or cannot be made, then one at a doubling interval, with a count.
        self._outage = logs.Repeated(log, first_interval_s=10.0, max_interval_s=300.0)

    @property
    def client(self) -> RedisClient:
        return self._client

    def attach(self, handler: Callable[[Delivery], object]) -> None:
        self._handler = handler

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[tuple[str, bool]](QUEUE_MAX)
        self._subscribe_queue = send
        _RUNNING.add(self)
        try:
            async with contextlib.AsyncExitStack() as stack:
                if not await self._open(stack):
                    # Start anyway: the node serves its own sessions while Redis is away.
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    delay = 0.1
                    while not await self._open(stack):
                        await trio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._subscriber, receive)
                    nursery.start_soon(self._writer)
                    task_status.started()
        except BaseExceptionGroup as group:
            # On cancellation coredis's cleanup may fail on connections that are
            # already closed; only the cancellation matters then.
            cancelled, rest = group.split(trio.Cancelled)
            if cancelled is None:
                raise
            if rest is not None:
                log.debug("node %s: broker cleanup: %r", self.node, rest)
            raise cancelled from None
        finally:
            self._set_connected(False)
            _RUNNING.discard(self)

    async def _open(self, stack: contextlib.AsyncExitStack) -> bool:
        """Enter the client (a cluster client reads the slot map here); False if Redis is away.

        No deadline of our own here: the client opens a task group that outlives
        this call, so no cancel scope may wrap it; ``connect_timeout`` bounds it.
        """
        try:
            async with contextlib.AsyncExitStack() as opening:
                for resource in self._resources:
                    await opening.enter_async_context(resource)
                await stack.enter_async_context(opening.pop_all())
        except LINK_ERRORS as exc:
            self._note_down(exc)
            return False
        except BaseExceptionGroup as group:
            if group.subgroup(trio.Cancelled) is not None:
                raise
            self._note_down(group)
            return False
        return True

    # -- receiving ---------------------------------------------------------------------------

    def _pubsub(self) -> BasePubSub[bytes, Any]:
        pubsub: BasePubSub[bytes, Any]
        # Redis's acknowledgement of a (re)subscription may take up to broker.timeout_s, like any
        # Redis call; coredis's own default (1 s) tore the link down on a node whose loop lagged
        # a second, and the resubscription to every channel that followed lagged it further.
        timeout = self._cfg.timeout_s
        if isinstance(self._client, coredis.RedisCluster):
            # Subscription messages are kept: a shard that gives up a slot
            # unsubscribes its clients from the slot's channels.
            pubsub = self._client.sharded_pubsub(
                ignore_subscribe_messages=False, retry_policy=None, subscription_timeout=timeout
            )
        else:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True, retry_policy=None, subscription_timeout=timeout)
        return pubsub

    async def _subscriber(
        self, changes: trio.MemoryReceiveChannel[tuple[str, bool]], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the subscriptions; reconnect and subscribe again whenever the link breaks."""
        started = False
        delay = 0.1
        retry = False
        while True:
            try:
                if retry and isinstance(self._client, coredis.RedisCluster):
                    # The shards may have changed (a slot moved, a replica took
                    # over): read the slot map again before subscribing anew.
                    with trio.fail_after(self._cfg.timeout_s):
                        await self._client.connection_pool.cluster_layout.initialize()
                retry = True
                self._leaving.clear()
                with trio.CancelScope() as self._link:
                    async with self._pubsub() as pubsub:
                        channels = [ALL_CHANNEL, SURVEY_CHANNEL, self._reply_channel, self._node_channel, *self._channels]
                        with trio.fail_after(self._cfg.timeout_s):
                            await pubsub.subscribe(*channels)
                        self._confirm(channels)
                        self._set_connected(True)
                        delay = 0.1
                        if not started:
                            started = True
                            task_status.started()
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._apply_changes, pubsub, changes)
                            async for message in pubsub:
                                if message.get("type") == "sunsubscribe" and self._dropped(message["channel"]):
                                    raise coredis.exceptions.ConnectionError(
                                        f"the shard dropped the subscription to {message['channel']!r} (slot moved)"
                                    )
                                self._receive(message)
                            nursery.cancel_scope.cancel()
                self._link = None
            except LINK_ERRORS as exc:
                self._note_down(exc)
            except BaseExceptionGroup as group:
                if group.subgroup(trio.Cancelled) is not None:
                    raise
                self._note_down(group)
            if not started:
                # Start anyway: the node serves its own sessions while Redis is away.
                started = True
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _apply_changes(self, pubsub: Any, changes: trio.MemoryReceiveChannel[tuple[str, bool]]) -> None:
        async for channel, add in changes:
            if add:
                await pubsub.subscribe(channel)
                self._confirm([channel])
            else:
                self._leaving[channel] += 1
                await pubsub.unsubscribe(channel)

    def _dropped(self, channel: str | bytes) -> bool:
        """Whether an ``sunsubscribe`` is a shard dropping a channel still wanted."""
        name = channel.decode(errors="replace") if isinstance(channel, bytes) else channel
        if self._leaving[name] > 0:
            self._leaving[name] -= 1
            return False
        return name in (ALL_CHANNEL, SURVEY_CHANNEL, self._reply_channel, self._node_channel) or name in self._channels

    def _receive(self, message: Any) -> None:
        if message.get("type") != "message":
            return
        channel = message.get("channel")
        if channel in self._survey_channels:  # bytes or text, as the client gives them
            if channel in (SURVEY_CHANNEL, _SURVEY_CHANNEL_BYTES):
                self._survey_asked(message["data"])
            else:
                self._survey_answered(message["data"])
            return
        try:
            delivery = decode_message(message["data"])
        except (ValueError, orjson.JSONDecodeError):
            BROKER_ERRORS.labels("bad_message").inc()
            return
        if delivery.origin == self.node:
            return
        BROKER_MESSAGES.labels("in").inc()
        if self._handler is not None:
            try:
                self._handler(delivery)
            except Exception:
                log.exception("node %s: a broker delivery failed locally", self.node)

    # -- surveys -----------------------------------------------------------------------------

    def attach_survey(self, handler: SurveyHandler) -> None:
        self._survey_handler = handler

    async def survey(self, op: str, data: dict[str, Any], *, timeout_s: float) -> SurveyAnswers:
        if not self.connected:
            raise Unavailable(f"broker unavailable: {self._last_error}")
        if len(self._surveys) >= MAX_PENDING_SURVEYS:
            raise Unavailable(f"too many cluster-wide questions under way on this node ({MAX_PENDING_SURVEYS})")
        survey_id = secrets.token_hex(8)
        pending = self._surveys[survey_id] = _PendingSurvey()
        try:
            message = orjson.dumps({"id": survey_id, "o": self.node, "op": op, "d": data})
            try:
                with trio.fail_after(self._cfg.timeout_s):
                    if self._sharded:
                        receivers = await self._client.spublish(SURVEY_CHANNEL, message)
                    else:
                        receivers = await self._client.publish(SURVEY_CHANNEL, message)
            except LINK_ERRORS as exc:
                self._note_down(exc)
                raise Unavailable(f"broker unavailable: {self._last_error}") from exc
            pending.expected = max(0, int(receivers) - 1)  # this node hears its own question too
            if pending.received >= pending.expected:
                pending.done.set()
            with trio.move_on_after(timeout_s):
                await pending.done.wait()
            complete = pending.received >= pending.expected and not pending.failed
            if not complete:
                log.info(
                    "node %s: survey %s: %d of %d nodes answered in time", self.node, op, len(pending.answers), pending.expected
                )
            return SurveyAnswers(list(pending.answers), complete)
        finally:
            del self._surveys[survey_id]

    def _survey_asked(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
            origin, survey_id, op, data = message["o"], message["id"], message["op"], message["d"]
            if not (isinstance(origin, str) and isinstance(survey_id, str) and isinstance(op, str) and isinstance(data, dict)):
                raise ValueError("bad survey")
        except (ValueError, KeyError, TypeError):
            BROKER_ERRORS.labels("bad_message").inc()
            return
        if origin == self.node or self._nursery is None:
            return
        self._nursery.start_soon(self._answer, origin, survey_id, op, data)

    async def _answer(self, origin: str, survey_id: str, op: str, data: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": survey_id, "o": self.node}
        async with self._survey_limiter:
            handler = self._survey_handler
            try:
                if handler is None:
                    raise LookupError("no survey handler attached")
                with trio.fail_after(self._cfg.survey_timeout_s):
                    reply["a"] = await handler(op, data)
            except Exception:
                log.exception("node %s: survey %s from node %s failed here", self.node, op, origin)
                reply["error"] = True
        try:
            self._queue(reply_channel(origin), orjson.dumps(reply))
        except (Unavailable, TypeError) as exc:
            log.warning("node %s: answer to survey %s of node %s not sent: %s", self.node, op, origin, exc)

    def _survey_answered(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
            pending = self._surveys.get(message["id"]) if isinstance(message, dict) else None
        except (ValueError, KeyError, TypeError):
            BROKER_ERRORS.labels("bad_message").inc()
            return
        if pending is not None:
            pending.take(message)

    # -- sending -----------------------------------------------------------------------------

    async def publish(self, delivery: Delivery) -> None:
        if not self.connected:
            raise Unavailable(f"broker unavailable: {self._last_error}")
        data = encode_message(delivery)
        if delivery.room is not None:
            tag = device_tag(delivery.room)
            self._queue(room_channel(delivery.room) if tag is None else node_channel(tag), data)
        elif delivery.everyone or len(delivery.users) > FANOUT_USERS:
            self._queue(ALL_CHANNEL, data)
        else:
            for user in delivery.users:
                if user not in delivery.exclude_users:
                    self._queue(user_channel(user), data)
        await trio.lowlevel.checkpoint()

    def _queue(self, channel: str, data: bytes) -> None:
        if len(self._outbox) >= QUEUE_MAX:
            BROKER_ERRORS.labels("queue_full").inc()
            raise Unavailable("broker publish queue is full")
        self._outbox.append((channel, data))
        self._outbox_ready.set()

    async def _writer(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            batch, self._outbox = self._outbox, []
            if not batch:
                continue
            try:
                with trio.fail_after(self._cfg.timeout_s):
                    if len(batch) == 1:
                        channel, data = batch[0]
                        if self._sharded:
                            await self._client.spublish(channel, data)
                        else:
                            await self._client.publish(channel, data)
                    else:
                        # In a cluster the pipeline sends each shard its own
                        # SPUBLISHes, one round trip per shard.
                        async with self._client.pipeline(transaction=False) as pipe:
                            for channel, data in batch:
                                if self._sharded:
                                    pipe.spublish(channel, data)
                                else:
                                    pipe.publish(channel, data)
                BROKER_MESSAGES.labels("out").inc(len(batch))
            except LINK_ERRORS as exc:
                BROKER_ERRORS.labels("publish").inc(len(batch))
                self._note_down(exc)

    # -- interest ----------------------------------------------------------------------------

    async def _watch(self, channel: str) -> None:
        """Count interest in a channel; the first subscribes, and every caller waits
        (at most ``timeout_s``) until Redis confirmed it, so that what another node
        publishes after a subscribe reply reaches this node."""
        count = self._channels.get(channel, 0)
        self._channels[channel] = count + 1
        if count == 0 and self.connected:
            self._confirmed.setdefault(channel, trio.Event())
        if count == 0:
            self._change(channel, True)
        confirmed = self._confirmed.get(channel)
        if confirmed is not None and self.connected:
            with trio.move_on_after(self._cfg.timeout_s):
                await confirmed.wait()
        await trio.lowlevel.checkpoint()

    async def _unwatch(self, channel: str) -> None:
        count = self._channels.get(channel, 0) - 1
        if count <= 0:
            self._channels.pop(channel, None)
            if count == 0:
                self._change(channel, False)
        else:
            self._channels[channel] = count
        await trio.lowlevel.checkpoint()

    def _confirm(self, channels: Iterable[str] | None = None) -> None:
        """Release the watchers waiting for these channels (None: all of them)."""
        for channel in list(self._confirmed) if channels is None else channels:
            event = self._confirmed.pop(channel, None)
            if event is not None:
                event.set()

    def _change(self, channel: str, add: bool) -> None:
        try:
            self._subscribe_queue.send_nowait((channel, add))
        except trio.WouldBlock:
            self._confirm([channel])
            # Only while Redis is away for long: a reconnect subscribes to every
            # channel in ``_channels`` anyway.
            BROKER_ERRORS.labels("subscription_queue_full").inc()

    async def watch_room(self, room: str) -> None:
        await self._watch(room_channel(room))

    async def unwatch_room(self, room: str) -> None:
        await self._unwatch(room_channel(room))

    async def watch_user(self, user_id: str) -> None:
        await self._watch(user_channel(user_id))

    async def unwatch_user(self, user_id: str) -> None:
        await self._unwatch(user_channel(user_id))

    # -- health ------------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            with trio.fail_after(self._cfg.timeout_s):
                await self._client.ping()
        except LINK_ERRORS as exc:
            self._note_down(exc)
            raise Unavailable(f"redis: {self._last_error}") from exc
        if not self.connected:
            raise Unavailable(f"redis: subscriber not connected ({self._last_error})")

    def _set_connected(self, up: bool) -> None:
        if up and not self.connected:
            if self._outage.failing:
                self._outage.recovered(
                    trio.current_time(), "node %s: broker connected to Redis at %s again (%d channels)",
                    self.node, self._address, len(self._channels) + 1,
                )
            else:
                log.info("node %s: broker connected to Redis at %s (%d channels)", self.node, self._address, len(self._channels) + 1)
        self.connected = up

    def _note_down(self, exc: BaseException) -> None:
        self._confirm()  # nobody waits on a link that is down; the reconnect subscribes to all
        self._last_error = describe_link_error(exc)
        self._outage.failed(
            trio.current_time(),
            "node %s: Redis at %s is unreachable (%s); this node serves only its own sessions until it is back: "
            "start Redis or fix broker.redis_url",
            self.node, self._address, self._last_error,
        )
        self._set_connected(False)
        if self._link is not None:
            # The subscription may be held by a link that still looks open (Redis
            # stalled rather than gone): start it again rather than trust it.
            self._link.cancel()
            self._link = None
