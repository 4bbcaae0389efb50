"""``store.postgres_dsn``: the PostgreSQL URL, read as asyncpg will read it, without connecting.

The PostgreSQL store hands the URL to ``asyncpg.connect`` and
``asyncpg.create_pool``, which parse it (scheme, hosts and ports, ``sslmode``
and the other query options, ``PG*`` environment variables, the service and
password files) before opening any connection. ``check_postgres_dsn`` runs that
same parse, so that the configuration loader (``run``, ``check-config``,
``migrate``, ``jobs``) refuses a URL that would only fail once the store starts.

Error handling:
    ``check_postgres_dsn`` raises ``ValueError`` with a message fit for the
    operator; the URL holds a password, so a message never quotes the URL, and
    the password is masked out of whatever asyncpg said.
"""

from __future__ import annotations

import inspect
from typing import Any, Final
from urllib.parse import unquote, urlsplit

__all__ = ["check_postgres_dsn", "describe_postgres_dsn", "postgres_operator_message"]

_MASK: Final = "***"
# Shorter pieces are not masked: they would garble the message and hide little.
_MIN_MASKED_CHARS: Final = 4


def _parse_arguments() -> tuple[Any, dict[str, Any]] | None:
    """asyncpg's own parser of ``connect``'s arguments, and the defaults ``connect`` gives it.

    It is asyncpg's private ``connect_utils._parse_connect_arguments`` (what
    ``connect`` calls first); None if this asyncpg has no such function.
    """
    import asyncpg
    from asyncpg import connect_utils

    parse = getattr(connect_utils, "_parse_connect_arguments", None)
    if parse is None:  # pragma: no cover - a future asyncpg; the tests would say so
        return None
    defaults = inspect.signature(asyncpg.connect).parameters
    kwargs = {}
    for name in inspect.signature(parse).parameters:
        given = defaults.get(name)
        kwargs[name] = None if given is None or given.default is inspect.Parameter.empty else given.default
    return parse, kwargs


def _secrets(dsn: str) -> list[str]:
    """The pieces of ``dsn`` that may hold the password, longest first."""
    pieces: list[str] = []
    netlocs = [dsn.partition("://")[2].split("/", 1)[0].split("?", 1)[0]]
    try:
        parts = urlsplit(dsn)
        netlocs.append(parts.netloc)
        query = parts.query
    except ValueError:
        query = dsn.partition("?")[2]
    for netloc in netlocs:
        userinfo = netloc.rpartition("@")[0]
        if userinfo:
            pieces.append(userinfo)
            pieces += userinfo.replace("@", ":").split(":")[1:]
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name in ("password", "sslpassword"):
            pieces.append(value)
    pieces += [unquote(piece) for piece in pieces]
    return sorted({p for p in pieces if len(p) >= _MIN_MASKED_CHARS}, key=len, reverse=True)


def _reason(exc: Exception, dsn: str) -> str:
    text = str(exc)
    if isinstance(exc, ValueError) and text.startswith("invalid literal for int()"):
        return (
            "a port is not a number (characters such as @ : / ? # in the user or password "
            "must be percent-encoded: %40 %3A %2F %3F %23)"
        )
    if text.startswith("bad query field"):
        return "the options after ? must be name=value pairs joined by &"
    if isinstance(exc, OSError):
        text = f"a file it names (sslrootcert, sslcert, sslkey, sslcrl, passfile) cannot be read: {text}"
    elif isinstance(exc, IndexError):
        text = "a host of its host list is empty"
    elif not isinstance(exc, ValueError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    for secret in _secrets(dsn):
        text = text.replace(secret, _MASK)
    return text


def check_postgres_dsn(dsn: str) -> None:
    """Parse ``dsn`` as ``asyncpg.connect`` will, without connecting.

    Raises:
        ValueError: asyncpg would refuse it; the message says why, never with the password.
    """
    parser = _parse_arguments()
    if parser is None:  # pragma: no cover
        return
    parse, kwargs = parser
    kwargs["dsn"] = dsn
    try:
        parse(**kwargs)
    except Exception as exc:  # whatever asyncpg raises here, connecting would raise too
        raise ValueError(f"not a PostgreSQL URL asyncpg can use: {_reason(exc, dsn)}") from None



def describe_postgres_dsn(dsn: str) -> tuple[str, str, str]:
    """``(address, user, database)`` of ``dsn`` for a message: ``host:port/db``, never the password.

    Unknown pieces read as asyncpg's defaults would (port 5432, the database named
    like the user); this is for messages only, not for connecting.
    """
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        path = parts.path
    except ValueError:
        netloc = dsn.partition("://")[2].split("/", 1)[0]
        path = "/" + dsn.partition("://")[2].partition("/")[2].split("?", 1)[0]
    userinfo, _, hosts = netloc.rpartition("@")
    user = unquote(userinfo.partition(":")[0]) or "postgres"
    database = unquote(path.lstrip("/")) or user
    shown_hosts = ",".join(h if ":" in h.rpartition("]")[2] else f"{h}:5432" for h in hosts.split(",") if h)
    return f"{shown_hosts or 'localhost:5432'}/{database}", user, database


def postgres_operator_message(exc: BaseException, dsn: str) -> str | None:
    """The one line for an operator when connecting with ``dsn`` failed with ``exc``; None if unknown."""
    import asyncpg

    address, user, database = describe_postgres_dsn(dsn)
    if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
        return (
            f"PostgreSQL at {address}: database {database!r} does not exist; "
            f"create it (createdb -O {user} {database}) or fix the database name in store.postgres_dsn"
        )
    if isinstance(exc, asyncpg.exceptions.InvalidPasswordError):
        return (
            f"PostgreSQL at {address}: the password of role {user!r} was refused; "
            "fix the password in store.postgres_dsn (or its credential file) or the role's password on the server"
        )
    if isinstance(exc, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
        detail = _masked(str(exc) or type(exc).__name__, dsn)
        return (
            f"PostgreSQL at {address}: role {user!r} may not connect ({detail}); "
            f"create the role (createuser {user}), allow it in pg_hba.conf, or fix the user in store.postgres_dsn"
        )
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return None
    if isinstance(exc, (OSError, asyncpg.exceptions.InterfaceError)) or type(exc).__name__ == "Unavailable":
        detail = _masked(str(exc) or type(exc).__name__, dsn)
        if isinstance(exc, TimeoutError):
            detail = "no answer in time (store.connect_timeout_s)"
        return (
            f"PostgreSQL at {address} is unreachable ({detail}); "
            "start the server, or fix the host and port in store.postgres_dsn"
        )
    return None


def _masked(text: str, dsn: str) -> str:
    for secret in _secrets(dsn):
        text = text.replace(secret, _MASK)
    return text
