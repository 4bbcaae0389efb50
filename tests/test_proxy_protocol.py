"""The PROXY protocol header parser (sans-IO), versions 1 and 2, with hostile input."""

from __future__ import annotations

import struct

import pytest

from realtimed.http.proxy_protocol import (
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    parse,
)

V1_TCP4 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8700\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n"


def every_prefix_needs_more(data: bytes, **kwargs: object) -> None:
    for end in range(len(data)):
        assert parse(data[:end], **kwargs) is None, data[:end]  # type: ignore[arg-type]


# -- version 1 ----------------------------------------------------------------------------------


def test_v1_tcp4_names_the_client_and_its_length() -> None:
    header = parse(V1_TCP4 + b"GET / HTTP/1.1\r\n", version="v1")
    assert header is not None
    assert header.source == ("203.0.113.7", 51234)
    assert header.size == len(V1_TCP4)
    every_prefix_needs_more(V1_TCP4, version="v1")


def test_v1_tcp6_and_unknown() -> None:
    header = parse(V1_TCP6, version="v1")
    assert header is not None and header.source == ("2001:db8::7", 4711)
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        unknown = parse(line + b"rest", version="v1")
        assert unknown is not None and unknown.source is None and unknown.size == len(line)


def test_v1_longest_headers_are_accepted() -> None:
    v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    tcp6 = f"PROXY TCP6 {v6} {v6} 65535 65535\r\n".encode()
    header = parse(tcp6, version="v1")
    assert header is not None and header.source == (v6, 65535)
    longest = f"PROXY UNKNOWN {v6} {v6} 65535 65535\r\n".encode()  # the specification's worst case
    assert len(longest) == V1_MAX_BYTES
    header = parse(longest, version="v1")
    assert header is not None and header.source is None and header.size == V1_MAX_BYTES


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # no header at all: refused on its first byte
        b"G",
        b"PROXX",
        b"proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n",
        V2_SIGNATURE,  # the other version
        b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n",  # bare LF
        b"PROXY TCP4 1.2.3.4\r1.2.3.5 1 2\r\n",  # bare CR
        b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n",  # a field missing
        b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n",  # one too many
        b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n",  # two spaces
        b"PROXY TCP5 1.2.3.4 1.2.3.5 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 1.2.3.5 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 2001:db8::1 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n",  # a scope is no client address
        b"PROXY TCP4 1.2.3.256 1.2.3.5 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 1.2.3.5 1 2\r\n",
        b"PROXY TCP4 example.com 1.2.3.5 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.5 080 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 1.2.3.5 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.5 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.5 \xd9\xa1 2\r\n",  # not ASCII (an Arabic-Indic digit)
        b"PROXY " + b"A" * (V1_MAX_BYTES - 6),  # no CRLF within 107 bytes
        b"PROXY TCP4 1.2.3.4 1.2.3.5 1 " + b"2" * 80 + b"\r\n",
    ],
)
def test_v1_refuses_what_is_not_a_header(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data, version="v1")


def test_v1_oversized_is_refused_as_soon_as_107_bytes_have_no_crlf() -> None:
    data = b"PROXY TCP4 " + b"1" * 200
    assert parse(data[: V1_MAX_BYTES - 1], version="v1") is None
    with pytest.raises(ProxyHeaderError, match="over 107 bytes"):
        parse(data[:V1_MAX_BYTES], version="v1")


# -- version 2 ----------------------------------------------------------------------------------


def test_v2_ipv4_and_ipv6_name_the_client() -> None:
    v4 = encode_v2(("203.0.113.7", 51234), ("10.0.0.1", 8700))
    header = parse(v4 + b"\x16\x03\x01", version="v2")
    assert header is not None and header.source == ("203.0.113.7", 51234) and header.size == len(v4) == 28
    every_prefix_needs_more(v4, version="v2")
    v6 = encode_v2(("2001:db8::7", 4711), ("2001:db8::1", 443))
    header = parse(v6, version="v2")
    assert header is not None and header.source == ("2001:db8::7", 4711) and header.size == 52


def test_v2_tlvs_are_skipped() -> None:
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # ALPN, NOOP
    data = encode_v2(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=tlvs)
    header = parse(data + b"next", version="v2")
    assert header is not None and header.source == ("192.0.2.1", 1) and header.size == len(data)


def test_v2_local_unspec_and_unix_use_the_peer() -> None:
    local = encode_v2(None)
    header = parse(local, version="v2")
    assert header is not None and header.source is None and header.size == 16
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert (parsed := parse(unspec, version="v2")) is not None and parsed.source is None
    unix = V2_SIGNATURE + b"\x21\x31" + struct.pack(">H", 216) + b"\x00" * 216
    assert (parsed := parse(unix, version="v2")) is not None and parsed.source is None and parsed.size == 232


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n\r\n\x00\r\nQUIX",  # wrong signature, refused at the byte that differs
        b"\x00",
        b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\r\n",  # the other version
        b"GET / HTTP/1.1\r\n\r\n",
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in the binary form
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # command 2
        V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\x00" * 12,  # family 4
        V2_SIGNATURE + b"\x21\x13\x00\x0c" + b"\x00" * 12,  # transport 3
        V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12,  # UDP
        V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8,  # too short for two IPv4 addresses and ports
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12,  # too short for IPv6
    ],
)
def test_v2_refuses_what_is_not_a_header(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data, version="v2", max_bytes=4096)


def test_v2_oversized_is_refused_from_its_length_alone() -> None:
    fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", 65535)
    with pytest.raises(ProxyHeaderError, match="over 1024"):
        parse(fixed, version="v2", max_bytes=1024)  # before any of the 65535 bytes arrive
    fits = encode_v2(("192.0.2.1", 1), tlvs=b"\x04" + struct.pack(">H", 1024 - 28 - 3) + b"\x00" * (1024 - 28 - 3))
    assert len(fits) == 1024
    assert parse(fits, version="v2", max_bytes=1024) is not None
    with pytest.raises(ProxyHeaderError):
        parse(fits, version="v2", max_bytes=1023)


def test_v2_truncated_needs_more_and_never_reads_past_its_length() -> None:
    data = encode_v2(("198.51.100.9", 80), ("198.51.100.10", 81), tlvs=b"\x04\x00\x01\x00")
    assert parse(data[:-1], version="v2") is None
    header = parse(data + data, version="v2")
    assert header is not None and header.size == len(data)


def test_v1_encoder_round_trips() -> None:
    data = encode_v1(("2001:db8::9", 1), ("2001:db8::1", 2))
    header = parse(data, version="v1")
    assert header is not None and header.source == ("2001:db8::9", 1)
