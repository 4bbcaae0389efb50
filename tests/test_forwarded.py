"""The client address behind trusted proxies: X-Forwarded-For and Forwarded (sans-IO)."""

from __future__ import annotations

import pytest

from realtimed.addresses import canonical, parse_network
from realtimed.config import ConfigError, load_config
from realtimed.http.forwarded import TrustedProxies

PROXIES = ["127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48"]


def xff(*values: str, peer: str = "127.0.0.1") -> str:
    return TrustedProxies(PROXIES).client_address(peer, [("X-Forwarded-For", v) for v in values])


def fwd(*values: str, peer: str = "127.0.0.1") -> str:
    return TrustedProxies(PROXIES, header="forwarded").client_address(peer, [(b"forwarded", v.encode()) for v in values])


def test_rightmost_untrusted_address_is_the_client() -> None:
    assert xff("203.0.113.7") == "203.0.113.7"
    # What the client wrote itself (left of the first untrusted address) is never believed.
    assert xff("192.0.2.66, 203.0.113.7, 10.1.2.3") == "203.0.113.7"
    assert xff("192.0.2.66", "203.0.113.7, 10.1.2.3") == "203.0.113.7"  # several headers: in order
    assert xff("unknown, 203.0.113.7") == "203.0.113.7"
    assert xff("2001:db8::7, 2001:db8:ffff::1") == "2001:db8::7"
    assert xff("[2001:db8::7]:4711") == "2001:db8::7"
    assert xff("203.0.113.7:51234") == "203.0.113.7"
    assert xff("::ffff:203.0.113.7") == "203.0.113.7"  # IPv4-mapped, as a dual-stack socket shows it
    # Every address a trusted proxy: the leftmost is the client.
    assert xff("10.9.9.9, 10.1.2.3") == "10.9.9.9"


def test_untrusted_peer_headers_are_ignored() -> None:
    assert xff("203.0.113.7", peer="198.51.100.1") == "198.51.100.1"
    assert fwd("for=203.0.113.7", peer="198.51.100.1") == "198.51.100.1"
    assert TrustedProxies([]).client_address("127.0.0.1", [("x-forwarded-for", "203.0.113.7")]) == "127.0.0.1"
    # The peer's own form is kept when it is not an address (a Unix socket path, say).
    assert xff("203.0.113.7", peer="") == ""


@pytest.mark.parametrize(
    "value",
    [
        "203.0.113.7, ",  # an empty entry
        ", 203.0.113.7",
        "203.0.113.7,,10.1.2.3",
        "unknown",  # the entry the walk reaches is not an address
        "203.0.113.7, garbage",
        "203.0.113.7:http",
        "[203.0.113.7]:80",  # brackets are for IPv6
        "[2001:db8::7",
        "[2001:db8::7]:",
        "2001:db8::7]:80",
        "203.0.113.7:80:90",
        "example.com",
    ],
)
def test_malformed_x_forwarded_for_falls_back_to_the_peer(value: str) -> None:
    assert xff(value) == "127.0.0.1"


def test_only_the_configured_header_counts() -> None:
    # A proxy that sets X-Forwarded-For passes Forwarded on as the client wrote it.
    headers = [("forwarded", "for=192.0.2.66"), ("x-forwarded-for", "203.0.113.7")]
    assert TrustedProxies(PROXIES).client_address("127.0.0.1", headers) == "203.0.113.7"
    assert TrustedProxies(PROXIES, header="forwarded").client_address("127.0.0.1", headers) == "192.0.2.66"
    assert TrustedProxies(PROXIES, header="forwarded").client_address("127.0.0.1", headers[1:]) == "127.0.0.1"


def test_forwarded_rfc7239() -> None:
    assert fwd("for=203.0.113.7") == "203.0.113.7"
    assert fwd('for="[2001:db8:cafe::17]:4711"') == "2001:db8:cafe::17"
    assert fwd('For="203.0.113.7:1";proto=https;by=10.0.0.1') == "203.0.113.7"
    assert fwd("for=192.0.2.66, for=203.0.113.7;proto=http, for=10.1.2.3") == "203.0.113.7"
    assert fwd("for=192.0.2.66", "for=203.0.113.7,for=10.1.2.3") == "203.0.113.7"
    assert fwd('for="\\203.0.113.7"') == "203.0.113.7"  # a quoted-pair
    assert fwd("for=10.9.9.9,for=10.1.2.3") == "10.9.9.9"


@pytest.mark.parametrize(
    "value",
    [
        "for=unknown",
        "for=_hidden, for=10.1.2.3",  # an obfuscated identifier the walk reaches
        "proto=https",  # an element naming no client
        "for=203.0.113.7, proto=https",
        "for=203.0.113.7;for=192.0.2.1",  # a parameter twice
        'for="203.0.113.7',  # no closing quote
        'for="203.0.113.7\\',
        "for=203.0.113.7 extra",
        "for=",
        "=203.0.113.7",
        "for=203.0.113.7,",
        "for 203.0.113.7",
        "for=[2001:db8::1]",  # brackets must be quoted
        "",
    ],
)
def test_malformed_forwarded_falls_back_to_the_peer(value: str) -> None:
    assert fwd(value) == "127.0.0.1"


def test_networks() -> None:
    trusted = TrustedProxies(["192.0.2.10", "10.0.0.0/8", "::1"])
    assert trusted.trusts("192.0.2.10") and not trusted.trusts("192.0.2.11")
    assert trusted.trusts("10.255.0.1") and trusted.trusts("::ffff:10.0.0.1") and trusted.trusts("::1")
    assert not trusted.trusts("not an address") and not trusted.trusts(None)
    assert not TrustedProxies([])
    assert canonical("::ffff:127.0.0.1") == "127.0.0.1" and canonical("2001:DB8::1") == "2001:db8::1"
    with pytest.raises(ValueError, match=r"did you mean 10\.0\.0\.0/8"):
        parse_network("10.0.0.1/8")
    with pytest.raises(ValueError, match="not an IP address"):
        parse_network("localhost")


def test_config_keys_are_checked() -> None:
    ok = load_config(None, env={}, data={"http": {"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"], "proxy_protocol": "v2"}})
    assert ok.http.trusted_proxies == ["127.0.0.1", "10.0.0.0/8"] and ok.http.proxy_protocol == "v2"
    assert ok.http.forwarded_header == "x-forwarded-for" and ok.http.internal_proxy_protocol == "off"
    with pytest.raises(ConfigError) as bad:
        load_config(
            None,
            env={},
            data={
                "http": {
                    "trusted_proxies": ["10.0.0.1/8", "nginx"],
                    "forwarded_header": "x-real-ip",
                    "internal_proxy_protocol": "v1",
                }
            },
        )
    keys = [key for key, _ in bad.value.problems]
    assert "http.trusted_proxies[0]" in keys and "http.trusted_proxies[1]" in keys
    assert "http.forwarded_header" in keys
    assert "http.internal_proxy_protocol" in keys  # no internal listener
    with pytest.raises(ConfigError) as untrusting:
        load_config(None, env={}, data={"http": {"proxy_protocol": "v1"}})
    assert [key for key, _ in untrusting.value.problems] == ["http.proxy_protocol"]
