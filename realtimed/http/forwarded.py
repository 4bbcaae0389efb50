"""Which address a request comes from, behind trusted proxies (sans-IO).

``http.trusted_proxies`` lists the addresses and networks of the proxies in front
of realtimed. Only a connection from one of them may say who the client is,
in the one header ``http.forwarded_header`` names:

- ``x-forwarded-for``: ``X-Forwarded-For: client, proxy1, proxy2`` (nginx's
  ``$proxy_add_x_forwarded_for``, HAProxy's ``option forwardfor``);
- ``forwarded``: RFC 7239, ``Forwarded: for=client, for="[2001:db8::1]:4711"``.

Each proxy appends the address it received the request from, so the list is
read from the right: the client is the rightmost address that is not a trusted
proxy (the ones left of it were written by the client itself and prove nothing).
When every address is a trusted proxy, the leftmost one is the client. The
other header is ignored: a proxy that sets one passes the other on as the
client wrote it.

A header that cannot be read (RFC 7239 syntax for ``Forwarded``, or an entry of
``X-Forwarded-For`` that the walk reaches and that is not an IP address, such
as ``unknown``) is ignored as a whole, and the peer's address is used. From a
peer that is not trusted, both headers are always ignored.

Addresses are compared and returned in their canonical form, with IPv4-mapped
IPv6 addresses (``::ffff:192.0.2.1``, from a dual-stack socket) as IPv4.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, Literal

from realtimed.addresses import IpAddress, IpNetwork, parse_ip, parse_network

HeaderName = Literal["x-forwarded-for", "forwarded"]

# RFC 7230 tchar: what a token of RFC 7239 may hold.
_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class TrustedProxies:
    """The networks of ``http.trusted_proxies`` and the header their proxies set."""

    def __init__(self, entries: Sequence[str], *, header: HeaderName = "x-forwarded-for") -> None:
        self.networks: tuple[IpNetwork, ...] = tuple(parse_network(entry) for entry in entries)
        self.header: HeaderName = header

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | IpAddress | None) -> bool:
        """True when ``address`` (canonical or not) is one of the trusted proxies."""
        if address is None or not self.networks:
            return False
        ip = parse_ip(address) if isinstance(address, str) else address
        return ip is not None and any(ip in network for network in self.networks)

    def client_address(self, peer: str, headers: Iterable[tuple[str | bytes, str | bytes]]) -> str:
        """The request's client address: from the header when ``peer`` is trusted, else ``peer``.

        Args:
            peer: the connection's address (after any PROXY header).
            headers: the request's headers (names in any case, str or latin-1 bytes).
        """
        if not self.trusts(peer):
            return peer
        values = [
            _text(value)
            for name, value in headers
            if _text(name).lower() == self.header
        ]
        if not values:
            return peer
        chain = _x_forwarded_for(values) if self.header == "x-forwarded-for" else _forwarded(values)
        if chain is None:
            return peer
        found = self._rightmost_untrusted(chain)
        return str(found) if found is not None else peer

    def _rightmost_untrusted(self, chain: list[str]) -> IpAddress | None:
        """The client in a list of addresses each proxy appended to; None when unreadable."""
        leftmost: IpAddress | None = None
        for entry in reversed(chain):
            address = _strip_port(entry)
            if address is None:
                return None
            if not self.trusts(address):
                return address
            leftmost = address
        return leftmost


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _x_forwarded_for(values: list[str]) -> list[str] | None:
    """The entries of every X-Forwarded-For header, in order; None for an empty entry."""
    chain: list[str] = []
    for value in values:
        for entry in value.split(","):
            entry = entry.strip()
            if not entry:
                return None
            chain.append(entry)
    return chain


def _strip_port(entry: str) -> IpAddress | None:
    """``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1`` or ``[2001:db8::1]:80`` → the address."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        address = parse_ip(host)
        return address if ":" in host else None  # brackets hold an IPv6 address
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if not port.isdigit():
            return None
        address = parse_ip(host)
        return address if isinstance(address, ipaddress.IPv4Address) else None
    return parse_ip(entry)


def _forwarded(values: list[str]) -> list[str] | None:
    """The ``for`` of each element of every Forwarded header (RFC 7239), in order.

    None when a header is not valid RFC 7239, or an element has no ``for``
    (an element that names no client cannot be skipped over).
    """
    chain: list[str] = []
    for value in values:
        elements = _forwarded_elements(value)
        if elements is None:
            return None
        for pairs in elements:
            node = pairs.get("for")
            if node is None:
                return None
            chain.append(node)
    return chain


def _forwarded_elements(value: str) -> list[dict[str, str]] | None:
    """``for=a;proto=https, for="[::1]:80"`` → [{"for": "a", "proto": "https"}, {"for": "[::1]:80"}]."""
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    i, n = 0, len(value)

    def skip_ows(i: int) -> int:
        while i < n and value[i] in " \t":
            i += 1
        return i

    i = skip_ows(i)
    while True:
        start = i
        while i < n and value[i] in _TCHAR:
            i += 1
        name = value[start:i].lower()
        if not name or i >= n or value[i] != "=":
            return None
        i += 1
        if i < n and value[i] == '"':
            i += 1
            out: list[str] = []
            while i < n and value[i] != '"':
                if value[i] == "\\":
                    i += 1
                    if i >= n:
                        return None
                out.append(value[i])
                i += 1
            if i >= n:
                return None  # no closing quote
            i += 1
            text = "".join(out)
        else:
            start = i
            while i < n and value[i] in _TCHAR:
                i += 1
            text = value[start:i]
            if not text:
                return None
        if name in pairs:
            return None  # a parameter given twice in one element (RFC 7239 section 4)
        pairs[name] = text
        i = skip_ows(i)
        if i >= n:
            elements.append(pairs)
            return elements
        if value[i] == ";":
            i = skip_ows(i + 1)
        elif value[i] == ",":
            elements.append(pairs)
            pairs = {}
            i = skip_ows(i + 1)
        else:
            return None
