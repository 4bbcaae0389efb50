"""Every error realtimed raises on purpose, and the codes clients see.

Hierarchy::

    RealtimedError
     ├─ ConfigError                 the configuration is invalid (carries every problem)
     ├─ OperatorError               something the operator can fix stops the daemon: a database,
     │                              role or password, Redis, a port in use, a file, a TLS pair;
     │                              its message is one line naming the thing, its address
     │                              (never a password) and what to do
     └─ ApiError                    an error a client or the app's backend receives
         ├─ BadRequest              BAD_REQUEST: not JSON, not an object, unknown op
         ├─ ValidationFailed        VALIDATION_ERROR: a field is missing, of the wrong type or out of range
         ├─ Unauthorized            UNAUTHORIZED
         │   └─ TokenExpired        UNAUTHORIZED, but the token was only expired (close 4004)
         ├─ Forbidden               FORBIDDEN
         │   └─ Banned              FORBIDDEN, with banned_until (close 4503 on a socket)
         ├─ NotFound                NOT_FOUND
         ├─ Conflict                CONFLICT
         ├─ Blocked                 BLOCKED
         ├─ RateLimited             RATE_LIMITED, with retry_after_ms
         ├─ PayloadTooLarge         PAYLOAD_TOO_LARGE
         ├─ Unavailable             UNAVAILABLE: a backend is down, retry later
         └─ Internal                INTERNAL, with a correlation id that is also logged

Third-party errors are translated where they are caught (``raise Unavailable(...)
from exc``); nothing else crosses a module boundary.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Final

from realtimed.clock import iso

# Error codes (docs/protocol.md section 4.5).
BAD_REQUEST: Final = "BAD_REQUEST"
VALIDATION_ERROR: Final = "VALIDATION_ERROR"
UNAUTHORIZED: Final = "UNAUTHORIZED"
FORBIDDEN: Final = "FORBIDDEN"
NOT_FOUND: Final = "NOT_FOUND"
CONFLICT: Final = "CONFLICT"
BLOCKED: Final = "BLOCKED"
RATE_LIMITED: Final = "RATE_LIMITED"
PAYLOAD_TOO_LARGE: Final = "PAYLOAD_TOO_LARGE"
UNAVAILABLE: Final = "UNAVAILABLE"
INTERNAL: Final = "INTERNAL"

# WebSocket close codes (docs/protocol.md section 4.6).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_TOO_BIG: Final = 1009
CLOSE_TOKEN_EXPIRED: Final = 4004
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_RATE_ABUSE: Final = 4009
CLOSE_AUTH_TIMEOUT: Final = 4012
CLOSE_NODE_FULL: Final = 4013
CLOSE_UNAUTHORIZED: Final = 4501
CLOSE_BANNED: Final = 4503
CLOSE_DISCONNECTED: Final = 4510
CLOSE_TOO_MANY_SOCKETS: Final = 4511

HTTP_STATUS: Final[dict[str, int]] = {
    BAD_REQUEST: 400,
    VALIDATION_ERROR: 400,
    UNAUTHORIZED: 401,
    FORBIDDEN: 403,
    BLOCKED: 403,
    NOT_FOUND: 404,
    CONFLICT: 409,
    PAYLOAD_TOO_LARGE: 413,
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,
    INTERNAL: 500,
}


class RealtimedError(Exception):
    """Base of every error realtimed raises on purpose."""


class OperatorError(RealtimedError):
    """A condition the operator can fix; ``str()`` is the one line ``run`` and ``migrate`` print."""


class ConfigError(RealtimedError):
    """The configuration is invalid.

    ``problems`` holds one ``(key path, message)`` pair per mistake, so that an
    operator sees them all at once.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" if key else msg for key, msg in problems))


class ApiError(RealtimedError):
    """An error with a protocol code, sent to a client or to the app's backend."""

    code: str = INTERNAL

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a reply or an HTTP error body."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class BadRequest(ApiError):
    code = BAD_REQUEST


class ValidationFailed(ApiError):
    """A field is missing, of the wrong type or out of range; the message names it."""

    code = VALIDATION_ERROR

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)


class Unauthorized(ApiError):
    code = UNAUTHORIZED


class TokenExpired(Unauthorized):
    """The token was valid except that it has expired."""


class Forbidden(ApiError):
    code = FORBIDDEN


class Banned(Forbidden):
    """The user is banned by the server API, until ``banned_until`` (None: until lifted)."""

    def __init__(self, banned_until: datetime | None) -> None:
        self.banned_until = banned_until
        super().__init__(f"banned until {iso(banned_until)}" if banned_until is not None else "banned")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["banned_until"] = iso(self.banned_until)
        return out


class NotFound(ApiError):
    code = NOT_FOUND


class Conflict(ApiError):
    code = CONFLICT


class Blocked(ApiError):
    code = BLOCKED


class RateLimited(ApiError):
    code = RATE_LIMITED

    def __init__(self, message: str, *, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = max(1, int(retry_after_ms))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["retry_after_ms"] = self.retry_after_ms
        return out


class PayloadTooLarge(ApiError):
    code = PAYLOAD_TOO_LARGE

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field)


class Unavailable(ApiError):
    """A backend (store, broker, FCM) cannot be reached; the caller may retry later."""

    code = UNAVAILABLE


class Internal(ApiError):
    """An unexpected failure; ``correlation_id`` also appears in the server log."""

    code = INTERNAL

    def __init__(self, message: str = "internal error", *, correlation_id: str | None = None) -> None:
        super().__init__(message)
        self.correlation_id = correlation_id or new_correlation_id()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["correlation_id"] = self.correlation_id
        return out


def new_correlation_id() -> str:
    return "err_" + secrets.token_hex(8)
