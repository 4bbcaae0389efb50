"""The one HTTP request of an outbound attempt (a webhook delivery, an HTTP job), made safely.

``Outbound`` serves one configuration section (``webhooks``, ``jobs.http``) whose
keys ``OutboundSettings`` names; the messages of its errors name that section's keys.

Resource handling: ``Outbound`` speaks HTTP/1.1 itself (h11, and ``trio.SSLStream``
for https) and keeps idle connections per (scheme, host, port, pinned address), at
most ``<section>.max_idle_connections`` each, for ``<section>.keepalive_s``, and
``MAX_CLIENTS`` targets (the least recently used are closed), so that deliveries
to one endpoint reuse kept-alive connections (no TCP or TLS handshake each); a
kept-alive connection the receiver has closed meanwhile is replaced once, before
any answer. A connection is kept only after a whole answer that leaves it open
(not after an error, a timeout, an answer cut at ``max_response_bytes`` or one
with ``Connection: close``). ``run`` closes the idle ones once their
``keepalive_s`` has passed; ``aclose`` closes them all.

A host name's checked address is reused for ``<section>.dns_cache_s`` (at most
``MAX_RESOLVED`` names, the least recently used forgotten), so that a busy
endpoint is not looked up at every attempt; an IP address in the URL is checked
and used as it is, with no lookup.

Safety (an endpoint's URL is the application's, but a server API key may be
abused to reach what sits beside realtimed):

- the host is resolved under ``<section>.connect_timeout_s`` (once per
  ``dns_cache_s``); the attempt connects to that address and no other, while the ``Host`` header and
  the TLS server name (checked against the certificate) stay the URL's,
  so a name that resolves elsewhere a moment later (DNS rebinding) is not followed;
- an address that is not public (loopback, link-local, private, shared, multicast,
  reserved, unspecified; IPv4-mapped IPv6 checked as IPv4) is refused unless
  ``<section>.allow_private``;
- redirects are not followed (a 3xx is an answer like any other, for the caller to judge);
- at most ``<section>.max_response_bytes`` of the body are read, and the whole
  request is bounded by ``<section>.timeout_s``.

Error handling: every failure is an ``AttemptFailed`` with a short reason (refused
targets are ``Refused``, which no retry can fix); nothing else escapes ``request``.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final, Protocol
from urllib.parse import urlsplit

import attrs
import h11
import trio

__all__ = [
    "AttemptFailed", "Outbound", "OutboundSettings", "Refused", "Response", "is_public_address", "retry_after_s",
]

# Targets (scheme, host, port, address) whose idle connections are kept.
MAX_CLIENTS: Final = 64
# Host names whose checked address is remembered (for dns_cache_s).
MAX_RESOLVED: Final = 256
# The idle connections are looked over at most this often (and at least every keepalive_s / 2).
SWEEP_MIN_S: Final = 1.0
RECEIVE_BYTES: Final = 65536


class AttemptFailed(Exception):
    """An attempt got no HTTP response (the reason says why)."""


class Refused(AttemptFailed):
    """The target may not be reached (a non-public address, a bad URL); final."""


class OutboundSettings(Protocol):
    """The keys of a section that ``Outbound`` serves (``WebhooksConfig``, ``HttpJobsConfig``)."""

    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def max_response_bytes(self) -> int: ...
    @property
    def ca_file(self) -> str: ...
    @property
    def allow_private(self) -> bool: ...
    @property
    def keepalive_s(self) -> float: ...
    @property
    def max_idle_connections(self) -> int: ...
    @property
    def dns_cache_s(self) -> float: ...


@attrs.frozen
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


def retry_after_s(headers: Mapping[str, str], now: datetime) -> float | None:
    """The wait a ``Retry-After`` header asks for, in seconds: delay-seconds, or an
    HTTP date (RFC 9110 section 10.2.3) less ``now``; a date in the past is 0. None
    when there is none or it cannot be read."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()[:64]
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, (at - now).total_seconds())


def is_public_address(text: str) -> bool:
    """True for a globally routable unicast address."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_global and not ip.is_multicast and not ip.is_reserved and not ip.is_loopback
        and not ip.is_link_local and not ip.is_private and not ip.is_unspecified
    )


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


@attrs.define(eq=False)
class _Connection:
    """One HTTP/1.1 connection to one pinned address, kept alive between attempts."""

    stream: trio.abc.Stream
    http: h11.Connection = attrs.Factory(lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0  # trio.current_time() when it was last kept


_Key = tuple[str, str, int, str]  # scheme, host, port, address


class Outbound:
    """Makes the request of each attempt (see the module docstring).

    Args:
        cfg: the section's settings (``configure`` replaces them after a reload).
        section: the section's name, for the keys named in errors (``webhooks``, ``jobs.http``).
        user_agent: the ``User-Agent`` of every request.
    """

    def __init__(self, cfg: OutboundSettings, *, section: str = "webhooks", user_agent: str = "realtimed-webhooks") -> None:
        self.cfg = cfg
        self.section = section
        self.user_agent = user_agent
        self._ssl: ssl.SSLContext | None = None
        self._idle: OrderedDict[_Key, list[_Connection]] = OrderedDict()
        # Set when a connection is kept: the sweeper sleeps on it while none is (no wake-ups for nothing).
        self._kept = trio.Event()
        # host name -> (the checked address, trio.current_time() until which it is used)
        self._resolved: OrderedDict[tuple[str, int], tuple[str, float]] = OrderedDict()

    def configure(self, cfg: OutboundSettings) -> None:
        """Settings after a reload; a new ``ca_file`` applies to new connections, and
        names are resolved (and checked) afresh."""
        self._resolved.clear()
        if cfg.ca_file != self.cfg.ca_file or cfg.allow_private != self.cfg.allow_private:
            self._ssl = None
            for connections in self._idle.values():
                for connection in connections:
                    _close_now(connection)
            self._idle.clear()
        self.cfg = cfg

    async def run(self) -> None:
        """Close idle connections once their ``keepalive_s`` has passed, until cancelled."""
        while True:
            if not self._idle:
                self._kept = trio.Event()
                await self._kept.wait()
            await trio.sleep(max(self.cfg.keepalive_s / 2, SWEEP_MIN_S))
            self.sweep()

    def sweep(self) -> None:
        """Close the idle connections kept longer than ``keepalive_s``."""
        oldest = trio.current_time() - self.cfg.keepalive_s
        for key in list(self._idle):
            connections = self._idle[key]
            fresh = [c for c in connections if c.idle_since > oldest]
            for connection in connections:
                if connection.idle_since <= oldest:
                    _close_now(connection)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    async def resolve(self, host: str, port: int) -> str:
        """The one address this attempt connects to (checked unless ``allow_private``):
        an IP address as it is; a name's, looked up at most once per ``dns_cache_s``."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            address = str(literal)
            self._check(host, address)
            return address
        now = trio.current_time()
        cached = self._resolved.get((host, port))
        if cached is not None and cached[1] > now:
            self._resolved.move_to_end((host, port))
            return cached[0]
        address = await self._lookup(host, port)
        if self.cfg.dns_cache_s > 0:
            self._resolved[(host, port)] = (address, now + self.cfg.dns_cache_s)
            self._resolved.move_to_end((host, port))
            while len(self._resolved) > MAX_RESOLVED:
                self._resolved.popitem(last=False)
        return address

    def _check(self, host: str, address: str) -> None:
        if not self.cfg.allow_private and not is_public_address(address):
            raise Refused(f"{host} resolves to {address}, which is not a public address ({self.section}.allow_private)")

    async def _lookup(self, host: str, port: int) -> str:
        try:
            with trio.fail_after(self.cfg.connect_timeout_s):
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except trio.TooSlowError:
            raise AttemptFailed(f"resolving {host} timed out") from None
        except OSError as exc:
            raise AttemptFailed(f"cannot resolve {host}: {exc}") from None
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise AttemptFailed(f"{host} has no address")
        for address in addresses:
            self._check(host, address)
        return addresses[0]

    async def post(self, url: str, *, headers: Mapping[str, str], body: bytes) -> Response:
        """POST the JSON ``body`` to ``url`` (see ``request``)."""
        return await self.request("POST", url, headers=headers, body=body)

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        """``method`` ``url`` with the JSON ``body`` (None: no body); the status, headers
        and up to ``max_response_bytes`` of the body. ``headers`` come after the ones
        set here (host, content type and length, user agent)."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise Refused(f"bad URL: {exc}") from None
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise Refused("the URL must be http:// or https:// with a host")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        framing = [("content-length", "0")] if body is None else [
            ("content-type", "application/json"), ("content-length", str(len(body)))
        ]
        try:
            request = h11.Request(
                method=method,
                target=target,
                headers=[("host", parts.netloc), *framing, ("user-agent", self.user_agent), *headers.items()],
            )
        except h11.LocalProtocolError as exc:
            raise Refused(f"not a valid HTTP request: {exc}"[:300]) from None
        payload = b"" if body is None else body
        try:
            with trio.fail_after(self.cfg.timeout_s):
                address = await self.resolve(host, port)
                key = (parts.scheme, host, port, address)
                while True:
                    connection = self._take(key)
                    reused = connection is not None
                    if connection is None:
                        connection = await self._open(key)
                    try:
                        response, reusable = await self._exchange(connection, request, payload)
                    except _StaleConnection:
                        _close_now(connection)
                        if reused:
                            continue  # a kept-alive connection the receiver had closed: once more, afresh
                        raise AttemptFailed("the connection closed before an answer") from None
                    except BaseException:
                        _close_now(connection)
                        raise
                    if reusable:
                        self._keep(key, connection)
                    else:
                        _close_now(connection)
                    return response
        except trio.TooSlowError:
            raise AttemptFailed(f"no answer within {self.section}.timeout_s ({self.cfg.timeout_s:g} s)") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise AttemptFailed(f"{type(exc).__name__}: {exc}"[:300]) from None
        except h11.ProtocolError as exc:
            raise AttemptFailed(f"not an HTTP/1.1 answer: {exc}"[:300]) from None

    def _take(self, key: _Key) -> _Connection | None:
        """The most recently kept idle connection to ``key`` that is not too old, if any."""
        connections = self._idle.get(key)
        if not connections:
            return None
        self._idle.move_to_end(key)
        connection = connections.pop()
        if connection.idle_since > trio.current_time() - self.cfg.keepalive_s:
            return connection
        # Too old, and the ones kept before it are older still.
        for old in (connection, *connections):
            _close_now(old)
        connections.clear()
        return None

    def _keep(self, key: _Key, connection: _Connection) -> None:
        if self.cfg.keepalive_s <= 0:
            _close_now(connection)
            return
        connections = self._idle.setdefault(key, [])
        self._idle.move_to_end(key)
        if len(connections) >= self.cfg.max_idle_connections:
            _close_now(connection)
            if not connections:
                del self._idle[key]
            return
        connection.idle_since = trio.current_time()
        connections.append(connection)
        self._kept.set()
        while len(self._idle) > MAX_CLIENTS:
            _, dropped = self._idle.popitem(last=False)
            for old in dropped:
                _close_now(old)

    async def _open(self, key: _Key) -> _Connection:
        scheme, host, port, address = key
        try:
            with trio.fail_after(self.cfg.connect_timeout_s):
                tcp = await trio.open_tcp_stream(address, port)
                if scheme != "https":
                    return _Connection(tcp)
                if self._ssl is None:
                    self._ssl = _ssl_context(self.cfg.ca_file)
                # The URL's name, not the address, is what the certificate must show.
                tls = trio.SSLStream(tcp, self._ssl, server_hostname=host, https_compatible=True)
                try:
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(tls)
                    raise
                return _Connection(tls)
        except trio.TooSlowError:
            raise AttemptFailed(
                f"no connection within {self.section}.connect_timeout_s ({self.cfg.connect_timeout_s:g} s)"
            ) from None

    async def _exchange(self, connection: _Connection, request: h11.Request, body: bytes) -> tuple[Response, bool]:
        http = connection.http
        out = http.send(request) or b""
        out += http.send(h11.Data(data=body)) or b""
        out += http.send(h11.EndOfMessage()) or b""
        head: h11.Response | None = None
        try:
            await connection.stream.send_all(out)
            bound = self.cfg.max_response_bytes
            received = bytearray()
            complete = False
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(bytes(await connection.stream.receive_some(RECEIVE_BYTES)))
                elif isinstance(event, h11.Response):
                    head = event
                    if bound == 0:
                        break
                elif isinstance(event, h11.Data):
                    received += event.data[: bound - len(received)]
                    if len(received) >= bound:
                        break
                elif isinstance(event, h11.EndOfMessage):
                    complete = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
                # InformationalResponse (1xx): wait for the final answer.
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            if head is None:
                raise _StaleConnection() from None
            raise
        if head is None:
            raise _StaleConnection()
        reusable = complete and http.our_state is h11.DONE and http.their_state is h11.DONE
        if reusable:
            http.start_next_cycle()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers}
        return Response(status=head.status_code, headers=headers, body=bytes(received)), reusable

    async def aclose(self) -> None:
        idle, self._idle = list(self._idle.values()), OrderedDict()
        for connections in idle:
            for connection in connections:
                _close_now(connection)


class _StaleConnection(Exception):
    """The connection ended before any answer (a kept-alive one may have been closed by the receiver)."""


def _close_now(connection: _Connection) -> None:
    """Close a connection without waiting (nothing is flushed: it is finished or abandoned)."""
    stream = connection.stream
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(transport, trio.SocketStream):
        transport.socket.close()
