"""SMTP submission through smtplib, on worker threads, over a bounded pool of connections.

``SmtpPool.send`` hands one message to the configured server and answers a
``SendResult``: the server's reply code to the submission (or None when no
answer came: the connection failed, timed out or was dropped). It never raises
for what the server or the network does; ``realtimed.email.outcome`` decides
what a result means.

smtplib is blocking, so every call runs in ``trio.to_thread.run_sync``: the
Trio loop never waits on the network, and no asyncio client runs on it.

Resource handling:
    At most ``email.max_connections`` connections exist at once; a send waits
    for a free one (the semaphore is the backpressure). A connection that sent
    is kept for the next send unless it has been idle longer than
    ``email.idle_timeout_s``; one that failed in any way is closed. A reused
    connection the server has closed meanwhile (``SMTPServerDisconnected``
    before any reply) is replaced by a new one once, within the same send.
    ``aclose`` closes the idle connections (each ``QUIT`` bounded by the
    socket timeout).

Error handling:
    Connection, TLS and login failures, timeouts and unexpected disconnects are
    ``SendResult(code=None)``; a refusal of the sender, the recipient or the
    data is ``SendResult(code=<reply code>)``; a failed login with a reply code
    is that code (535: bad credentials, final).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import Message
from typing import Final

import attrs
import trio

from realtimed.config import EmailConfig

__all__ = ["SendResult", "SmtpPool"]

log = logging.getLogger(__name__)

#: A reply text kept in results and logs is cut to this many characters.
MAX_REPLY_CHARS: Final = 300


@attrs.frozen
class SendResult:
    """What the server answered to one submission.

    Attributes:
        code: the SMTP reply code (250 when accepted); None when no answer came.
        text: the reply text, or what went wrong.
    """

    code: int | None
    text: str

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300


def _reply_text(message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return " ".join(text.split())[:MAX_REPLY_CHARS]


@attrs.define(eq=False)
class _Connection:
    smtp: smtplib.SMTP
    last_used: float


class SmtpPool(trio.abc.AsyncResource):
    """Connections to the configured SMTP server (see the module docstring).

    Args:
        cfg: the ``[email]`` section.
        connect: builds one logged-in connection (tests may wrap it); runs on a worker thread.
    """

    def __init__(self, cfg: EmailConfig, *, connect: Callable[[EmailConfig], smtplib.SMTP] | None = None) -> None:
        self.cfg = cfg
        self._connect = connect or open_connection
        self._slots = trio.Semaphore(cfg.max_connections)
        self._threads = trio.CapacityLimiter(cfg.max_connections)
        self._idle: list[_Connection] = []
        self._closed = False
        #: Connections open now (idle or sending); never above ``cfg.max_connections``.
        self.open_connections = 0
        #: Connections opened since the start (reuse keeps it low), and the most open at once.
        self.opened_total = 0
        self.peak_open = 0

    async def send(self, message: Message, *, sender: str, to: str) -> SendResult:
        """Submit ``message`` to ``to`` with envelope sender ``sender``."""
        async with self._slots:
            for fresh_only in (False, True):
                conn = None if fresh_only else await self._take_idle()
                reused = conn is not None
                if conn is None:
                    try:
                        conn = await self._open()
                    except _Failed as failed:
                        return failed.result
                keep = False
                try:
                    result, keep = await trio.to_thread.run_sync(
                        _submit, conn.smtp, message, sender, to, limiter=self._threads
                    )
                finally:
                    if keep and not self._closed:
                        conn.last_used = time.monotonic()
                        self._idle.append(conn)
                    else:
                        # Failed, or cancelled while sending (a drain): closed (QUIT bounded by the socket timeout).
                        with trio.CancelScope(shield=True):
                            await self._discard(conn)
                # A reused connection that the server closed while it was idle: once more on a new one.
                if reused and result.code is None and result.text.startswith(_DISCONNECTED):
                    continue
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if time.monotonic() - conn.last_used <= self.cfg.idle_timeout_s:
                return conn
            await self._discard(conn)  # too old to trust
        return None

    async def _open(self) -> _Connection:
        self.open_connections += 1
        self.peak_open = max(self.peak_open, self.open_connections)
        try:
            smtp = await trio.to_thread.run_sync(self._connect_result, limiter=self._threads)
        except BaseException:
            self.open_connections -= 1
            raise
        if isinstance(smtp, SendResult):
            self.open_connections -= 1
            raise _Failed(smtp)
        self.opened_total += 1
        return _Connection(smtp, time.monotonic())

    def _connect_result(self) -> smtplib.SMTP | SendResult:
        try:
            return self._connect(self.cfg)
        except smtplib.SMTPResponseException as exc:
            return SendResult(exc.smtp_code, f"{type(exc).__name__}: {_reply_text(exc.smtp_error)}")
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            return SendResult(None, f"connection failed: {type(exc).__name__}: {_reply_text(str(exc))}")

    async def _discard(self, conn: _Connection) -> None:
        self.open_connections -= 1
        await self._quit(conn)

    async def _quit(self, conn: _Connection) -> None:
        await trio.to_thread.run_sync(_close, conn.smtp, limiter=self._threads)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        with trio.CancelScope(shield=True), trio.move_on_after(self.cfg.send_timeout_s):
            for conn in idle:
                self.open_connections -= 1
                await self._quit(conn)


class _Failed(Exception):
    def __init__(self, result: SendResult) -> None:
        self.result = result


_DISCONNECTED: Final = "disconnected"


def open_connection(cfg: EmailConfig) -> smtplib.SMTP:
    """One connection, upgraded to TLS as ``email.security`` says and logged in (blocking)."""
    context = ssl.create_default_context(cafile=cfg.ca_file or None)
    smtp: smtplib.SMTP
    if cfg.security == "tls":
        smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.connect_timeout_s, context=context)
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.connect_timeout_s)
    try:
        smtp.ehlo()
        if cfg.security == "starttls":
            # Required: a server that does not offer STARTTLS is refused (SMTPNotSupportedError).
            smtp.starttls(context=context)
            smtp.ehlo()
        if cfg.username:
            smtp.login(cfg.username, cfg.password)
        if smtp.sock is not None:
            smtp.sock.settimeout(cfg.send_timeout_s)
    except BaseException:
        _close(smtp)
        raise
    return smtp


def _submit(smtp: smtplib.SMTP, message: Message, sender: str, to: str) -> tuple[SendResult, bool]:
    """Send on ``smtp`` (blocking); the result, and whether the connection may be reused."""
    try:
        refused = smtp.send_message(message, from_addr=sender, to_addrs=[to])
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()), (550, b"recipient refused"))
        _reset(smtp)
        return SendResult(code, _reply_text(text)), True
    except smtplib.SMTPServerDisconnected as exc:
        return SendResult(None, f"{_DISCONNECTED}: {_reply_text(str(exc))}"), False
    except smtplib.SMTPResponseException as exc:
        # SMTPSenderRefused, SMTPDataError and the like. 421 means the server is closing.
        _reset(smtp)
        return SendResult(exc.smtp_code, _reply_text(exc.smtp_error)), exc.smtp_code != 421
    except (smtplib.SMTPException, OSError, ValueError) as exc:
        return SendResult(None, f"{type(exc).__name__}: {_reply_text(str(exc))}"), False
    if refused:
        code, text = next(iter(refused.values()))
        return SendResult(code, _reply_text(text)), True
    return SendResult(250, "accepted"), True


def _reset(smtp: smtplib.SMTP) -> None:
    try:
        smtp.rset()
    except (smtplib.SMTPException, OSError):
        pass


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        try:
            smtp.close()
        except OSError:
            pass
