"""Prometheus metrics: one registry, process metrics, and the ``realtimed_*`` families.

Modules define their own families on ``REGISTRY`` next to the code that moves
them; this module holds the registry, the families every part shares, and the
exposition for ``/metrics``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Final

import trio
import trio.testing
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from realtimed import __version__
from realtimed.protocol import CLOSE_CODES

REGISTRY: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

BUILD_INFO: Final = Info("realtimed_build", "realtimed version", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

UP: Final = Gauge("realtimed_up", "1 while the daemon runs", registry=REGISTRY)
READY: Final = Gauge(
    "realtimed_backend_ready", "1 when the backend answered its last readiness check", ["backend"], registry=REGISTRY
)
RELOADS: Final = Counter("realtimed_config_reloads", "configuration reloads by outcome", ["outcome"], registry=REGISTRY)
HTTP_REQUESTS: Final = Counter(
    "realtimed_http_requests", "HTTP requests by door and status class", ["door", "status"], registry=REGISTRY
)
SERVER_API_REQUESTS: Final = Counter(
    "realtimed_server_api_requests",
    "server API requests made with a valid API key, by the key's name (api.keys), method and status class",
    ["key", "method", "status"],
    registry=REGISTRY,
)
SERVER_API_LIMITED: Final = Counter(
    "realtimed_server_api_rate_limited",
    "server API requests refused with 429 because their API key's budget (api.rate_limits) was spent, by key name",
    ["key"],
    registry=REGISTRY,
)
HTTP_CONNECTIONS: Final = Gauge(
    "realtimed_http_connections", "open connections on each listener, WebSocket ones included", ["listener"], registry=REGISTRY
)
HTTP_CONNECTIONS_CUT: Final = Counter(
    "realtimed_http_connections_cut",
    "HTTP connections the listener ended itself, by reason (head_timeout, idle, read_timeout, send_timeout, "
    "eof, wind_down, too_many_heads, refused, goaway)",
    ["reason"],
    registry=REGISTRY,
)

# Latency buckets for calls that should take a millisecond and alarm at a second.
_FAST_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

OP_LATENCY: Final = Histogram(
    "realtimed_op_duration_seconds",
    "time to run one client op (WebSocket frame or client REST call), budget check to handler return, by op "
    "(registered op names only)",
    ["op"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
HTTP_LATENCY: Final = Histogram(
    "realtimed_http_request_duration_seconds",
    "HTTP request handling time by route template (\"unmatched\" for a 404 or 405) and method",
    ["route", "method"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
STORE_LATENCY: Final = Histogram(
    "realtimed_store_call_duration_seconds",
    "one store call, queueing for a connection included, by backend and operation (the query function's name)",
    ["backend", "operation"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
BROKER_PUBLISH_LATENCY: Final = Histogram(
    "realtimed_broker_publish_duration_seconds",
    "time to hand one delivery to the broker (queueing for the broker's writer on Redis)",
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
LOOP_LAG: Final = Histogram(
    "realtimed_event_loop_lag_seconds",
    "how long a callback handed to the Trio loop waits before it runs: the scheduler's lag, which every socket "
    "on the node waits through",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
RECOVERIES: Final = Counter(
    "realtimed_recoveries",
    "subscribes that asked to recover from a position, by outcome: recovered (every missed publication "
    "replayed), reset (the position fell out of history: the client must reload), refused (an error answered)",
    ["outcome"],
    registry=REGISTRY,
)
SUBSCRIPTIONS: Final = Gauge(
    "realtimed_subscriptions", "room subscriptions held by local sockets", registry=REGISTRY
)
CLUSTER_NODES: Final = Gauge(
    "realtimed_cluster_nodes",
    "nodes this node sees alive in the cluster: itself and those with a live heartbeat that hold sessions "
    "(refreshed each heartbeat; 1 without Redis presence)",
    registry=REGISTRY,
)

#: Close codes that get their own value in the ``code`` label of ``realtimed_closes``: the
#: standard ones (RFC 6455 section 7.4.1) and every code realtimed sends (``protocol.CLOSE_CODES``,
#: 4000 for heartbeats among them); any other code a peer sends counts as ``other``, so the label
#: stays bounded.
KNOWN_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015}
    | {close.code for close in CLOSE_CODES}
)


def close_code_label(code: int) -> str:
    """The ``code`` label value for a close: the code if known, else ``other``."""
    return str(code) if code in KNOWN_CLOSE_CODES else "other"


def call_name(fn: Callable[..., object]) -> str:
    """A store call's ``operation`` label: its query function's name (bounded: names in the code).

    ``functools.partial`` is looked through; a lambda is named ``lambda``.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", "") or "other"
    return "lambda" if name == "<lambda>" else name.lstrip("_")


class ByteCounts:
    """Bytes read from and written to client sockets, by transport.

    Plain integers the socket code adds to (cheaper than a ``Counter.inc`` per
    read or write); exported as counters by the collector below.
    """

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


WEBSOCKET_BYTES: Final = ByteCounts()


class _BytesCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "realtimed_socket_received_bytes", "bytes read from client WebSocket sockets", labels=["transport"]
        )
        received.add_metric(["websocket"], WEBSOCKET_BYTES.received)
        sent = CounterMetricFamily(
            "realtimed_socket_sent_bytes", "bytes written to client WebSocket sockets", labels=["transport"]
        )
        sent.add_metric(["websocket"], WEBSOCKET_BYTES.sent)
        yield received
        yield sent


REGISTRY.register(_BytesCollector())


def _trio_tasks() -> float:
    """Live Trio tasks of this process, counted at scrape time (NaN off the Trio thread).

    A steady count under steady load is what a soak run checks: a task leaked per
    socket or per request shows as a count that only grows.
    """
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return float("nan")
    if root is None:
        return float("nan")
    count, stack = 0, [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return float(count)


TRIO_TASKS: Final = Gauge("realtimed_trio_tasks", "live Trio tasks in this process (counted at scrape time)", registry=REGISTRY)
TRIO_TASKS.set_function(_trio_tasks)

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)



def _observe_lag(sent: float) -> None:
    LOOP_LAG.observe(time.monotonic() - sent)


async def run_probes(
    *,
    lag_interval_s: float,
    readiness_interval_s: float,
    check_readiness: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Sample the event-loop lag every ``lag_interval_s`` and run ``check_readiness`` every
    ``readiness_interval_s``, forever.

    The lag is how long a callback handed to the loop from a thread waits before
    it runs: a single-threaded server is only as responsive as its scheduler, and
    a handler that blocks the thread delays every socket. The ticks come from a
    thread on the wall clock, so they put no deadline on Trio's clock (a test's
    ``MockClock`` jumps straight to its own deadlines).

    Resource handling: the ticking thread ends within ``lag_interval_s`` of this
    task's cancellation.
    """
    token = trio.lowlevel.current_trio_token()
    stop = threading.Event()
    due = trio.Event()
    # Under a test's MockClock the loop idles on purpose until the clock jumps, and a
    # wake-up every lag_interval_s would only delay each jump: no lag samples there.
    sample_lag = not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    wait_s = lag_interval_s if sample_lag else readiness_interval_s

    def readiness_due() -> None:
        due.set()

    def tick() -> None:
        next_readiness = time.monotonic() + readiness_interval_s
        while not stop.wait(wait_s):
            sent = time.monotonic()
            try:
                if sample_lag:
                    token.run_sync_soon(_observe_lag, sent)
                if sent >= next_readiness:
                    next_readiness = sent + readiness_interval_s
                    token.run_sync_soon(readiness_due)
            except trio.RunFinishedError:
                return

    async def ticker() -> None:
        try:
            await trio.to_thread.run_sync(tick, abandon_on_cancel=True, limiter=trio.CapacityLimiter(1))
        finally:
            stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        task_status.started()
        while True:
            try:
                await check_readiness()
            except Exception:
                log.exception("readiness check failed")
            due = trio.Event()
            await due.wait()
