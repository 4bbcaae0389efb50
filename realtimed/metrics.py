"""Prometheus metrics: one registry, process metrics, and the ``realtimed_*`` families.

Modules define their own families on ``REGISTRY`` next to the code that moves
them; this module holds the registry, the families every part shares, and the
exposition for ``/metrics``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Final

import trio
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
    "how late a periodic sleep wakes up: the Trio scheduler's lag, which every socket on the node waits through",
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

#: Close codes that get their own value in the ``code`` label of ``realtimed_closes``;
#: any other code a peer sends counts as ``other``, so the label stays bounded.
KNOWN_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015,
     4004, 4008, 4009, 4012, 4013, 4501, 4503, 4510, 4511}
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

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


async def watch_loop_lag(*, interval_s: float, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Observe how late a sleep of ``interval_s`` wakes, forever, into ``realtimed_event_loop_lag_seconds``.

    A single-threaded server is only as responsive as its scheduler: a handler
    that blocks the thread delays every socket, and this is where it shows.
    """
    task_status.started()
    while True:
        due = trio.current_time() + interval_s
        await trio.sleep_until(due)
        lag = trio.current_time() - due
        LOOP_LAG.observe(max(lag, 0.0))
        if lag > 1.0:
            log.warning("event loop lag: a sleep woke %.3f s late", lag)
