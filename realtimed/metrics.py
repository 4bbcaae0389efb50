"""Prometheus metrics: one registry, process metrics, and the ``realtimed_*`` families.

Modules define their own families on ``REGISTRY`` next to the code that moves
them; this module holds the registry, the families every part shares, and the
exposition for ``/metrics``.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

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

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)
