"""Sans-IO parser of the PROXY protocol header, versions 1 and 2.

A layer 4 proxy (HAProxy ``send-proxy``/``send-proxy-v2``, nginx's stream module
``proxy_protocol on``, AWS NLB, ...) opens its connection to realtimed with one
header naming the client's address, before anything else (before TLS when the
listener speaks TLS). The format is HAProxy's specification
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt):

- version 1, text: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or
  ``PROXY UNKNOWN ...\\r\\n``, at most 107 bytes;
- version 2, binary: a 12-byte signature, a version and command byte, a family
  byte, a 16-bit length, then the addresses and optional TLVs (ignored here).

``parse`` looks at the bytes received so far and says: more are needed (None),
here is the header (``ProxyHeader``, with the number of bytes it took; what
follows belongs to TLS or HTTP), or the connection is not speaking the protocol
(``ProxyHeaderError``, raised as soon as the bytes already show it: a wrong
signature after its first byte, a header over its size limit, a bad address).

``source`` is None when the header says the connection is the proxy's own
(version 1 ``UNKNOWN``, version 2 ``LOCAL`` or a family other than TCP over
IPv4 and IPv6, such as a health check): the socket's peer address is then used.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, Literal

V1_PREFIX: Final = b"PROXY "
V1_MAX_BYTES: Final = 107  # the longest version 1 header, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES: Final = 16  # signature, version/command, family, length

_V2_LOCAL: Final = 0x0
_V2_PROXY: Final = 0x1
_V2_AF_UNSPEC: Final = 0x0
_V2_AF_INET: Final = 0x1
_V2_AF_INET6: Final = 0x2
_V2_AF_UNIX: Final = 0x3
_V2_STREAM: Final = 0x1
_V2_INET_BYTES: Final = 12  # two IPv4 addresses, two ports
_V2_INET6_BYTES: Final = 36

Version = Literal["v1", "v2"]


class ProxyHeaderError(ValueError):
    """The connection does not start with a valid PROXY header of the expected version."""


class ProxyHeader:
    """A parsed PROXY header.

    Attributes:
        source: the client's (address, port), or None to use the socket's peer.
        size: the header's length in bytes; the connection's own bytes follow it.
    """

    __slots__ = ("size", "source")

    def __init__(self, source: tuple[str, int] | None, size: int) -> None:
        self.source = source
        self.size = size

    def __repr__(self) -> str:
        return f"ProxyHeader(source={self.source!r}, size={self.size})"


def parse(data: bytes | bytearray, *, version: Version, max_bytes: int = 4096) -> ProxyHeader | None:
    """The header at the start of ``data``, or None while it is incomplete.

    Args:
        data: every byte received on the connection so far.
        version: the version the listener expects (``v1`` or ``v2``); the other is refused.
        max_bytes: the longest version 2 header accepted (its TLVs included).

    Raises:
        ProxyHeaderError: the bytes are not (the start of) a valid header.
    """
    if version == "v1":
        return _parse_v1(bytes(data))
    return _parse_v2(bytes(data), max_bytes)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    start = data[: len(V1_PREFIX)]
    if start != V1_PREFIX[: len(start)]:
        raise ProxyHeaderError("no PROXY protocol v1 header")
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1 header over {V1_MAX_BYTES} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 header not ended by CRLF")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    fields = line.split(" ")
    size = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, size)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 header: expected PROXY TCP4|TCP6 <src> <dst> <sport> <dport>")
    family = 4 if fields[1] == "TCP4" else 6
    source = _v1_address(fields[2], family)
    _v1_address(fields[3], family)
    source_port = _v1_port(fields[4])
    _v1_port(fields[5])
    return ProxyHeader((source, source_port), size)


def _v1_address(text: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header: {text[:48]!r} is not an IP address") from None
    if address.version != family or (family == 6 and "%" in text):
        raise ProxyHeaderError(f"PROXY v1 header: {text[:48]!r} is not an IPv{family} address")
    return str(address)


def _v1_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 header: bad port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 header: port {port} out of range")
    return port


def _parse_v2(data: bytes, max_bytes: int) -> ProxyHeader | None:
    start = data[: len(V2_SIGNATURE)]
    if start != V2_SIGNATURE[: len(start)]:
        raise ProxyHeaderError("no PROXY protocol v2 signature")
    if len(data) < V2_FIXED_BYTES:
        return None
    version_command, family_transport, length = struct.unpack_from(">BBH", data, len(V2_SIGNATURE))
    if version_command >> 4 != 0x2:
        raise ProxyHeaderError(f"PROXY v2 header: version {version_command >> 4}, expected 2")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header: unknown command {command}")
    size = V2_FIXED_BYTES + length
    if size > max_bytes:
        raise ProxyHeaderError(f"PROXY v2 header of {size} bytes, over {max_bytes}")
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family > _V2_AF_UNIX or transport > 0x2:
        raise ProxyHeaderError(f"PROXY v2 header: unknown family/transport {family_transport:#04x}")
    if command == _V2_PROXY and family in (_V2_AF_INET, _V2_AF_INET6):
        need = _V2_INET_BYTES if family == _V2_AF_INET else _V2_INET6_BYTES
        if length < need:
            raise ProxyHeaderError(f"PROXY v2 header: {length} bytes of addresses, {need} needed")
        if transport != _V2_STREAM:
            raise ProxyHeaderError("PROXY v2 header: the proxied connection is not TCP")
    if len(data) < size:
        return None
    if command == _V2_LOCAL or family not in (_V2_AF_INET, _V2_AF_INET6):
        # The proxy's own connection (a health check), or an address that is not IP
        # (AF_UNIX, AF_UNSPEC): the socket's peer stands for the client.
        return ProxyHeader(None, size)
    body = data[V2_FIXED_BYTES:size]
    if family == _V2_AF_INET:
        source = str(ipaddress.IPv4Address(body[0:4]))
        (source_port,) = struct.unpack_from(">H", body, 8)
    else:
        source = str(ipaddress.IPv6Address(body[0:16]))
        (source_port,) = struct.unpack_from(">H", body, 32)
    return ProxyHeader((source, source_port), size)


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A version 1 header (for tests and tools)."""
    family = "TCP6" if ipaddress.ip_address(source[0]).version == 6 else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(
    source: tuple[str, int] | None, destination: tuple[str, int] | None = None, *, tlvs: bytes = b""
) -> bytes:
    """A version 2 header; ``source`` None makes a LOCAL header (for tests and tools)."""
    if source is None:
        return V2_SIGNATURE + struct.pack(">BBH", 0x20 | _V2_LOCAL, 0, len(tlvs)) + tlvs
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0] if destination else ("::" if src.version == 6 else "0.0.0.0"))
    dport = destination[1] if destination else 0
    family = _V2_AF_INET if src.version == 4 else _V2_AF_INET6
    body = src.packed + dst.packed + struct.pack(">HH", source[1], dport) + tlvs
    return V2_SIGNATURE + struct.pack(">BBH", 0x20 | _V2_PROXY, family << 4 | _V2_STREAM, len(body)) + body
