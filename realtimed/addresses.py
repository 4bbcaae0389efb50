"""IP addresses and networks as realtimed reads them, in canonical form (sans-IO).

``http.trusted_proxies`` entries are parsed here when the configuration is
loaded (``parse_network``), and the HTTP listener reads peer and forwarded
addresses with ``parse_ip`` and ``canonical``: an IPv4-mapped IPv6 address
(``::ffff:192.0.2.1``, from a dual-stack socket) is the IPv4 address.
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["IpAddress", "IpNetwork", "canonical", "parse_ip", "parse_network"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IpAddress | None:
    """An IP address in canonical form (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def canonical(text: str) -> str:
    """``text`` in canonical form when it is an IP address, else unchanged.

    Cached: every connection asks it of its peer's address, and parsing one costs
    about as much as verifying a token's HMAC.
    """
    address = parse_ip(text)
    return str(address) if address is not None else text


def parse_network(text: str) -> IpNetwork:
    """An address or a CIDR network; raises ValueError with a message for the operator."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(text.strip(), strict=False)
            raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from None
        raise ValueError(f"{text!r} is not an IP address or a CIDR network") from None
    return network
