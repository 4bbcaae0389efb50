"""The one HTTP request of a webhook attempt, made safely.

Resource handling: ``Outbound`` keeps a small pool of ``httpx.AsyncClient`` values,
one per (scheme, host, port, pinned address), so that deliveries to one endpoint
reuse kept-alive connections; the least recently used is closed beyond
``MAX_CLIENTS``, and ``aclose`` closes them all.

Safety (an endpoint's URL is the application's, but a server API key may be
abused to reach what sits beside realtimed):

- the host is resolved once per attempt, under ``webhooks.connect_timeout_s``; the
  attempt connects to that address and no other (a custom network backend
  ignores the name), while the ``Host`` header and TLS server name stay the URL's,
  so a name that resolves elsewhere a moment later (DNS rebinding) is not followed;
- an address that is not public (loopback, link-local, private, shared, multicast,
  reserved, unspecified; IPv4-mapped IPv6 checked as IPv4) is refused unless
  ``webhooks.allow_private``;
- redirects are not followed (a 3xx is a failed attempt);
- at most ``webhooks.max_response_bytes`` of the body are read, and the whole
  request is bounded by ``webhooks.timeout_s``.

Error handling: every failure is an ``AttemptFailed`` with a short reason (refused
targets are ``Refused``, which no retry can fix); nothing else escapes ``post``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import httpcore
import httpx
import trio

from realtimed.config import WebhooksConfig

__all__ = ["AttemptFailed", "Outbound", "Refused", "Response", "is_public_address"]

log = logging.getLogger(__name__)

MAX_CLIENTS: Final = 64


class AttemptFailed(Exception):
    """An attempt got no HTTP response (the reason says why)."""


class Refused(AttemptFailed):
    """The target may not be reached (a non-public address, a bad URL); final."""


@attrs.frozen
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def is_public_address(text: str) -> bool:
    """True for a globally routable unicast address."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(
        ip.is_global and not ip.is_multicast and not ip.is_reserved and not ip.is_loopback
        and not ip.is_link_local and not ip.is_private and not ip.is_unspecified
    )


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to one address whatever name is asked (TLS still names the URL's host)."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_tcp(self._address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


class _PinnedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, address: str, context: ssl.SSLContext) -> None:
        super().__init__()
        # httpx takes no network backend; its connection pool does.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=32,
            max_keepalive_connections=32,
            keepalive_expiry=30.0,
            network_backend=_PinnedBackend(address),
        )


async def _close_quietly(client: httpx.AsyncClient) -> None:
    """Close a client no longer used (its requests in flight have their own bounds)."""
    try:
        with trio.move_on_after(5):
            await client.aclose()
    except Exception as exc:  # a system task must not raise
        log.debug("webhooks: closing an idle HTTP client failed: %s", exc)


class Outbound:
    """Makes the POST of each attempt (see the module docstring)."""

    def __init__(self, cfg: WebhooksConfig) -> None:
        self.cfg = cfg
        self._ssl: ssl.SSLContext | None = None
        self._clients: OrderedDict[tuple[str, str, int, str], httpx.AsyncClient] = OrderedDict()

    def configure(self, cfg: WebhooksConfig) -> None:
        """Settings after a reload; a new ``ca_file`` applies to new connections."""
        if cfg.ca_file != self.cfg.ca_file:
            self._ssl = None
            while self._clients:
                _, old = self._clients.popitem(last=False)
                trio.lowlevel.spawn_system_task(_close_quietly, old)
        self.cfg = cfg

    async def resolve(self, host: str, port: int) -> str:
        """The one address this attempt connects to (checked unless ``allow_private``)."""
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
        if not self.cfg.allow_private:
            for address in addresses:
                if not is_public_address(address):
                    raise Refused(
                        f"{host} resolves to {address}, which is not a public address (webhooks.allow_private)"
                    )
        return addresses[0]

    def _client(self, scheme: str, host: str, port: int, address: str) -> httpx.AsyncClient:
        key = (scheme, host, port, address)
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        if self._ssl is None:
            self._ssl = _ssl_context(self.cfg.ca_file)
        client = httpx.AsyncClient(
            transport=_PinnedTransport(address, self._ssl),
            follow_redirects=False,
            timeout=httpx.Timeout(self.cfg.timeout_s, connect=self.cfg.connect_timeout_s),
            trust_env=False,
        )
        self._clients[key] = client
        while len(self._clients) > MAX_CLIENTS:
            _, old = self._clients.popitem(last=False)
            trio.lowlevel.spawn_system_task(_close_quietly, old)
        return client

    async def post(self, url: str, *, headers: Mapping[str, str], body: bytes) -> Response:
        """POST ``body`` to ``url``; the status, headers and up to ``max_response_bytes`` of the body."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise Refused(f"bad URL: {exc}") from None
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise Refused("the URL must be http:// or https:// with a host")
        try:
            with trio.fail_after(self.cfg.timeout_s):
                address = await self.resolve(host, port)
                client = self._client(parts.scheme, host, port, address)
                request = client.build_request(
                    "POST", url, content=body, headers={"content-type": "application/json", **headers}
                )
                response = await client.send(request, stream=True)
                try:
                    received = bytearray()
                    if self.cfg.max_response_bytes:
                        async for chunk in response.aiter_raw():
                            received += chunk
                            if len(received) >= self.cfg.max_response_bytes:
                                del received[self.cfg.max_response_bytes :]
                                break
                finally:
                    await response.aclose()
        except trio.TooSlowError:
            raise AttemptFailed(f"no answer within webhooks.timeout_s ({self.cfg.timeout_s:g} s)") from None
        except httpx.TimeoutException as exc:
            raise AttemptFailed(f"timed out: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise AttemptFailed(f"{type(exc).__name__}: {exc}"[:300]) from None
        return Response(status=response.status_code, headers=dict(response.headers), body=bytes(received))

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        with trio.move_on_after(5):
            for client in clients:
                await client.aclose()
