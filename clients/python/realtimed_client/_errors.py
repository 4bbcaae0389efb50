"""The one error the SDK raises: ``RealtimeError(code, message, field)``.

Codes are the server's (docs/protocol.md section 4: ``BAD_REQUEST``,
``VALIDATION_ERROR``, ``UNAUTHORIZED``, ``FORBIDDEN``, ``NOT_FOUND``, ``CONFLICT``,
``BLOCKED``, ``RATE_LIMITED``, ``PAYLOAD_TOO_LARGE``, ``UNAVAILABLE``,
``INTERNAL``) and the SDK's own:

- ``DISCONNECTED``: the connection was lost while a request that is not safe to
  replay was in flight; it may or may not have been applied.
- ``TIMEOUT``: no reply within the request's timeout (requests made while
  disconnected wait for the connection within the same timeout).
- ``CLOSED``: the client is closed, or stopped for good on a terminal close code
  (``close_code`` says which: 4501 unauthorized, 4503 banned, 4510 disconnected
  by the server API, 4511 too many sockets, 4004 with a fixed token that expired).
- ``SLOW_CONSUMER``: an event listener did not keep up with its buffer.
- ``OUTBOX_FULL``: too many chat messages wait in the outbox.

Arguments the server would refuse are refused before anything is sent, with
the server's code (``VALIDATION_ERROR`` naming the field, ``PAYLOAD_TOO_LARGE``).
"""

from __future__ import annotations

from typing import Any, Final

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

DISCONNECTED: Final = "DISCONNECTED"
TIMEOUT: Final = "TIMEOUT"
CLOSED: Final = "CLOSED"
SLOW_CONSUMER: Final = "SLOW_CONSUMER"
OUTBOX_FULL: Final = "OUTBOX_FULL"


class RealtimeError(Exception):
    """An error from realtimed or from the SDK.

    Attributes:
        code: a server error code or one of the SDK's (see the module docstring).
        message: a human-readable explanation; for ``VALIDATION_ERROR`` it starts
            with the field's name.
        field: the request field at fault, when one is.
        retry_after_ms: with ``RATE_LIMITED``, how long to wait.
        correlation_id: with ``INTERNAL``, the id that also appears in the server log.
        close_code: with ``CLOSED``, the WebSocket close code that stopped the client.
    """

    def __init__(
        self,
        code: str,
        message: str,
        field: str | None = None,
        *,
        retry_after_ms: int | None = None,
        correlation_id: str | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.retry_after_ms = retry_after_ms
        self.correlation_id = correlation_id
        self.close_code = close_code

    @classmethod
    def from_wire(cls, error: Any) -> RealtimeError:
        """Build from a reply's or an HTTP body's ``error`` object, whatever its shape."""
        if not isinstance(error, dict):
            return cls(INTERNAL, f"malformed error from the server: {error!r:.200}")
        code = error.get("code")
        message = error.get("message")
        field = error.get("field")
        retry = error.get("retry_after_ms")
        correlation = error.get("correlation_id")
        return cls(
            code if isinstance(code, str) else INTERNAL,
            message if isinstance(message, str) else "",
            field if isinstance(field, str) else None,
            retry_after_ms=retry if type(retry) is int else None,
            correlation_id=correlation if isinstance(correlation, str) else None,
        )

    def __repr__(self) -> str:
        extra = f", field={self.field!r}" if self.field else ""
        return f"RealtimeError({self.code!r}, {self.message!r}{extra})"


def validation_error(field: str, problem: str) -> RealtimeError:
    """``VALIDATION_ERROR`` worded as the server words it: ``field: problem``."""
    return RealtimeError(VALIDATION_ERROR, f"{field}: {problem}", field)
