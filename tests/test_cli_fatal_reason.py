"""Which failures ``realtimed run`` reports as a one-line reason, and which with a traceback."""

from __future__ import annotations

import errno

from realtimed.cli import _fatal_reason
from realtimed.errors import Unavailable


def test_operator_problems_are_one_line_reasons() -> None:
    assert _fatal_reason(Unavailable("PostgreSQL is unavailable: refused")) == "PostgreSQL is unavailable: refused"
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    reason = _fatal_reason(ExceptionGroup("run", [in_use]))
    assert reason is not None and "already in use" in reason and "http.listen" in reason


def test_a_lost_connection_that_escaped_its_backend_is_a_bug_with_a_traceback() -> None:
    # What ended the daemon when asyncpg lost a connection nobody awaited.
    lost = ConnectionError("unexpected connection_lost() call")
    assert _fatal_reason(lost) is None
    assert _fatal_reason(ExceptionGroup("loop", [ExceptionGroup("tasks", [lost, lost])])) is None
    assert _fatal_reason(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")) is None
