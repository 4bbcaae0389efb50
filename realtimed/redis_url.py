"""``broker.redis_url``: which Redis topology to talk to, parsed without connecting.

Formats:
    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
    ``unix://[[user]:password@]/path/to/socket[?db=N]``: one server, given to
    coredis as is (its query options, such as ``?ssl_ca_certs=``, apply).

    ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    ``[?sentinel_username=U&sentinel_password=P]``: the primary of ``service`` as
    Redis Sentinel names it, asked of the listed sentinels (port 26379 unless
    given). The user and password are those of the Redis servers; the query
    options are the sentinels' own credentials, when they require some.

    ``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``: a Redis
    Cluster found through any of the listed nodes (port 6379 unless given). A
    cluster has only database 0, so no path.

    Hosts are names, IPv4 addresses or ``[IPv6]`` addresses; user, password and
    query values are percent-decoded.

Error handling:
    ``parse_redis_url`` raises ``ValueError`` with a message fit for the operator;
    since the URL may hold a password, messages never quote the whole URL.
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import parse_qsl, unquote

import attrs

SINGLE_SCHEMES: Final = ("redis", "rediss", "unix")
SENTINEL_SCHEME: Final = "redis+sentinel"
CLUSTER_SCHEME: Final = "redis+cluster"
SENTINEL_PORT: Final = 26379
REDIS_PORT: Final = 6379
_SENTINEL_OPTIONS: Final = ("sentinel_username", "sentinel_password")


@attrs.frozen
class RedisTarget:
    """What ``broker.redis_url`` points at.

    ``kind`` is ``single`` (``url`` goes to coredis as is), ``sentinel`` (``hosts``
    are the sentinels, ``service`` names the primary, ``db`` its database) or
    ``cluster`` (``hosts`` are startup nodes).
    """

    kind: Literal["single", "sentinel", "cluster"]
    url: str = attrs.field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    sentinel_username: str | None = attrs.field(default=None, repr=False)
    sentinel_password: str | None = attrs.field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``broker.redis_url``; raises ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"expected a URL such as redis://host:6379/0 ({_schemes()})")
    if scheme in SINGLE_SCHEMES:
        _check_single(scheme, rest)
        return RedisTarget("single", url)
    if scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        raise ValueError(f"unknown scheme {scheme + '://'!r} ({_schemes()})")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ValueError("a fragment (#...) means nothing here")
    rest, _, query = rest.partition("?")
    location, _, path = rest.partition("/")
    userinfo, at, hostlist = location.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    default_port = SENTINEL_PORT if scheme == SENTINEL_SCHEME else REDIS_PORT
    hosts = _hosts(hostlist, default_port)
    options = _options(query)
    if scheme == CLUSTER_SCHEME:
        if options:
            raise ValueError(f"unknown option {next(iter(options))!r} (a cluster URL takes none)")
        if path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0: remove the path")
        return RedisTarget("cluster", url, hosts, username=username, password=password)
    for name in options:
        if name not in _SENTINEL_OPTIONS:
            raise ValueError(f"unknown option {name!r} (known: {', '.join(_SENTINEL_OPTIONS)})")
    service, _, db_text = path.partition("/")
    service = unquote(service)
    if not service:
        raise ValueError("a sentinel URL needs the service name: redis+sentinel://host:26379/<service>[/<db>]")
    db_text = db_text.rstrip("/")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise ValueError(f"the database after the service name must be a number, got {db_text!r}")
    return RedisTarget(
        "sentinel",
        url,
        hosts,
        service=service,
        db=int(db_text or 0),
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username"),
        sentinel_password=options.get("sentinel_password"),
    )


def _schemes() -> str:
    return "one of " + ", ".join(s + "://" for s in (*SINGLE_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME))


def _check_single(scheme: str, rest: str) -> None:
    location, _, path = rest.split("?", 1)[0].partition("/")
    if scheme == "unix":
        if not path:
            raise ValueError("a unix:// URL needs the socket path: unix:///path/to/redis.sock")
        return
    hostlist = location.rpartition("@")[2]
    if "," in hostlist:
        raise ValueError(f"{scheme}:// names one server; several hosts need redis+sentinel:// or redis+cluster://")
    _hosts(hostlist, REDIS_PORT)
    db_text = path.rstrip("/")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise ValueError(f"the path must be a database number, got {db_text!r}")


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None)


def _hosts(hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    if not hostlist:
        raise ValueError("no host: expected host[:port][,host[:port]...]")
    hosts = []
    for item in hostlist.split(","):
        hosts.append(_host(item, default_port))
    return tuple(hosts)


def _host(item: str, default_port: int) -> tuple[str, int]:
    if not item:
        raise ValueError("empty host in the host list (a stray comma?)")
    if item.startswith("["):
        host, bracket, after = item[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"malformed IPv6 host {item!r}: expected [address]:port")
        if after and not after.startswith(":"):
            raise ValueError(f"malformed host {item!r}: expected [address]:port")
        port_text = after[1:] if after else ""
        if after and not port_text:
            raise ValueError(f"malformed host {item!r}: empty port")
    else:
        if item.count(":") > 1:
            raise ValueError(f"malformed host {item!r}: write IPv6 addresses as [address]:port")
        host, colon, port_text = item.partition(":")
        if not host:
            raise ValueError(f"malformed host {item!r}: no host name")
        if colon and not port_text:
            raise ValueError(f"malformed host {item!r}: empty port")
        if any(c in host for c in "[]@/?#") or any(c.isspace() for c in host):
            raise ValueError(f"malformed host {item!r}")
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
        raise ValueError(f"malformed host {item!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def _options(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("malformed query: expected name=value&name=value") from None
    return dict(pairs)


def redis_address(url: str) -> str:
    """Where ``url`` points, for a message: its hosts (and service), never a user or password."""
    scheme, _, rest = url.partition("://")
    location, _, path = rest.partition("#")[0].partition("?")[0].partition("/")
    if scheme.lower() == "unix":
        return f"unix:/{path}"
    hosts = location.rpartition("@")[2]
    if scheme.lower() == SENTINEL_SCHEME:
        return f"{hosts} (sentinels of {path.partition('/')[0]})"
    return hosts or "localhost:6379"
