"""Typed, frozen configuration: defaults and units in one place.

The configuration is a tree of frozen attrs classes. ``load_config`` reads a TOML
file, applies ``REALTIMED__SECTION__KEY`` environment overrides, reads secrets
from ``<key>_file`` files or from systemd credentials (``<key>_credential``: a
file named so in ``$CREDENTIALS_DIRECTORY``, which ``LoadCredential=`` fills), and
validates everything at once: every unknown key, wrong type and out-of-range value
becomes one ``(key path, message)`` problem of a single ``ConfigError``.

Units live in the key names: ``_s`` is seconds (float), ``_ms`` milliseconds,
``_bytes`` bytes. Relative paths resolve against the folder of the config file.

Field metadata understood by the loader:

- ``min`` / ``max``: inclusive numeric bounds (or length bounds for lists);
- ``secret``: redacted by ``check-config``, and may come from ``<key>_file`` or
  ``<key>_credential``;
- ``path_credential``: a path field ``<x>_file`` whose file may instead be the
  systemd credential named by ``<x>_credential`` (a TLS key the service user could
  not read where it lies);
- ``coerce``: ``f(value, from_file)`` turns the raw value (TOML, or the lines of a
  ``_file`` or ``_credential``) into what the field's type expects;
- ``help``: one line for the configuration reference;
- ``merge``: a table whose entries are merged over the default's entries
  (an operator names only the entries they change);
- ``channel``: the section configures a notification delivery channel of the
  same name (``push``); types may name it in ``channels`` and users switch it
  per type (``realtimed.notify.channel``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import attrs

from realtimed.addresses import parse_network
from realtimed.errors import ConfigError
from realtimed.postgres_dsn import check_postgres_dsn
from realtimed.protocol import (
    DEFAULT_MAX_JSON_DEPTH,
    MAX_JSON_DEPTH,
    MAX_NOTIFICATION_TYPE_CHARS,
    MAX_STORED_JSON_DEPTH,
    json_depth_path,
)
from realtimed.redis_url import parse_redis_url
from realtimed.templates import TemplateError, placeholders

__all__ = ["Config", "ConfigError", "load_config"]

ENV_PREFIX: Final = "REALTIMED__"
DEFAULT_CONFIG_FILE: Final = "realtimed.toml"
REDACTED: Final = "***"

# The development credentials shipped in the repository's realtimed.toml. The daemon
# warns while they are in use and refuses them on a listener that is not loopback.
DEV_HS256_SECRET: Final = "realtimed-development-secret-do-not-deploy"
DEV_API_KEY: Final = "rtd_dev_key_do_not_deploy"

# Least HMAC secret per algorithm (the hash output size, RFC 7518 section 3.2) and
# least API key length, enforced when a listener is not loopback.
HMAC_MIN_SECRET_BYTES: Final[Mapping[str, int]] = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_API_KEY_CHARS: Final = 32

#: systemd sets this to the folder of the unit's credentials (``LoadCredential=``).
CREDENTIALS_DIRECTORY_ENV: Final = "CREDENTIALS_DIRECTORY"
#: A credential name: a plain file name in ``$CREDENTIALS_DIRECTORY`` (no ``/``, no
#: leading dot) that also fits ``LoadCredential=NAME:PATH`` without escaping.
CREDENTIAL_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: An API key's name: logged with the server API calls made with it, and a metric label.
API_KEY_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_T = TypeVar("_T")


def _f(
    default: Any,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    secret: bool = False,
    merge: bool = False,
    channel: bool = False,
    path_credential: bool = False,
    redact: bool = False,
) -> Any:
    """An attrs field with loader metadata; mutable defaults are copied per instance.

    ``secret``: redacted when shown, and may come from ``<key>_file`` or
    ``<key>_credential``; ``redact``: a table whose values are redacted when shown
    (its keys are not), with no other source.
    """
    meta = {
        "redact": redact,
        "help": help,
        "min": min,
        "max": max,
        "secret": secret,
        "merge": merge,
        "channel": channel,
        "path_credential": path_credential,
    }
    if isinstance(default, (list, dict)):
        return attrs.field(factory=lambda d=default: type(d)(d), metadata=meta)  # type: ignore[misc]
    if attrs.has(type(default)):
        return attrs.field(factory=type(default), metadata=meta)
    return attrs.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


@attrs.frozen
class ServerConfig:
    node: str = _f("", "node id shown to clients and in cluster logs; empty means the host name")
    state_dir: Path = _f(Path("state"), "folder for the SQLite database and other local state")

    @property
    def node_id(self) -> str:
        return self.node or socket.gethostname()


@attrs.frozen
class StaticMountConfig:
    path: str = _f("/app/", "URL prefix the folder is served under: starts and ends with /, e.g. /app/")
    dir: Path | None = _f(None, "folder served under path (relative to the config file); required")
    index: str = _f("index.html", "file served for a request that ends with /")


@attrs.frozen
class HttpConfig:
    listen: str = _f("127.0.0.1:8700", "HOST:PORT of the client listener (/ws, /api/v1, SSE, health)")
    internal_listen: str = _f(
        "", "HOST:PORT of the internal listener for /server/v1 and /metrics; empty: none"
    )
    expose_server_api: bool = _f(
        False,
        "serve /server/v1 and /metrics on a client listener that is not loopback "
        "(they are always served on a loopback client listener when no internal listener is set)",
    )
    tls_cert_file: str = _f(
        "", "PEM certificate chain; with tls_key_file, the client listener speaks TLS (or tls_cert_credential)",
        path_credential=True,
    )
    tls_key_file: str = _f(
        "", "PEM private key for tls_cert_file (or tls_key_credential)", secret=True, path_credential=True
    )
    max_body_bytes: int = _f(1_048_576, "largest HTTP request body", min=1024, max=64 * 1_048_576)
    keep_alive_s: float = _f(
        75.0, "idle HTTP keep-alive: a connection with no request in progress is closed after this long", min=1, max=3600
    )
    read_timeout_s: float = _f(
        60.0,
        "longest wait for the next bytes of a request body, for a client to take the next 64 KiB of an answer, "
        "and for a connection to end once the client has closed its side",
        min=1,
        max=3600,
    )
    drain_s: float = _f(
        2.0,
        "an answer ready before its request body has arrived (an error seen in the head) waits this long for "
        "the rest of the body (up to max_body_bytes) so that the connection stays open; otherwise an HTTP/1.1 "
        "answer says Connection: close, and the unread body is discarded for at most this long before closing",
        min=0,
        max=60,
    )
    h2c: bool = _f(
        False,
        "serve HTTP/2 without TLS (prior knowledge and Upgrade: h2c); off, the preface gets GOAWAY "
        "HTTP_1_1_REQUIRED and an h2c upgrade is answered over HTTP/1.1",
    )
    h2_max_resets: int = _f(
        200,
        "RST_STREAM frames an HTTP/2 client may send within h2_reset_window_s; one more ends the connection "
        "with GOAWAY ENHANCE_YOUR_CALM (rapid reset)",
        min=1,
        max=1_000_000,
    )
    h2_reset_window_s: float = _f(10.0, "the window over which h2_max_resets is counted", min=0.1, max=3600)
    cors_max_age_s: int = _f(600, "how long browsers cache a CORS preflight", min=0, max=86400)
    trusted_proxies: list[str] = _f(
        [],
        "addresses and CIDR networks of the proxies in front of realtimed, e.g. [\"127.0.0.1/32\", \"10.0.0.0/8\"]: "
        "only a connection from one of them may name the client (forwarded_header, the PROXY protocol), and its "
        "request heads are not counted per address; empty: trust nobody",
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = _f(
        "x-forwarded-for",
        "the header in which a trusted proxy names the client: x-forwarded-for, or forwarded (RFC 7239); the client "
        "is its rightmost address that is not a trusted proxy; the other header is ignored, and so is an unreadable "
        "one (the peer's address stands)",
    )
    proxy_protocol: Literal["off", "v1", "v2"] = _f(
        "off",
        "the client listener's connections start with a PROXY protocol header of this version (before TLS), which "
        "names the client; a connection from a peer outside trusted_proxies, or without a valid header, is closed",
    )
    internal_proxy_protocol: Literal["off", "v1", "v2"] = _f(
        "off", "proxy_protocol for the internal listener (http.internal_listen)"
    )
    health_reserve_connections: int = _f(
        8,
        "connections per listener that loopback and trusted_proxies peers may still open when their address has "
        "gateway.max_handshakes_per_ip unfinished heads, for a /healthz, /readyz or /metrics request only (any "
        "other request closes the connection), so that health checks are never starved; 0: none",
        min=0,
        max=10_000,
    )
    health_reserve_timeout_s: float = _f(
        0.5,
        "a request head on one of health_reserve_connections must be complete this long after it starts "
        "(the TLS handshake included), else the connection is closed",
        min=0.05,
        max=60,
    )
    backlog: int = _f(4096, "listen backlog", min=16, max=65535)
    static: list[StaticMountConfig] = _f(
        [],
        "folders of static files served on the client listener (GET and HEAD only; dotfiles, "
        "and anything outside the folder, are never served); none by default",
    )


@attrs.frozen
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = _f("info", "log level (reloads on SIGHUP)")
    format: Literal["text", "json"] = _f("text", "text for journald, json for log shippers")
    include_user_ids: bool = _f(
        True, "whether JSON log lines carry the user field (false leaves user ids out of it; reloads on SIGHUP)"
    )


@attrs.frozen
class ShutdownConfig:
    grace_s: float = _f(10.0, "how long a drain waits for sockets and jobs before cancelling", min=0, max=3600)
    reconnect_min_ms: int = _f(500, "least reconnect delay sent in server.shutdown", min=0, max=600_000)
    reconnect_max_ms: int = _f(5000, "greatest reconnect delay sent in server.shutdown", min=0, max=600_000)


@attrs.frozen
class StoreConfig:
    backend: Literal["sqlite", "postgres"] = _f("sqlite", "sqlite (embedded) or postgres")
    sqlite_path: str = _f("realtimed.db", "SQLite file, relative to server.state_dir")
    sqlite_batch_max: int = _f(512, "most writes grouped in one SQLite transaction", min=1, max=100_000)
    sqlite_readers: int = _f(4, "worker threads for SQLite reads", min=1, max=64)
    postgres_dsn: str = _f(
        "postgresql://postgres@127.0.0.1:5432/realtimed",
        "PostgreSQL connection URL, postgresql://user:password@host[:port][,host[:port]...]/db[?options], "
        "checked at load as asyncpg reads it (percent-encode @ : / ? # in the user and password)",
        secret=True,
    )
    pool_min: int = _f(2, "PostgreSQL pool: connections kept open", min=0, max=1000)
    pool_max: int = _f(20, "PostgreSQL pool: most connections", min=1, max=1000)
    statement_timeout_s: float = _f(10.0, "longest a statement may run", min=0.1, max=3600)
    connect_timeout_s: float = _f(5.0, "longest a connection attempt may take", min=0.1, max=600)
    apply_migrations: bool = _f(True, "apply pending migrations at start (else: refuse to start)")


@attrs.frozen
class BrokerConfig:
    backend: Literal["memory", "redis"] = _f("memory", "memory (one node) or redis (cluster)")
    redis_url: str = _f(
        "redis://127.0.0.1:6379/0",
        "Redis URL: redis://, rediss:// or unix:// (one server); "
        "redis+sentinel://[:password@]host:26379[,host:port...]/SERVICE[/DB][?sentinel_password=...] "
        "(the primary that Sentinel names); redis+cluster://[:password@]host:port[,host:port...] "
        "(Redis Cluster); see \"Running a cluster\"",
        secret=True,
    )
    timeout_s: float = _f(5.0, "longest wait for any Redis call", min=0.1, max=600)
    node_ttl_s: float = _f(15.0, "a node that stops heartbeating is dead after this long", min=1, max=3600)
    survey_timeout_s: float = _f(
        2.0,
        "longest wait for the other nodes' answers to a cluster-wide question (GET /server/v1/connections, "
        "/presence/counts); a node that has not answered by then is left out and the answer says complete: false",
        min=0.1,
        max=60,
    )
    history_sweep_s: float = _f(
        60.0,
        "how often the memory backend drops the rooms whose history has all expired (Redis expires its own keys)",
        min=1,
        max=86400,
    )


@attrs.frozen
class ClaimRoomConfig:
    claim: str = _f("", "token claim whose value (a string or a list of strings) names rooms, e.g. \"roles\"")
    prefix: str = _f(
        "",
        "room prefix ending with ':': each value v of the claim gives the room <prefix>v, e.g. \"role:\"; "
        "the session is in those rooms from connect to close, and clients cannot subscribe to them",
    )


@attrs.frozen
class AuthConfig:
    algorithms: list[str] = _f(["HS256"], "accepted JWT algorithms (HS256, RS256, ES256, EdDSA)")
    hs256_secret: str = _f("", "shared secret for HS256 (or hs256_secret_file)", secret=True)
    public_key_files: list[str] = _f([], "PEM public keys for RS256 / ES256 / EdDSA")
    jwks_url: str = _f("", "JWKS URL for RS256 / ES256 / EdDSA keys")
    jwks_timeout_s: float = _f(5.0, "longest a JWKS fetch may take", min=0.1, max=120)
    jwks_refresh_min_s: float = _f(60.0, "least time between JWKS refreshes on an unknown kid", min=1, max=86400)
    leeway_s: float = _f(
        30.0,
        "clock leeway for exp, nbf and iat; a token is accepted, and an open socket or SSE stream kept, "
        "until exp plus this (the same on every door)",
        min=0,
        max=3600,
    )
    max_token_bytes: int = _f(
        8192,
        "largest token accepted (header, ?token=, auth frame, HTTP bearer); over it: refused as UNAUTHORIZED",
        min=1024,
        max=65_536,
    )
    audience: str = _f("", "required aud claim; empty: not checked")
    issuer: str = _f("", "required iss claim; empty: not checked")
    require_exp: bool = _f(True, "refuse tokens without exp")
    dev_token_ttl_s: float = _f(3600.0, "default lifetime of tokens minted by `realtimed token`", min=1, max=31_536_000)
    claim_rooms: list[ClaimRoomConfig] = _f(
        [], "rooms given by token claims (e.g. claim roles, prefix role:); none by default"
    )
    max_claim_rooms: int = _f(
        32, "most rooms a token's claims may give through auth.claim_rooms; a token with more is refused", min=1, max=1024
    )


@attrs.frozen
class OpLimitConfig:
    """One per-user op budget: a bucket of ``per`` ops that refills over ``window_s``."""

    per: int = _f(100, "ops a user may send at once (the bucket's size); it refills at per / window_s a second", min=1, max=1_000_000)
    window_s: float = _f(10.0, "seconds over which a spent budget refills completely", min=0.001, max=86400)


#: The op budget that applies to every op with no entry of its own (and the API key budget of every key without one).
ANY_OP: Final = "*"


@attrs.frozen
class ApiKeyConfig:
    name: str = _f(
        "",
        "the key's name (letters, digits, _ . -; at most 64): logged with every server API call that "
        "changes state, and the key label of realtimed_server_api_requests_total",
    )
    key: str = _f("", "the key itself (or key_file, key_credential)", secret=True)


def positional_key_name(index: int) -> str:
    """The name of an API key given without one: its place in ``api.keys``."""
    return f"keys[{index}]"


def _api_keys(value: Any) -> list[ApiKeyConfig]:
    """``ApiConfig(keys=...)`` from code: bare strings are named by position."""
    return [
        item if isinstance(item, ApiKeyConfig) else ApiKeyConfig(name=positional_key_name(i), key=item)
        for i, item in enumerate(value)
    ]


def _coerce_api_keys(value: Any, from_file: bool) -> Any:
    """``api.keys`` as written: a bare string is a key named by its position, a table is
    ``{name, key}``; a line of ``keys_file`` (or of the credential) is ``name:key`` or a bare key."""
    if not isinstance(value, list):
        return value
    out: list[Any] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            name, sep, key = item.partition(":")
            if from_file and sep:
                out.append({"name": name.strip(), "key": key.strip()})
            else:
                out.append({"name": positional_key_name(i), "key": item})
        elif isinstance(item, dict) and "name" not in item:
            out.append({"name": positional_key_name(i), **item})
        else:
            out.append(item)
    return out


@attrs.frozen
class ApiConfig:
    keys: list[ApiKeyConfig] = attrs.field(
        factory=list,
        converter=_api_keys,
        metadata={
            "help": "API keys for /server/v1: {name, key} tables, or bare keys (named keys[0], keys[1], ... "
            "by position); or keys_file / keys_credential, one `name:key` (or bare key) per line",
            "secret": True,
            "coerce": _coerce_api_keys,
        },
    )

    rate_limits: dict[str, OpLimitConfig] = _f(
        {},
        "server API budgets per API key, counted on each node: a key's name (api.keys), or \"*\" for every key "
        "without an entry, = {per, window_s} (a bucket of per requests refilling over window_s, as "
        "gateway.op_limits); over it: 429 RATE_LIMITED with Retry-After; a key with no budget is not limited",
    )

    @property
    def key_values(self) -> list[str]:
        """The keys themselves, whatever their names."""
        return [entry.key for entry in self.keys]

    def rate_limit(self, key_name: str) -> OpLimitConfig | None:
        """The budget of the key named ``key_name`` (its own, else ``"*"``); None: not limited."""
        return self.rate_limits.get(key_name) or self.rate_limits.get(ANY_OP)


#: Ops that no per-user budget counts: ``auth`` is not an op a user runs, and
#: ``ping`` costs nothing (the per-socket bucket still counts both).
UNLIMITED_OPS: Final = frozenset({"auth", "ping"})

#: Budgets of the client REST routes that serve no op (realtimed/http/budgets.py
#: says which route charges which). They are named and configured like ops.
REST_BUDGETS: Final = frozenset(
    {
        "conversation.get",
        "notification.unread_count",
        "preferences.get",
        "preferences.put",
        "device.register",
        "device.list",
        "device.unregister",
    }
)

# Chosen so that people chatting, reading and reconnecting never meet them
# (a burst of 300 of any one op, 30 a second after it; 60 messages at once, then
# 6 a second), while a script spraying one op is cut off within a second. The
# REST-only writes that an app makes a few times a session (registering a push
# token at start-up or when FCM rotates it, saving a settings screen) get a
# minute-long window, so that a loop writing them is held to one a second.
DEFAULT_OP_LIMITS: Final[dict[str, OpLimitConfig]] = {
    ANY_OP: OpLimitConfig(per=300, window_s=10.0),
    "message.send": OpLimitConfig(per=60, window_s=10.0),
    "conversation.open": OpLimitConfig(per=30, window_s=60.0),
    "conversation.create": OpLimitConfig(per=30, window_s=60.0),
    "device.register": OpLimitConfig(per=60, window_s=60.0),
    "preferences.put": OpLimitConfig(per=60, window_s=60.0),
}


@attrs.frozen
class GatewayConfig:
    path: str = _f("/ws", "WebSocket path")
    allowed_origins: list[str] = _f(
        [], "browser origins allowed to connect and to call /api/v1 (\"*\": any); no Origin header is always allowed"
    )
    handshake_timeout_s: float = _f(
        10.0, "longest time to send a complete request head (every request of a connection), or upgrade request",
        min=0.1, max=600,
    )
    auth_timeout_s: float = _f(5.0, "longest wait for a first-frame auth", min=0.1, max=600)
    heartbeat_s: float = _f(25.0, "server ping period; two silent periods close the socket", min=1, max=3600)
    expiring_notice_s: float = _f(
        60.0,
        "session.expiring comes this long before the token expires "
        "(right after session.ready, or the auth reply, when less is left)",
        min=0,
        max=86400,
    )
    max_frame_bytes: int = _f(524_288, "largest client frame (over it: close 1009)", min=1024, max=64 * 1_048_576)
    max_json_depth: int = _f(
        DEFAULT_MAX_JSON_DEPTH,
        "deepest nesting of arrays and objects in a field of a client frame or an HTTP body, in levels "
        "(over it: VALIDATION_ERROR naming the field)",
        min=1,
        max=MAX_JSON_DEPTH,
    )
    outbox_max_bytes: int = _f(
        1_048_576, "largest backlog of unsent bytes per socket (over it: close 4008)", min=4096, max=1 << 30
    )
    ops_per_s: float = _f(50.0, "sustained ops per second per socket", min=0.1, max=100_000)
    ops_burst: int = _f(100, "op burst per socket", min=1, max=1_000_000)
    abuse_limit: int = _f(
        100,
        "frames refused in a row, over the rate limit or malformed (not JSON, not an object, bad id or op, "
        "data not an object, nested too deep), before the socket is closed with 4009",
        min=1,
        max=1_000_000,
    )
    op_limits: dict[str, OpLimitConfig] = _f(
        DEFAULT_OP_LIMITS,
        "per-user op budgets shared by the WebSocket and REST doors (every /api/v1 route but the SSE stream), "
        "counted on each node: op name, or the budget of a REST-only route "
        f"({', '.join(sorted(REST_BUDGETS))}), "
        "or \"*\" for every name without an entry, each counted apart, = {per, window_s}; "
        "entries given here replace the default entry of that op and keep the others; "
        "over a budget: RATE_LIMITED with retry_after_ms (auth and ping are not counted)",
        merge=True,
    )
    ban_cache_s: float = _f(
        5.0,
        "how long a node trusts what the store said about a user's ban for client REST calls "
        "(sockets and SSE always ask the store); 0: ask every time",
        min=0,
        max=3600,
    )
    max_subscriptions: int = _f(256, "app rooms per socket", min=1, max=1_000_000)
    max_sockets_per_user: int = _f(32, "sockets per user (over it: close 4511)", min=1, max=1_000_000)
    max_sockets: int = _f(200_000, "sockets per node (over it: close 4013)", min=1, max=10_000_000)
    max_handshakes_per_ip: int = _f(
        64, "unfinished handshakes and request heads per client address (over it: the connection is closed)",
        min=1, max=1_000_000,
    )
    max_admissions: int = _f(
        64,
        "sessions (WebSocket and SSE) being admitted at once: ban, device count, session.ready and presence "
        "asked of the store and the presence backend; more wait their turn in arrival order, so a reconnect "
        "storm is served first come, first served and never has more than this many store reads in flight",
        min=1, max=100_000,
    )
    max_head_bytes: int = _f(
        16_384,
        "largest HTTP/1.1 request head (over it: 431), and largest HTTP/2 header list (over it: GOAWAY)",
        min=1024,
        max=1_048_576,
    )


@attrs.frozen
class SocketIOConfig:
    enabled: bool = _f(
        True,
        "serve the Socket.IO door (Engine.IO v4, Socket.IO v5) on the client listener, so that apps built on "
        "socket.io-client connect without changing their transport library",
    )
    path: str = _f("/socket.io/", "the Socket.IO path (socket.io-client's \"path\" option)")
    ping_interval_ms: int = _f(25_000, "Engine.IO ping period", min=100, max=3_600_000)
    ping_timeout_ms: int = _f(
        20_000, "how long a ping waits for its pong before the session closes", min=100, max=3_600_000
    )
    connect_timeout_ms: int = _f(
        45_000, "longest wait for the Socket.IO CONNECT after the Engine.IO handshake (then the session closes)",
        min=100, max=3_600_000,
    )
    max_payload_bytes: int = _f(
        1_000_000,
        "largest Engine.IO message, and largest HTTP long-polling body (over it: the session closes; HTTP 413)",
        min=1024, max=64 * 1_048_576,
    )
    max_attachments: int = _f(
        10, "most binary attachments one Socket.IO packet may announce (over it: the session closes)", min=0, max=1000,
    )
    transports: list[Literal["polling", "websocket"]] = _f(
        ["polling", "websocket"],
        "transports offered; under run --workers N only websocket is (long-polling needs its session's requests "
        "on one process)",
        min=1,
    )
    recovery_ttl_s: float = _f(
        120.0, "how long a disconnected Socket.IO session's positions are kept for connection state recovery "
        "(0: no recovery)",
        min=0, max=86_400,
    )
    recovery_positions: int = _f(
        1000, "events with an offset a Socket.IO session remembers; a reconnect from an older offset is not "
        "recovered", min=1, max=100_000,
    )
    recovery_max_replay: int = _f(
        1000, "most events (publications, messages, notifications) one recovery replays (more: recovered is "
        "false), most live events held while it is read (more: close 4008), and most contacts whose presence, and "
        "conversation members whose typing, it resends", min=1, max=100_000,
    )


@attrs.frozen
class NamespaceConfig:
    prefix: str = _f("", "room prefix this namespace governs, e.g. \"job:\"")
    public: bool = _f(False, "any user may subscribe (else the token's rooms claim decides)")
    client_publish: bool = _f(False, "clients may publish")
    history_size: int = _f(0, "publications kept for recovery (0: no history)", min=0, max=1_000_000)
    history_ttl_s: float = _f(300.0, "how long publications stay in history", min=0, max=31_536_000)
    recovery_cap: int = _f(300, "most publications replayed by one recovery", min=0, max=1_000_000)
    presence: bool = _f(False, "keep room presence and send room.joined / room.left")


@attrs.frozen
class ChatConfig:
    open_policy: Literal["anyone", "contacts"] = _f("anyone", "who may open a 1:1 conversation with whom")
    max_message_bytes: int = _f(65_536, "largest message body in UTF-8 bytes", min=1, max=16 * 1_048_576)
    max_group_members: int = _f(500, "most members of a group", min=2, max=1_000_000)
    typing_timeout_s: float = _f(6.0, "typing ends by itself after this long without a refresh", min=1, max=600)
    typing_per_s: float = _f(2.0, "typing events per user and conversation per second", min=0.1, max=1000)


@attrs.frozen
class PresenceConfig:
    offline_grace_s: float = _f(10.0, "a user turns offline this long after the last socket closed", min=0, max=3600)
    away_after_s: float = _f(300.0, "a user turns away after this long with no op other than ping", min=1, max=86400)
    throttle_s: float = _f(1.0, "presence.updated per user at most this often", min=0, max=3600)
    idle_check_s: float = _f(
        15.0,
        "an idle (away) user's devices are checked for ops other than chat and presence ones this long "
        "after they turned away, then at doubling intervals up to 4 times this (chat and presence ops "
        "bring them back at once)",
        min=0.1,
        max=3600,
    )


#: ``jobs.cron_catch_up``: what a cron entry that has never run does at start.
CronCatchUp = Literal["none", "last"]


@attrs.frozen
class JobQueueConfig:
    name: str = _f("default", "queue name")
    concurrency: int = _f(4, "jobs of this queue run at once on each node", min=1, max=10_000)


#: The job kind that calls an application's HTTP endpoint (``realtimed.jobs.http``).
HTTP_JOB_KIND: Final = "http"
#: The methods an HTTP job may use.
HTTP_JOB_METHODS: Final[tuple[str, ...]] = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: An HTTP target's name: letters, digits, _ . - (at most 64).
HTTP_TARGET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A header name (RFC 9110 token).
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
#: Headers realtimed sets itself on an HTTP job's request; a target may not set them.
HTTP_JOB_RESERVED_HEADERS: Final = frozenset({
    "host", "content-length", "content-type", "transfer-encoding", "connection", "user-agent", "te", "upgrade",
    "keep-alive", "trailer", "expect", "webhook-id", "webhook-timestamp", "webhook-signature",
})


@attrs.frozen
class HttpTargetConfig:
    name: str = _f("", "target name (letters, digits, _ . -; at most 64), unique; HTTP jobs name it")
    base_url: str = _f(
        "", "http:// or https:// URL without credentials, query or fragment; a job's path is appended to it"
    )
    headers: dict[str, str] = _f(
        {}, "headers sent with every request to this target (not host, content-*, user-agent, webhook-*); their "
        "values are redacted when the configuration is shown", redact=True,
    )
    secret: str = _f(
        "", "signing secret (whsec_<base64 of 24 to 64 bytes>): each request carries the Standard Webhooks "
        "headers webhook-id (the job id), webhook-timestamp and webhook-signature; or give secrets", secret=True,
    )
    secrets: list[str] = _f(
        [], "instead of secret: one or two signing secrets (whsec_<base64>); with two (the new, then the old, "
        "while rotating), every request carries both signatures", secret=True,
    )

    @property
    def signing_secrets(self) -> tuple[str, ...]:
        """The secrets each request is signed with: ``secrets``, or the one ``secret``."""
        return tuple(self.secrets) if self.secrets else (self.secret,)


@attrs.frozen
class HttpJobsConfig:
    queue: str = _f("http", "job queue of HTTP jobs made through the server API without a queue; give it a "
                    "concurrency in [[jobs.queues]]")
    max_attempts: int = _f(
        8, "attempts of an HTTP job that names none (and of those of [[cron]]), before it is dead", min=1, max=100
    )
    backoff_base_s: float = _f(
        5.0, "first retry delay of an HTTP job that names none (doubles each attempt, with jitter)", min=0, max=86400
    )
    backoff_max_s: float = _f(3600.0, "longest retry delay of an HTTP job that names none", min=0, max=86400)
    max_retry_after_s: float = _f(
        86400.0, "longest wait honoured from a Retry-After header (a longer one is cut to this)", min=0, max=31_536_000
    )
    max_delay_s: float = _f(
        31 * 86400.0, "latest an HTTP job may be scheduled through the server API (run_at or delay_s from now)",
        min=0, max=366 * 86400.0,
    )
    max_body_bytes: int = _f(
        65536, "largest JSON body of an HTTP job (server API and [[cron]]), encoded", min=0, max=16 * 1024 * 1024
    )
    connect_timeout_s: float = _f(5.0, "longest the name lookup and the connection to a target may take", min=0.1, max=600)
    timeout_s: float = _f(30.0, "longest one attempt (request and response) may take; then it is retried", min=0.1, max=3600)
    max_response_bytes: int = _f(
        65536, "most bytes of a response body read; the rest is not read", min=0, max=16 * 1024 * 1024
    )
    excerpt_chars: int = _f(
        500, "most characters of a response body kept in a failed attempt's last_error", min=0, max=1500
    )
    ca_file: str = _f("", "PEM CA certificates trusted for https:// targets besides the system ones")
    allow_private: bool = _f(
        False, "allow targets resolving to loopback, link-local, private or other non-public addresses"
    )
    keepalive_s: float = _f(
        30.0, "an idle connection to a target is kept this long for the next requests to the same host, port and "
        "address, then closed (0: a new connection per request)", min=0, max=3600,
    )
    max_idle_connections: int = _f(
        64, "most idle kept-alive connections per target host, port and address (more at once are opened "
        "as needed and closed after their answer)", min=0, max=1024,
    )
    dns_cache_s: float = _f(
        30.0, "a host name's checked address is reused this long before it is resolved again (0: resolved at "
        "every request; an IP address is never looked up)", min=0, max=3600,
    )


@attrs.frozen
class JobsConfig:
    enabled: bool = _f(True, "run jobs on this node")
    lease_s: float = _f(30.0, "job lease; renewed every third of it while the handler runs", min=1, max=86400)
    poll_s: float = _f(5.0, "safety-net poll for new work", min=0.05, max=3600)
    max_attempts: int = _f(5, "default attempts before a job is dead", min=1, max=1000)
    backoff_base_s: float = _f(2.0, "first retry delay (doubles each attempt, with jitter)", min=0, max=86400)
    backoff_max_s: float = _f(3600.0, "longest retry delay", min=0, max=31_536_000)
    queues: list[JobQueueConfig] = _f([], "queues and their concurrency (others use the default queue's)")
    http: HttpJobsConfig = _f(HttpJobsConfig())
    http_targets: list[HttpTargetConfig] = _f(
        [], "the application's HTTP endpoints that HTTP jobs call ([[jobs.http_targets]]); no URL or secret "
        "comes from a request; a reload applies them (the rest of [jobs] needs a restart)"
    )
    cron_catch_up: CronCatchUp = _f(
        "none",
        "what a cron entry (built-in or [[cron]]) that has never run does when a node starts: none waits for "
        "its next tick; last runs its latest past tick once at start. An entry that has run before always runs "
        "its latest missed tick once after downtime, never the earlier ones",
    )


@attrs.frozen
class CronConfig:
    name: str = _f("", "entry name, unique")
    schedule: str = _f("", "five-field cron schedule, or six with seconds first")
    kind: str = _f("", "job kind to enqueue: one a node handles (realtimed/jobs/kinds.py), else a config error")
    payload: dict[str, Any] = _f({}, "job payload, checked against the kind's payload type (not with kind = \"http\")")
    queue: str = _f("default", "job queue")
    target: str = _f("", "kind = \"http\" only: the [[jobs.http_targets]] name called")
    path: str = _f("", "kind = \"http\" only: the path below the target's base_url (relative: no scheme, host or ..)")
    method: str = _f("", "kind = \"http\" only: GET, POST, PUT, PATCH or DELETE (empty: POST)")
    body: dict[str, Any] = _f({}, "kind = \"http\" only: the JSON body (a table; sent with every method but GET)")
    timezone: str = _f("UTC", "IANA time zone of the schedule")


@attrs.frozen
class RetentionConfig:
    read_notifications_days: float = _f(30.0, "read notifications are deleted after this long", min=0, max=36500)
    unread_notifications_days: float = _f(
        0.0,
        "unread notifications are deleted this long after they were created; 0: kept until read "
        "(expired ones, past their expires_at, are deleted whatever this says)",
        min=0,
        max=36500,
    )
    finished_jobs_days: float = _f(7.0, "succeeded, dead and cancelled jobs are deleted after this long", min=0, max=36500)
    deleted_messages_days: float = _f(30.0, "bodies of deleted messages are purged after this long", min=0, max=36500)
    stale_device_days: float = _f(270.0, "device tokens unseen this long are deactivated", min=1, max=36500)
    delivery_log_days: float = _f(
        30.0, "delivery log entries are deleted after this long (by the retention.notifications job)", min=0, max=36500
    )


#: The in-app inbox: a channel of every node, with no section of its own.
IN_APP_CHANNEL: Final = "in_app"


@attrs.frozen
class NotificationTypeConfig:
    name: str = _f("", "type name (letters, digits, _ . -), e.g. new_message; replaces a built-in type of that name")
    title: str = _f("", "title template; {placeholders} must be listed in vars")
    body: str = _f("", "body template")
    vars: list[str] = _f([], "the template variables of this type; the server API must give each")
    channels: list[str] = _f(
        ["in_app", "push"], "delivery channels the type uses (in_app, push, ...); users may turn each off"
    )
    priority: Literal["low", "normal", "high", "critical"] = _f(
        "normal", "low, normal, high or critical (critical bypasses caps, quiet hours and digests)"
    )
    group_by: str = _f("", "a var whose value groups notifications (group_key type:value); empty: the type")
    digest_window_s: float = _f(
        0.0, "pushes of one group within this window become one digest push; 0: no digest", min=0, max=86400
    )
    digest_title: str = _f("", "digest push title template (empty: the title template)")
    digest_body: str = _f("", "digest push body template; may also use {count}")
    push_content: bool = _f(True, "pushes show the title and body; false: private_title and private_body (privacy)")
    private_title: str = _f("New notification", "push title template when push_content is false")
    private_body: str = _f("", "push body template when push_content is false")
    hourly_cap: int = _f(0, "pushes of this type per user per hour; 0: notify.hourly_cap_per_type", min=0, max=1_000_000)
    android_channel_id: str = _f("", "Android notification channel id (empty: the app's default)")
    sound: str = _f("default", "push sound (empty: silent)")
    ttl_s: float = _f(86400.0, "how long FCM keeps an undelivered push", min=0, max=2_419_200)


@attrs.frozen
class NotifyConfig:
    builtin_types: bool = _f(
        True,
        "ship the built-in types (new_message, new_follower, post_like, post_comment, mention, "
        "job_completed, job_failed, announcement)",
    )
    types: list[NotificationTypeConfig] = _f([], "notification types, added to (or replacing) the built-in ones")
    push_skip_when_active: bool = _f(True, "no push while the user is active on a connected device")
    active_window_s: float = _f(
        120.0, "a connected device counts as active this long after its last op other than ping", min=0, max=86400
    )
    daily_cap: int = _f(50, "pushes per user per day in their time zone (critical bypasses); 0: none", min=0, max=1_000_000)
    hourly_cap_per_type: int = _f(
        10, "pushes per user per type per hour (critical bypasses); 0: none", min=0, max=1_000_000
    )
    max_recipients: int = _f(10_000, "most user ids in one POST /server/v1/notifications", min=1, max=1_000_000)
    max_expiry_s: float = _f(
        30 * 86400.0,
        "latest expires_at a notification may be given, in seconds from now (or from its scheduled_for)",
        min=1,
        max=3650 * 86400.0,
    )
    plan_batch: int = _f(500, "recipients per push-planning job", min=1, max=100_000)
    delivery_log: bool = _f(
        True,
        "record the outcome of each notification per user and channel (GET /server/v1/deliveries); "
        "kept retention.delivery_log_days",
    )


@attrs.frozen
class PushConfig:
    service_account_file: str = _f(
        "", "Firebase service-account key file (JSON; or service_account_credential); empty: push is off",
        path_credential=True,
    )
    project_id: str = _f("", "Firebase project id; empty: the key file's project_id")
    token_url: str = _f("", "OAuth2 token endpoint; empty: the key file's token_uri")
    fcm_url: str = _f("https://fcm.googleapis.com", "FCM base URL (POST /v1/projects/<id>/messages:send)")
    iid_url: str = _f("https://iid.googleapis.com", "Instance ID base URL (topic subscriptions)")
    max_token_chars: int = _f(
        4096,
        "longest push token POST /api/v1/devices registers (a token is opaque: any printable ASCII but space)",
        min=64,
        max=4096,
    )
    max_device_info_chars: int = _f(
        128, "longest value of a device_info field (model, os, os_version, app_version) at registration", min=8, max=1024
    )
    ca_file: str = _f("", "PEM CA certificates trusted for those endpoints besides the system ones")
    http2: bool = _f(True, "speak HTTP/2 to FCM (many concurrent sends on one connection)")
    h2_sender: bool = _f(
        True,
        "send messages:send over realtimed's own HTTP/2 connection (h2 on a Trio TLS stream, far less CPU per "
        "send than httpx); false, push.http2 = false or an endpoint that does not choose h2: through httpx",
    )
    max_response_bytes: int = _f(
        65536, "largest FCM answer body read (bytes); a larger one counts as a network failure", min=1024,
        max=16 * 1024 * 1024,
    )
    concurrency: int = _f(64, "FCM requests in flight per node (push.send jobs wait for a slot)", min=1, max=10_000)
    queue: str = _f("push", "job queue of push.send; give it a concurrency in [[jobs.queues]]")
    connect_timeout_s: float = _f(5.0, "longest a connection to FCM or the token endpoint may take", min=0.1, max=600)
    request_timeout_s: float = _f(10.0, "longest one FCM request may take", min=0.1, max=600)
    token_timeout_s: float = _f(10.0, "longest one access-token request may take", min=0.1, max=600)
    token_refresh_margin_s: float = _f(
        300.0, "fetch a new access token this long before the current one expires", min=0, max=3000
    )
    max_attempts: int = _f(6, "attempts per push before it is dead", min=1, max=100)
    backoff_base_s: float = _f(2.0, "first retry delay of a failed push (doubles each attempt, with jitter)", min=0, max=3600)
    backoff_max_s: float = _f(600.0, "longest retry delay of a failed push", min=0, max=86400)
    quota_retry_s: float = _f(60.0, "wait after a 429 that gives no Retry-After (every sender waits)", min=0, max=86400)


@attrs.frozen
class EmailTemplateConfig:
    type: str = _f("", "the notification type this template is for (notify.types or a built-in type)")
    subject: str = _f("", "subject template; empty: the type's title")
    text: str = _f("", "plain-text body template; empty: the type's body")
    html: str = _f(
        "", "HTML body template; every value is HTML-escaped where it is put in; empty: the text part, escaped, "
        "in a minimal page"
    )


@attrs.frozen
class EmailConfig:
    enabled: bool = _f(False, "deliver notifications by email (types name email in channels)")
    host: str = _f("127.0.0.1", "SMTP submission server host")
    port: int = _f(587, "SMTP submission server port (587 with starttls, 465 with tls)", min=1, max=65535)
    security: Literal["starttls", "tls", "none"] = _f(
        "starttls", "starttls (upgrade a plain connection, required), tls (TLS from the start) or none"
    )
    username: str = _f("", "SMTP AUTH user; empty: no authentication")
    password: str = _f("", "SMTP AUTH password (or password_file, password_credential)", secret=True)
    ca_file: str = _f("", "PEM CA certificates trusted for the SMTP server besides the system ones")
    from_address: str = _f("", "the From address, e.g. \"Example <notify@example.com>\"; required when enabled")
    reply_to: str = _f("", "Reply-To address; empty: none")
    max_connections: int = _f(
        4, "SMTP connections per node (each email waits for a free one; idle ones are reused)", min=1, max=256
    )
    idle_timeout_s: float = _f(
        30.0, "an idle pooled connection older than this is closed instead of reused", min=0, max=3600
    )
    connect_timeout_s: float = _f(10.0, "longest a connection, its TLS and its login may take", min=0.1, max=600)
    send_timeout_s: float = _f(30.0, "longest one SMTP command may take (the socket timeout)", min=0.1, max=600)
    public_base_url: str = _f(
        "", "public http(s) URL of this daemon's client listener, for unsubscribe links "
        "(<public_base_url>/email/unsubscribe/<token>); required when enabled"
    )
    unsubscribe_secret: str = _f(
        "", "signs unsubscribe links (at least 32 characters; or unsubscribe_secret_file); required when enabled",
        secret=True,
    )
    unsubscribe_ttl_s: float = _f(
        90 * 86400.0, "how long an unsubscribe link works", min=3600, max=10 * 365 * 86400.0
    )
    templates: list[EmailTemplateConfig] = _f([], "per-type subject, text and HTML templates ([[email.templates]])")
    digest_subject: str = _f(
        "{count} new notifications", "subject template of a user's hourly or daily digest email ({count})"
    )
    digest_max_items: int = _f(
        50, "most notifications listed in one digest email (the rest are counted)", min=1, max=1000
    )
    queue: str = _f("email", "job queue of email.send; give it a concurrency in [[jobs.queues]]")
    max_attempts: int = _f(8, "attempts per email before it is dead (4xx answers and connection failures)", min=1, max=100)
    backoff_base_s: float = _f(
        30.0, "first retry delay of an email that failed for now (doubles each attempt, with jitter)", min=0, max=86400
    )
    backoff_max_s: float = _f(3600.0, "longest retry delay of an email", min=0, max=86400)
    max_address_chars: int = _f(254, "longest email address accepted (RFC 5321 path limit)", min=6, max=998)


#: The events a webhook endpoint may subscribe to (docs/protocol.md, "Webhooks").
WEBHOOK_EVENTS: Final[tuple[str, ...]] = (
    "message.new",
    "message.unread_offline",
    "notification.new",
    "notification.read",
    "delivery.failed",
    "device.removed",
    "presence.online",
    "presence.offline",
    "room.joined",
    "room.left",
    "job.dead",
)
#: A webhook endpoint id: letters, digits, _ . - (at most 64).
WEBHOOK_ENDPOINT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: A webhook signing secret: ``whsec_`` then base64 of 24 to 64 bytes (Standard Webhooks).
WEBHOOK_SECRET_PREFIX: Final = "whsec_"


@attrs.frozen
class WebhookEndpointConfig:
    id: str = _f("", "endpoint id (letters, digits, _ . -; at most 64), unique among all endpoints")
    url: str = _f("", "http:// or https:// URL the events are POSTed to")
    events: list[str] = _f([], "event names to deliver; empty: every event")
    secrets: list[str] = _f(
        [], "one or two signing secrets (whsec_<base64>); with two, every delivery carries both signatures (rotation)",
        secret=True,
    )
    enabled: bool = _f(True, "deliver to this endpoint")


@attrs.frozen
class WebhooksConfig:
    endpoints: list[WebhookEndpointConfig] = _f(
        [], "endpoints from the configuration ([[webhooks.endpoints]]); replaced on reload, those made through "
        "the server API are kept"
    )
    queue: str = _f("webhooks", "job queue of webhook.deliver; give it a concurrency in [[jobs.queues]]")
    max_attempts: int = _f(8, "attempts per delivery before it is dead", min=1, max=100)
    backoff_base_s: float = _f(5.0, "first retry delay of a failed delivery (doubles each attempt, with jitter)", min=0, max=86400)
    backoff_max_s: float = _f(3600.0, "longest retry delay of a failed delivery", min=0, max=86400)
    connect_timeout_s: float = _f(5.0, "longest the name lookup and the connection to an endpoint may take", min=0.1, max=600)
    timeout_s: float = _f(15.0, "longest one delivery (request and response) may take", min=0.1, max=600)
    max_response_bytes: int = _f(
        65536, "most bytes of a response body read; the rest is not read", min=0, max=16 * 1024 * 1024
    )
    excerpt_chars: int = _f(1024, "most characters of a response body kept with each attempt", min=0, max=65536)
    disable_after_failures: int = _f(
        50, "consecutive failed attempts after which an endpoint is disabled; 0: never", min=0, max=1_000_000
    )
    ca_file: str = _f("", "PEM CA certificates trusted for https:// endpoints besides the system ones")
    allow_private: bool = _f(
        False, "allow endpoints resolving to loopback, link-local, private or other non-public addresses"
    )
    keepalive_s: float = _f(
        30.0, "an idle connection to an endpoint is kept this long for the next requests to the same host, port and "
        "address, then closed (0: a new connection per request)", min=0, max=3600,
    )
    max_idle_connections: int = _f(
        64, "most idle kept-alive connections per endpoint host, port and address (more at once are opened "
        "as needed and closed after their answer)", min=0, max=1024,
    )
    dns_cache_s: float = _f(
        30.0, "a host name's checked address is reused this long before it is resolved again (0: resolved at "
        "every request; an IP address is never looked up)", min=0, max=3600,
    )
    refresh_s: float = _f(
        5.0,
        "an event coming while a node's list of endpoints is older than this re-reads it (endpoints made "
        "through the server API on other nodes)",
        min=0.1,
        max=3600,
    )
    max_endpoints: int = _f(100, "most endpoints (configuration and server API together)", min=1, max=10_000)


@attrs.frozen
class FeedRetentionConfig:
    prefix: str = _f("", "feed name prefix this rule governs, e.g. \"user:\" (the longest matching prefix wins)")
    keep_s: float = _f(
        0.0, "activities of these feeds older than this (by their time) are deleted by retention.activities; "
        "0: kept", min=0, max=3_153_600_000,
    )


@attrs.frozen
class FeedsConfig:
    enabled: bool = _f(
        True, "serve activity feeds: the activities routes, feed rooms recovered from the store (the [feeds] "
        "section is read at start: a reload keeps its running value)"
    )
    max_batch: int = _f(500, "most activities in one POST /server/v1/activities", min=1, max=10_000)
    max_data_bytes: int = _f(
        4096, "largest data of one activity, in bytes of its JSON encoding", min=2, max=1_048_576
    )
    max_feeds_per_activity: int = _f(20, "most feeds one activity is logged to", min=1, max=1000)
    max_future_s: float = _f(
        300.0, "how far ahead of the server's clock an activity's time may be", min=0, max=31_536_000
    )
    recovery_cap: int = _f(
        200, "most activities a subscribe with since replays from the store (more: recovered false); the reply "
        "holds them all, so keep recovery_cap times max_data_bytes well under gateway.outbox_max_bytes",
        min=0, max=100_000,
    )
    max_stats_days: int = _f(90, "most days GET /server/v1/feeds/{feed}/stats covers", min=1, max=3660)
    stats_top_actors: int = _f(100, "most actors listed per day by the stats (the most active first)", min=1, max=10_000)
    keep_s: float = _f(
        7_776_000.0, "activities of feeds that match no [[feeds.retention]] prefix are deleted after this long "
        "(by their time); 0: kept", min=0, max=3_153_600_000,
    )
    retention: list[FeedRetentionConfig] = _f(
        [], "retention per feed namespace ([[feeds.retention]] prefix, keep_s), applied by the daily "
        "retention.activities job"
    )


@attrs.frozen
class MetricsConfig:
    enabled: bool = _f(True, "serve /metrics")
    loop_lag_interval_s: float = _f(
        0.5,
        "how often (wall clock) the event-loop lag probe hands the loop a callback; how long each waits is a "
        "sample of realtimed_event_loop_lag_seconds",
        min=0.01,
        max=60,
    )
    readiness_interval_s: float = _f(
        15.0,
        "how often the backends are checked for realtimed_backend_ready (also on each /readyz)",
        min=1,
        max=3600,
    )


@attrs.frozen
class ConsoleConfig:
    enabled: bool = _f(
        True,
        "serve the operator console at /console wherever the server API is served (the internal listener, a "
        "loopback client listener, or one with http.expose_server_api); false: /console answers 404 everywhere "
        "(read per request: a reload applies at once)",
    )
    stats_interval_s: float = _f(
        1.0, "how often GET /server/v1/stats/stream sends the node's counters", min=0.2, max=60
    )
    jobs_interval_s: float = _f(
        5.0,
        "how often the stats stream re-reads the job counts from the store (one read shared by every stream on "
        "the node; each read counts the jobs table)",
        min=1,
        max=3600,
    )
    max_streams: int = _f(
        16,
        "GET /server/v1/stats/stream streams open at once on this node; one more is refused 503 UNAVAILABLE",
        min=1,
        max=1000,
    )


@attrs.frozen
class Config:
    """The whole configuration. Frozen: a reload builds a new one."""

    server: ServerConfig = _f(ServerConfig())
    http: HttpConfig = _f(HttpConfig())
    log: LogConfig = _f(LogConfig())
    shutdown: ShutdownConfig = _f(ShutdownConfig())
    store: StoreConfig = _f(StoreConfig())
    broker: BrokerConfig = _f(BrokerConfig())
    auth: AuthConfig = _f(AuthConfig())
    api: ApiConfig = _f(ApiConfig())
    gateway: GatewayConfig = _f(GatewayConfig())
    socketio: SocketIOConfig = _f(SocketIOConfig())
    namespaces: list[NamespaceConfig] = _f([], "app-room namespaces")
    chat: ChatConfig = _f(ChatConfig())
    presence: PresenceConfig = _f(PresenceConfig())
    jobs: JobsConfig = _f(JobsConfig())
    cron: list[CronConfig] = _f([], "cron entries")
    retention: RetentionConfig = _f(RetentionConfig())
    metrics: MetricsConfig = _f(MetricsConfig())
    notify: NotifyConfig = _f(NotifyConfig())
    push: PushConfig = _f(PushConfig(), channel=True)
    email: EmailConfig = _f(EmailConfig(), channel=True)
    webhooks: WebhooksConfig = _f(WebhooksConfig())
    feeds: FeedsConfig = _f(FeedsConfig())
    console: ConsoleConfig = _f(ConsoleConfig())
    source: str = attrs.field(default="", metadata={"internal": True})
    #: Every file the configuration was read from, as ``(key, path)``: the TOML file
    #: (key ``""``) and each ``<key>_file``; ``check-config --as-user`` checks them.
    files_read: tuple[tuple[str, str], ...] = attrs.field(default=(), metadata={"internal": True})

    @property
    def state_dir(self) -> Path:
        return self.server.state_dir


#: Every delivery channel: the inbox, then each section marked ``channel`` (named like it).
NOTIFY_CHANNELS: Final[tuple[str, ...]] = (
    IN_APP_CHANNEL,
    *(f.name for f in attrs.fields(Config) if f.metadata.get("channel")),
)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


class _Problems:
    """What loading collects: the problems, and the files it read secrets from."""

    def __init__(self, credentials_dir: str | None = None) -> None:
        self.items: list[tuple[str, str]] = []
        self.files_read: list[tuple[str, str]] = []
        #: ``$CREDENTIALS_DIRECTORY``, or None when it is not set.
        self.credentials_dir = Path(credentials_dir) if credentials_dir else None

    def add(self, key: str, msg: str) -> None:
        self.items.append((key, msg))


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp in (str, Path):
        return "a string"
    if origin is list:
        return "a list"
    if origin is dict or attrs.has(tp):
        return "a table"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return str(tp)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(tp: Any, value: Any, key: str, problems: _Problems, base_dir: Path) -> Any:
    """Convert one TOML value to ``tp``; on a problem record it and return a sentinel."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, problems, base_dir)
    if origin is Literal:
        if value not in get_args(tp):
            problems.add(key, f"expected {_type_name(tp)}, got {_describe(value)}")
            return _INVALID
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(key, f"expected a boolean, got {_describe(value)}")
            return _INVALID
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(key, f"expected an integer, got {_describe(value)}")
            return _INVALID
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.add(key, f"expected a number, got {_describe(value)}")
            return _INVALID
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(key, f"expected a string, got {_describe(value)}")
            return _INVALID
        return value
    if tp is Path:
        if not isinstance(value, str):
            problems.add(key, f"expected a string, got {_describe(value)}")
            return _INVALID
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            problems.add(key, f"expected a list, got {_describe(value)}")
            return _INVALID
        out = []
        for i, item in enumerate(value):
            converted = _convert(item_tp, item, f"{key}[{i}]", problems, base_dir)
            out.append(converted)
        return out
    if origin is dict:
        if not isinstance(value, dict):
            problems.add(key, f"expected a table, got {_describe(value)}")
            return _INVALID
        value_tp = get_args(tp)[1] if get_args(tp) else Any
        if attrs.has(value_tp):
            # An entry that is not a table is dropped (its problem is recorded), so that
            # the checks on the names of the others still run.
            entries = {
                name: _convert(value_tp, item, f"{key}.{_toml_key(name)}", problems, base_dir)
                for name, item in value.items()
            }
            return {name: entry for name, entry in entries.items() if entry is not _INVALID}
        return dict(value)
    if attrs.has(tp):
        if not isinstance(value, dict):
            problems.add(key, f"expected a table, got {_describe(value)}")
            return _INVALID
        return _build(tp, value, key, problems, base_dir)
    raise TypeError(f"config type not supported: {tp!r}")  # a programming error


class _Invalid:
    pass


_INVALID: Final = _Invalid()


def _build(cls: Any, table: Mapping[str, Any], prefix: str, problems: _Problems, base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls) if not f.metadata.get("internal")}
    sources = _alternative_sources(fields)
    kwargs: dict[str, Any] = {}
    ok = True
    for raw_key, value in table.items():
        key = f"{prefix}.{raw_key}" if prefix else raw_key
        name = raw_key
        if raw_key in sources:
            name, how = sources[raw_key]
            others = [k for k in (name, *(s for s, (n, _) in sources.items() if n == name)) if k != raw_key]
            given = [k for k in others if k in table]
            if given:
                problems.add(key, f"give only one of {', '.join(sorted([raw_key, *given]))}")
                ok = False
                continue
            if how == "file":
                value = _read_secret_file(value, key, problems, base_dir, hints[name])
            elif how == "credential":
                value = _read_credential(value, key, problems, hints[name])
            else:
                value = _credential_path(value, key, problems)
            if value is _INVALID:
                ok = False
                continue
            coerce = fields[name].metadata.get("coerce")
            if coerce is not None and how != "path":
                value = coerce(value, True)
        elif raw_key not in fields:
            problems.add(key, "unknown key")
            ok = False
            continue
        else:
            coerce = fields[name].metadata.get("coerce")
            if coerce is not None:
                value = coerce(value, False)
        field = fields[name]
        converted = _convert(hints[name], value, key, problems, base_dir)
        if converted is _INVALID or _contains_invalid(converted):
            ok = False
            continue
        if not _check_bounds(field, converted, key, problems):
            ok = False
            continue
        if field.metadata.get("merge") and isinstance(converted, dict):
            default = getattr(cls(), name)
            converted = {**default, **converted}
        kwargs[name] = converted
    # Invalid keys keep their defaults, so that the checks spanning several keys
    # still run and the operator sees every mistake at once; ``ok`` is recorded
    # in ``problems`` already.
    del ok
    return cls(**kwargs)


def _contains_invalid(value: Any) -> bool:
    if value is _INVALID:
        return True
    if isinstance(value, list):
        return any(_contains_invalid(v) for v in value)
    return False


def _toml_key(name: str) -> str:
    """A table key as TOML writes it: bare when it can be, else quoted (``"message.send"``)."""
    if name and all(c.isalnum() or c in "_-" for c in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_bounds(field: attrs.Attribute[Any], value: Any, key: str, problems: _Problems) -> bool:
    lo, hi = field.metadata.get("min"), field.metadata.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            problems.add(key, f"must be at least {lo:g}, got {value!r}")
            return False
        if hi is not None and value > hi:
            problems.add(key, f"must be at most {hi:g}, got {value!r}")
            return False
    return True


def _alternative_sources(fields: Mapping[str, attrs.Attribute[Any]]) -> dict[str, tuple[str, str]]:
    """The keys that may stand for a field, each to ``(field name, how it is read)``.

    A secret ``k`` may come from ``k_file`` (a file's contents) or ``k_credential``
    (a systemd credential's contents); a path field ``x_file`` with ``path_credential``
    may name the credential itself with ``x_credential`` (the path becomes the
    credential's path in ``$CREDENTIALS_DIRECTORY``).
    """
    sources: dict[str, tuple[str, str]] = {}
    for name, field in fields.items():
        if field.metadata.get("path_credential"):
            sources[f"{name.removesuffix('_file')}_credential"] = (name, "path")
        elif field.metadata.get("secret"):
            sources[f"{name}_credential"] = (name, "credential")
        if field.metadata.get("secret"):
            sources[f"{name}_file"] = (name, "file")
    return sources


def _unreadable(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be read, naming the user when it is a permission problem."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, PermissionError):
        try:
            import pwd

            user = pwd.getpwuid(os.geteuid()).pw_name
        except (ImportError, KeyError):
            user = str(os.geteuid())
        reason += f" (as user {user})"
    return f"cannot read {path}: {reason}"


def _secret_text(path: Path, key: str, problems: _Problems, tp: Any) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        message = _unreadable(path, exc) if isinstance(exc, OSError) else f"{path} is not UTF-8 text"
        problems.add(key, message)
        return _INVALID
    if get_origin(tp) is list:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return text.strip()


def _read_secret_file(value: Any, key: str, problems: _Problems, base_dir: Path, tp: Any) -> Any:
    if not isinstance(value, str):
        problems.add(key, f"expected a file path, got {_describe(value)}")
        return _INVALID
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    problems.files_read.append((key, str(path)))
    return _secret_text(path, key, problems, tp)


def _credential_file(value: Any, key: str, problems: _Problems) -> Path | None:
    """The path of the credential ``value`` names, or None (its problem recorded)."""
    if not isinstance(value, str) or not CREDENTIAL_NAME.fullmatch(value):
        problems.add(
            key,
            "expected a credential name (1 to 64 letters, digits, _ . or -, not starting with . or -), "
            f"got {_describe(value)}",
        )
        return None
    if problems.credentials_dir is None:
        problems.add(
            key,
            f"${CREDENTIALS_DIRECTORY_ENV} is not set: systemd sets it for a unit with "
            f"LoadCredential={value}:PATH (check-config takes --credentials DIR)",
        )
        return None
    path = problems.credentials_dir / value
    if not path.is_file():
        problems.add(
            key,
            f"no credential {value!r} in ${CREDENTIALS_DIRECTORY_ENV} ({problems.credentials_dir}): "
            f"the unit needs LoadCredential={value}:PATH",
        )
        return None
    return path


def _read_credential(value: Any, key: str, problems: _Problems, tp: Any) -> Any:
    path = _credential_file(value, key, problems)
    if path is None:
        return _INVALID
    return _secret_text(path, key, problems, tp)


def _credential_path(value: Any, key: str, problems: _Problems) -> Any:
    path = _credential_file(value, key, problems)
    if path is None:
        return _INVALID
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        problems.add(key, _unreadable(path, exc))
        return _INVALID
    return str(path)


def _parse_env_value(raw: str) -> Any:
    """An environment value is read as a TOML value when it is one, else as a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str], problems: _Problems) -> dict[str, str]:
    """Merge ``REALTIMED__A__B=v`` overrides into ``data``; returns key path -> variable name."""
    origins: dict[str, str] = {}
    for var, raw in sorted(env.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in var[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            problems.add(var, "environment override names no key")
            continue
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.add(var, f"{'.'.join(parts)}: cannot override inside a non-table")
                break
            node = child
        else:
            node[parts[-1]] = _parse_env_value(raw)
            origins[".".join(parts)] = var
    return origins


#: A check of the loaded configuration made by a layer above this module: a
#: ``(key, problem)`` pair for each mistake, named like the loader's own.
ConfigCheck = Callable[[Config], Iterable[tuple[str, str]]]


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    text: str | None = None,
    data: Mapping[str, Any] | None = None,
    checks: Sequence[ConfigCheck] = (),
) -> Config:
    """Load and validate the configuration.

    Args:
        path: the TOML file; None means no file (embedded defaults).
        env: the environment to read overrides from (default ``os.environ``).
        text: TOML text to use instead of reading ``path`` (``path`` still sets the base folder).
        data: an already parsed table to use instead of TOML text.
        checks: the checks that need more than this module knows (the daemon's job
            kinds, the notification types of email templates:
            ``realtimed.config_checks.DAEMON_CONFIG_CHECKS``), run on the built
            configuration; their problems join the others in the one ``ConfigError``.
            Every command that loads a daemon's configuration passes the same ones.

    Raises:
        ConfigError: with one problem per mistake, each naming its key.
    """
    env = os.environ if env is None else env
    problems = _Problems(env.get(CREDENTIALS_DIRECTORY_ENV))
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    table: dict[str, Any] = copy.deepcopy(dict(data)) if data is not None else {}
    read_file = data is None and text is None and path is not None
    if read_file and path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([("", _unreadable(Path(path), exc))]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([("", f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}")]) from exc
    if text is not None:
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([("", f"{path or 'config'}: not valid TOML: {exc}")]) from exc
    origins = _apply_env(table, env, problems)
    cfg: Config = _build(Config, table, "", problems, base_dir)
    _check_semantics(cfg, problems)
    if isinstance(cfg, Config):
        for check in checks:
            for key, problem in check(cfg):
                problems.add(key, problem)
    if problems.items:
        labelled = [
            (f"{key} (from {origins[key]})" if key in origins else key, msg) for key, msg in problems.items
        ]
        raise ConfigError(labelled)
    source = str(Path(path).resolve()) if path is not None else ""
    files_read = ([("", source)] if read_file else []) + problems.files_read
    return attrs.evolve(cfg, source=source, files_read=tuple(files_read))


def _check_semantics(cfg: Config | _Invalid, problems: _Problems) -> None:
    """Checks that span several keys."""
    if not isinstance(cfg, Config):
        return
    for key, value in (("http.listen", cfg.http.listen), ("http.internal_listen", cfg.http.internal_listen)):
        if value or key == "http.listen":
            try:
                parse_host_port(value)
            except ValueError as exc:
                problems.add(key, str(exc))
    exposed_on = _exposed_listeners(cfg)
    dev_secret = cfg.auth.hs256_secret == DEV_HS256_SECRET or DEV_API_KEY in cfg.api.key_values
    if dev_secret:
        for key in exposed_on:
            problems.add(
                key,
                "the development secret or API key may only be used on a loopback listener: "
                "set auth.hs256_secret and api.keys",
            )
    if exposed_on:
        _check_credential_strength(cfg, exposed_on[0], problems)
    _check_proxies(cfg, problems)
    _check_api_keys(cfg, problems)
    _check_api_rate_limits(cfg, problems)
    if bool(cfg.http.tls_cert_file) != bool(cfg.http.tls_key_file):
        problems.add("http.tls_cert_file", "tls_cert_file and tls_key_file go together")
    if cfg.shutdown.reconnect_min_ms > cfg.shutdown.reconnect_max_ms:
        problems.add("shutdown.reconnect_min_ms", "must not exceed shutdown.reconnect_max_ms")
    _check_redis_url(cfg, problems)
    _check_static(cfg, problems)
    if cfg.store.pool_min > cfg.store.pool_max:
        problems.add("store.pool_min", "must not exceed store.pool_max")
    _check_postgres_dsn(cfg, problems)
    known_algs = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "PS256"}
    for i, alg in enumerate(cfg.auth.algorithms):
        if alg not in known_algs:
            problems.add(f"auth.algorithms[{i}]", f"unsupported algorithm {alg!r} (one of {sorted(known_algs)})")
    if not cfg.gateway.path.startswith("/"):
        problems.add("gateway.path", "must start with /")
    if not cfg.socketio.path.startswith("/"):
        problems.add("socketio.path", "must start with /")
    elif cfg.socketio.path.rstrip("/") == cfg.gateway.path.rstrip("/"):
        problems.add("socketio.path", "must differ from gateway.path")
    if not cfg.socketio.transports:
        problems.add("socketio.transports", "must name at least one transport")
    elif len(set(cfg.socketio.transports)) != len(cfg.socketio.transports):
        problems.add("socketio.transports", "must not name a transport twice")
    _check_op_limits(cfg, problems)
    seen: set[str] = set()
    addresses = address_prefixes(cfg)
    for i, ns in enumerate(cfg.namespaces):
        if not ns.prefix:
            problems.add(f"namespaces[{i}].prefix", "must not be empty")
        elif ns.prefix in seen:
            problems.add(f"namespaces[{i}].prefix", f"duplicate prefix {ns.prefix!r}")
        elif any(ns.prefix.startswith(address) for address in addresses):
            problems.add(f"namespaces[{i}].prefix", f"{ns.prefix!r} is within an address prefix ({', '.join(addresses)})")
        seen.add(ns.prefix)
    _check_claim_rooms(cfg, problems)
    names: set[str] = set()
    for i, entry in enumerate(cfg.cron):
        if not entry.name:
            problems.add(f"cron[{i}].name", "must not be empty")
        elif entry.name in names:
            problems.add(f"cron[{i}].name", f"duplicate name {entry.name!r}")
        names.add(entry.name)
        _check_cron(entry, f"cron[{i}]", problems)
    _check_notify(cfg, problems)
    _check_email(cfg, problems)
    _check_webhooks(cfg, problems)
    _check_http_targets(cfg, problems)
    if cfg.feeds.enabled:
        for i, ns in enumerate(cfg.namespaces):
            # Feed rooms (feed:<name>) take their seq and recovery from the store.
            if ns.prefix.startswith("feed:") and ns.history_size > 0:
                problems.add(f"namespaces[{i}].history_size", "feed rooms (feed:) keep their activities in the store: "
                             "must be 0 while feeds.enabled")
            if ns.prefix.startswith("feed:") and ns.client_publish:
                problems.add(f"namespaces[{i}].client_publish", "activities are logged through the server API: "
                             "must be false for feed rooms (feed:) while feeds.enabled")
    prefixes: set[str] = set()
    for i, rule in enumerate(cfg.feeds.retention):
        if rule.prefix in prefixes:
            problems.add(f"feeds.retention[{i}].prefix", f"duplicate prefix {rule.prefix!r}")
        prefixes.add(rule.prefix)


def webhook_endpoint_problems(
    *, id: str, url: str, events: Sequence[str], secrets: Sequence[str]
) -> list[tuple[str, str]]:
    """What is wrong with a webhook endpoint, as ``(field, problem)``; the server API
    checks the endpoints it is given with the same rules."""
    out: list[tuple[str, str]] = []
    if not WEBHOOK_ENDPOINT_ID.fullmatch(id):
        out.append(("id", "must be 1 to 64 of letters, digits and _ . - (starting with a letter or digit)"))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        out.append(("url", "must be an http:// or https:// URL with a host (at most 2000 characters)"))
    elif parts.username or parts.password:
        out.append(("url", "must not carry credentials"))
    elif port == 0:
        out.append(("url", "port must not be 0"))
    for i, event in enumerate(events):
        if event not in WEBHOOK_EVENTS:
            out.append((f"events[{i}]", f"unknown event {event[:64]!r} (one of {', '.join(WEBHOOK_EVENTS)})"))
    if not 1 <= len(secrets) <= 2:
        out.append(("secrets", "give one secret, or two while rotating"))
    for i, secret in enumerate(secrets):
        if not _webhook_secret_ok(secret):
            out.append((f"secrets[{i}]", "must be whsec_ then the base64 of 24 to 64 random bytes"))
    return out


def _webhook_secret_ok(secret: str) -> bool:
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return False
    try:
        raw = base64.b64decode(secret[len(WEBHOOK_SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return False
    return 24 <= len(raw) <= 64


def _check_webhooks(cfg: Config, problems: _Problems) -> None:
    seen: set[str] = set()
    if len(cfg.webhooks.endpoints) > cfg.webhooks.max_endpoints:
        problems.add("webhooks.endpoints", f"more than webhooks.max_endpoints ({cfg.webhooks.max_endpoints})")
    for i, ep in enumerate(cfg.webhooks.endpoints):
        for field, problem in webhook_endpoint_problems(id=ep.id, url=ep.url, events=ep.events, secrets=ep.secrets):
            problems.add(f"webhooks.endpoints[{i}].{field}", problem)
        if ep.id in seen:
            problems.add(f"webhooks.endpoints[{i}].id", f"duplicate id {ep.id!r}")
        seen.add(ep.id)


def http_target_problems(target: HttpTargetConfig) -> list[tuple[str, str]]:
    """What is wrong with an HTTP target, as ``(field, problem)``."""
    out: list[tuple[str, str]] = []
    if not HTTP_TARGET_NAME.fullmatch(target.name):
        out.append(("name", "must be 1 to 64 of letters, digits and _ . - (starting with a letter or digit)"))
    try:
        parts = urlsplit(target.base_url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(target.base_url) > 2000:
        out.append(("base_url", "must be an http:// or https:// URL with a host (at most 2000 characters)"))
    elif parts.username or parts.password:
        out.append(("base_url", "must not carry credentials"))
    elif parts.query or parts.fragment or "?" in target.base_url or "#" in target.base_url:
        out.append(("base_url", "must not have a query or a fragment (a job's path may have a query)"))
    elif port == 0:
        out.append(("base_url", "port must not be 0"))
    elif any(ord(c) <= 0x20 or ord(c) >= 0x7F or c == "\\" for c in target.base_url):
        out.append(("base_url", "must be printable ASCII without spaces or backslashes (percent-encode the rest)"))
    for name, value in target.headers.items():
        key = f"headers.{_toml_key(name)}"
        if not _HEADER_NAME.fullmatch(name):
            out.append((key, "not a header name"))
        elif name.lower() in HTTP_JOB_RESERVED_HEADERS:
            out.append((key, "set by realtimed itself"))
        elif not isinstance(value, str) or len(value) > 8000 or any(
            (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F or ord(c) > 0xFF for c in value
        ):
            out.append((key, "must be a string of at most 8000 Latin-1 characters without control characters"))
    if target.secrets:
        if target.secret:
            out.append(("secrets", "give secret or secrets, not both"))
        elif len(target.secrets) > 2:
            out.append(("secrets", "give one secret, or two while rotating"))
        else:
            for i, secret in enumerate(target.secrets):
                if not _webhook_secret_ok(secret):
                    out.append((f"secrets[{i}]", "must be whsec_ then the base64 of 24 to 64 random bytes"))
    elif not _webhook_secret_ok(target.secret):
        out.append(("secret", "must be whsec_ then the base64 of 24 to 64 random bytes (or give secrets)"))
    return out


def _check_http_targets(cfg: Config, problems: _Problems) -> None:
    seen: set[str] = set()
    for i, target in enumerate(cfg.jobs.http_targets):
        for field, problem in http_target_problems(target):
            problems.add(f"jobs.http_targets[{i}].{field}", problem)
        if target.name in seen:
            problems.add(f"jobs.http_targets[{i}].name", f"duplicate name {target.name!r}")
        seen.add(target.name)
    if cfg.jobs.http.backoff_base_s > cfg.jobs.http.backoff_max_s:
        problems.add("jobs.http.backoff_base_s", "must not exceed jobs.http.backoff_max_s")
    if not cfg.jobs.http.queue:
        problems.add("jobs.http.queue", "must not be empty")


#: The room prefix of per-device addresses: ``device:<session_id>`` holds that one session.
DEVICE_PREFIX: Final = "device:"


def address_prefixes(cfg: Config) -> tuple[str, ...]:
    """The room prefixes that are addresses, not subscribable rooms: ``device:`` and
    those of ``auth.claim_rooms``."""
    return (DEVICE_PREFIX, *(entry.prefix for entry in cfg.auth.claim_rooms if entry.prefix))


def _check_claim_rooms(cfg: Config, problems: _Problems) -> None:
    claims: set[str] = set()
    prefixes: set[str] = {DEVICE_PREFIX}
    for i, entry in enumerate(cfg.auth.claim_rooms):
        key = f"auth.claim_rooms[{i}]"
        if not entry.claim:
            problems.add(f"{key}.claim", "must not be empty")
        elif entry.claim in claims:
            problems.add(f"{key}.claim", f"duplicate claim {entry.claim!r}")
        elif entry.claim in {"sub", "exp", "nbf", "iat", "aud", "iss", "rooms", "name"}:
            problems.add(f"{key}.claim", f"{entry.claim!r} is a claim realtimed reads itself (section 2 of docs/protocol.md)")
        claims.add(entry.claim)
        prefix = entry.prefix
        if not prefix.endswith(":") or any(c in prefix for c in " \t*,") or prefix.startswith(":") or "::" in prefix:
            problems.add(f"{key}.prefix", "must be one or more room segments followed by ':' (e.g. \"role:\")")
        elif any(prefix.startswith(other) or other.startswith(prefix) for other in prefixes):
            problems.add(f"{key}.prefix", f"{prefix!r} overlaps another address prefix ({', '.join(sorted(prefixes))})")
        prefixes.add(prefix)


def _check_proxies(cfg: Config, problems: _Problems) -> None:
    """Trusted proxies are addresses or networks; the PROXY protocol needs a proxy to trust."""
    for i, entry in enumerate(cfg.http.trusted_proxies):
        try:
            parse_network(entry)
        except ValueError as exc:
            problems.add(f"http.trusted_proxies[{i}]", str(exc))
    for key, mode in (("http.proxy_protocol", cfg.http.proxy_protocol), ("http.internal_proxy_protocol", cfg.http.internal_proxy_protocol)):
        if mode == "off":
            continue
        if not cfg.http.trusted_proxies:
            problems.add(key, "needs http.trusted_proxies: a PROXY header is only accepted from a trusted proxy")
        if key == "http.internal_proxy_protocol" and not cfg.http.internal_listen:
            problems.add(key, "there is no internal listener (http.internal_listen)")


def _check_api_rate_limits(cfg: Config, problems: _Problems) -> None:
    names = {entry.name for entry in cfg.api.keys}
    for name in cfg.api.rate_limits:
        if name != ANY_OP and name not in names:
            problems.add(
                f"api.rate_limits.{_toml_key(name)}",
                f"no API key is named {name[:64]!r} (a name of api.keys, keys[0] for an unnamed first key, or \"*\")",
            )


def _check_op_limits(cfg: Config, problems: _Problems) -> None:
    from realtimed.protocol import OPS

    for name in cfg.gateway.op_limits:
        key = f"gateway.op_limits.{_toml_key(name)}"
        if name in UNLIMITED_OPS:
            problems.add(key, f"{name} is not counted per user (the per-socket bucket covers it)")
        elif name != ANY_OP and name not in OPS and name not in REST_BUDGETS:
            problems.add(
                key, f"unknown op {name[:64]!r} (an op of the protocol, a REST route's budget such as 'device.register', or \"*\")"
            )


def _exposed_listeners(cfg: Config) -> list[str]:
    """The keys of the listeners bound to an address that is not loopback."""
    exposed: list[str] = []
    for key, value in (("http.listen", cfg.http.listen), ("http.internal_listen", cfg.http.internal_listen)):
        try:
            if value and not is_loopback(parse_host_port(value)[0]):
                exposed.append(key)
        except ValueError:
            continue  # reported by the listener check
    return exposed


def _check_credential_strength(cfg: Config, listener_key: str, problems: _Problems) -> None:
    """Short credentials are refused once a listener is reachable from other hosts.

    An HMAC secret must be at least as long as the hash output of every HMAC
    algorithm allowed (RFC 7518 section 3.2: 32 bytes for HS256); an API key at
    least ``MIN_API_KEY_CHARS`` characters. The message names the key, never its value.
    """
    where = f"{listener_key} = {getattr(cfg.http, listener_key.partition('.')[2])!r} is not loopback"
    secret = cfg.auth.hs256_secret
    hmac_allowed = [alg for alg in cfg.auth.algorithms if alg in HMAC_MIN_SECRET_BYTES]
    if secret and hmac_allowed:
        strongest = max(hmac_allowed, key=HMAC_MIN_SECRET_BYTES.__getitem__)
        need = HMAC_MIN_SECRET_BYTES[strongest]
        size = len(secret.encode("utf-8", "surrogatepass"))
        if size < need:
            problems.add(
                "auth.hs256_secret",
                f"is {size} bytes; {strongest} needs at least {need} (RFC 7518 section 3.2) when {where}",
            )
    for i, entry in enumerate(cfg.api.keys):
        if entry.key and len(entry.key) < MIN_API_KEY_CHARS:
            problems.add(
                f"api.keys[{i}]",
                f"is {len(entry.key)} characters; at least {MIN_API_KEY_CHARS} are needed when {where}",
            )


def _check_api_keys(cfg: Config, problems: _Problems) -> None:
    """Every API key has a name of its own and a value of its own (never shown)."""
    names: dict[str, int] = {}
    values: dict[str, int] = {}
    reported = {key for key, _ in problems.items}  # a value of the wrong type: said already
    for i, entry in enumerate(cfg.api.keys):
        key = f"api.keys[{i}]"
        if f"{key}.name" in reported:
            pass
        elif entry.name != positional_key_name(i) and not API_KEY_NAME.fullmatch(entry.name):
            problems.add(
                f"{key}.name",
                f"must be 1 to 64 letters, digits, _ . or - (starting with a letter or digit), got {_describe(entry.name)}",
            )
        elif entry.name in names:
            problems.add(f"{key}.name", f"duplicate name {entry.name!r} (also api.keys[{names[entry.name]}])")
        names.setdefault(entry.name, i)
        if f"{key}.key" in reported or any(k.startswith(f"{key}.key_") for k in reported):
            pass
        elif not entry.key:
            problems.add(f"{key}.key", "must not be empty")
        elif entry.key in values:
            problems.add(f"{key}.key", f"the same key as api.keys[{values[entry.key]}]: each key needs its own value")
        values.setdefault(entry.key, i)
# URL prefixes that belong to the daemon's own routes; a static mount may not shadow them.
_RESERVED_PREFIXES: Final = ("/api/", "/server/", "/dev/", "/console/", "/healthz/", "/readyz/", "/metrics/")


def _check_static(cfg: Config, problems: _Problems) -> None:
    """Static mounts: a well-formed, unique prefix clear of the daemon's routes, and a folder."""
    seen: set[str] = set()
    for i, mount in enumerate(cfg.http.static):
        key = f"http.static[{i}]"
        path = mount.path
        segments = path.strip("/").split("/")
        if (
            not path.startswith("/")
            or not path.endswith("/")
            or path == "/"
            or any(not s or s in (".", "..") or not all(c.isalnum() or c in "-_.~" for c in s) for s in segments)
        ):
            problems.add(
                f"{key}.path",
                f"must be like /app/: segments of letters, digits, - _ . ~ between slashes, got {path!r}",
            )
        elif any(path.startswith(p) for p in (*_RESERVED_PREFIXES, cfg.gateway.path.rstrip("/") + "/")):
            problems.add(f"{key}.path", f"{path!r} would shadow the daemon's own routes")
        elif path in seen:
            problems.add(f"{key}.path", f"duplicate prefix {path!r}")
        seen.add(path)
        if mount.dir is None:
            problems.add(f"{key}.dir", "is required")
        elif not mount.dir.is_dir():
            problems.add(f"{key}.dir", f"not a folder: {mount.dir}")
        if not mount.index or "/" in mount.index or mount.index.startswith("."):
            problems.add(f"{key}.index", f"must be a file name, got {mount.index!r}")


def _check_redis_url(cfg: Config, problems: _Problems) -> None:
    try:
        parse_redis_url(cfg.broker.redis_url)
    except ValueError as exc:
        problems.add("broker.redis_url", str(exc))


def _check_postgres_dsn(cfg: Config, problems: _Problems) -> None:
    """The DSN the PostgreSQL store will use, parsed as asyncpg will parse it when it connects."""
    if cfg.store.backend != "postgres":
        return
    try:
        check_postgres_dsn(cfg.store.postgres_dsn)
    except ValueError as exc:
        problems.add("store.postgres_dsn", str(exc))


def _check_notify(cfg: Config, problems: _Problems) -> None:
    """Notification types: unique names, known channels, templates that parse and
    use only the type's declared vars; push endpoints that are URLs."""
    names: set[str] = set()
    for i, nt in enumerate(cfg.notify.types):
        key = f"notify.types[{i}]"
        if not nt.name or not all(c.isalnum() or c in "_.-" for c in nt.name) or len(nt.name) > MAX_NOTIFICATION_TYPE_CHARS:
            problems.add(f"{key}.name", f"must be 1 to {MAX_NOTIFICATION_TYPE_CHARS} letters, digits, _ . or -, got {nt.name!r}")
        elif nt.name in names:
            problems.add(f"{key}.name", f"duplicate type {nt.name!r}")
        names.add(nt.name)
        for j, channel in enumerate(nt.channels):
            if channel not in NOTIFY_CHANNELS:
                problems.add(f"{key}.channels[{j}]", f"unknown channel {channel!r} (one of {', '.join(NOTIFY_CHANNELS)})")
        for j, var in enumerate(nt.vars):
            if not var.isidentifier():
                problems.add(f"{key}.vars[{j}]", f"{var!r} is not a plain name")
        if nt.group_by and nt.group_by not in nt.vars:
            problems.add(f"{key}.group_by", f"{nt.group_by!r} is not one of the type's vars")
        declared = set(nt.vars)
        templates = {
            "title": (nt.title, declared),
            "body": (nt.body, declared),
            "digest_title": (nt.digest_title, declared | {"count"}),
            "digest_body": (nt.digest_body, declared | {"count"}),
            "private_title": (nt.private_title, declared),
            "private_body": (nt.private_body, declared),
        }
        for field, (template, allowed) in templates.items():
            try:
                used = placeholders(template)
            except TemplateError as exc:
                problems.add(f"{key}.{field}", str(exc))
                continue
            for name in used:
                if name not in allowed:
                    problems.add(f"{key}.{field}", f"placeholder {{{name}}} is not declared in vars")
        if not nt.title:
            problems.add(f"{key}.title", "must not be empty")
        if nt.digest_window_s > 0 and not nt.digest_body:
            problems.add(f"{key}.digest_body", "a type with a digest window needs a digest body")
    push = cfg.push
    for field in ("fcm_url", "iid_url", "token_url"):
        value = getattr(push, field)
        if value and not value.startswith(("https://", "http://")):
            problems.add(f"push.{field}", f"must be an http(s) URL, got {value!r}")
    if push.backoff_base_s > push.backoff_max_s:
        problems.add("push.backoff_base_s", "must not exceed push.backoff_max_s")
    if not push.queue:
        problems.add("push.queue", "must not be empty")


MIN_UNSUBSCRIBE_SECRET_CHARS: Final = 32


def _check_email(cfg: Config, problems: _Problems) -> None:
    """The email channel: what it needs when enabled (its templates' types and vars are
    checked by ``realtimed.email.checks``)."""
    email = cfg.email
    if email.backoff_base_s > email.backoff_max_s:
        problems.add("email.backoff_base_s", "must not exceed email.backoff_max_s")
    if not email.queue:
        problems.add("email.queue", "must not be empty")
    if email.public_base_url and not email.public_base_url.startswith(("https://", "http://")):
        problems.add("email.public_base_url", f"must be an http(s) URL, got {email.public_base_url!r}")
    if email.enabled:
        if not email.host:
            problems.add("email.host", "must not be empty when email is enabled")
        if "@" not in email.from_address or any(c in email.from_address for c in "\r\n"):
            problems.add("email.from_address", "must be an email address when email is enabled")
        if not email.public_base_url:
            problems.add("email.public_base_url", "is required when email is enabled (unsubscribe links)")
        if len(email.unsubscribe_secret) < MIN_UNSUBSCRIBE_SECRET_CHARS:
            problems.add(
                "email.unsubscribe_secret",
                f"must be at least {MIN_UNSUBSCRIBE_SECRET_CHARS} characters when email is enabled",
            )
    if email.reply_to and any(c in email.reply_to for c in "\r\n"):
        problems.add("email.reply_to", "must be one line")
    if bool(email.username) != bool(email.password):
        problems.add("email.username", "username and password go together")
    try:
        for name in placeholders(email.digest_subject):
            if name != "count":
                problems.add("email.digest_subject", f"placeholder {{{name}}} is not {{count}}")
    except TemplateError as exc:
        problems.add("email.digest_subject", str(exc))
    # email.templates[i] against the notification types: realtimed.email.checks (load_config(checks=...)).


def _check_cron(entry: CronConfig, key: str, problems: _Problems) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        from croniter import croniter

        fields = entry.schedule.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(entry.schedule, second_at_beginning=True):
            problems.add(f"{key}.schedule", f"not a valid cron schedule: {entry.schedule!r}")
    except ImportError:  # pragma: no cover - croniter is a dependency
        pass
    try:
        ZoneInfo(entry.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.add(f"{key}.timezone", f"unknown time zone {entry.timezone!r}")
    # The payload is stored with every job of the entry, and listed with it.
    if json_depth_path(entry.payload, MAX_STORED_JSON_DEPTH) is not None:
        problems.add(f"{key}.payload", f"nests more than {MAX_STORED_JSON_DEPTH} levels of arrays and tables")
    if json_depth_path(entry.body, MAX_STORED_JSON_DEPTH - 1) is not None:
        problems.add(f"{key}.body", f"nests more than {MAX_STORED_JSON_DEPTH - 1} levels of arrays and tables")
    # An HTTP entry says what it calls in its own keys; other kinds have a payload.
    if entry.kind == HTTP_JOB_KIND:
        if entry.payload:
            problems.add(f"{key}.payload", "an http entry takes target, path, method and body instead")
        if not entry.target:
            problems.add(f"{key}.target", "an http entry names a [[jobs.http_targets]] target")
    else:
        for name in ("target", "path", "method", "body"):
            if getattr(entry, name):
                problems.add(f"{key}.{name}", f'only an entry with kind = "{HTTP_JOB_KIND}" takes {name}')


def parse_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8700"`` or ``"[::1]:8700"`` into (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return host, port


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def config_to_dict(cfg: Any, *, redact: bool = True) -> Any:
    """The effective configuration as plain data, secrets redacted."""
    if attrs.has(type(cfg)):
        out: dict[str, Any] = {}
        for field in attrs.fields(type(cfg)):
            if field.metadata.get("internal"):
                continue
            value = getattr(cfg, field.name)
            if redact and field.metadata.get("redact") and isinstance(value, dict):
                value = dict.fromkeys(value, REDACTED)
            elif redact and field.metadata.get("secret") and value:
                # A list of tables (named API keys) keeps what is not secret in them.
                if isinstance(value, list) and all(attrs.has(type(v)) for v in value):
                    pass
                else:
                    value = [REDACTED] * len(value) if isinstance(value, list) else REDACTED
            out[field.name] = config_to_dict(value, redact=redact)
        return out
    if isinstance(cfg, list):
        return [config_to_dict(v, redact=redact) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v, redact=redact) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def reference_rows(cls: type[Any] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every key, for the README's configuration reference."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for field in attrs.fields(cls):
        if field.metadata.get("internal"):
            continue
        key = f"{prefix}{field.name}"
        tp = hints[field.name]
        if attrs.has(tp):
            rows.extend(reference_rows(tp, key + "."))
            continue
        if get_origin(tp) is list and attrs.has(get_args(tp)[0]):
            if field.metadata.get("coerce"):  # also written in another shape: say how
                rows.append((key, "[]", field.metadata.get("help", "")))
            rows.extend(reference_rows(get_args(tp)[0], f"{key}[]."))
            continue
        default = config_to_dict(getattr(defaults, field.name), redact=False)
        rows.append((key, repr(default), field.metadata.get("help", "")))
        if get_origin(tp) is dict and attrs.has(get_args(tp)[1]):
            rows.extend(reference_rows(get_args(tp)[1], f"{key}.<name>."))
    return rows
