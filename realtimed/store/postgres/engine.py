"""The PostgreSQL engine: asyncpg on an asyncio loop in a thread of its own.

asyncpg runs on asyncio; the store keeps one asyncio loop in a dedicated
thread (``bridge.AsyncioThread``), started by ``run`` (or by ``migrate`` for
its one call) and joined when it ends. Any Trio task may call the store; no
asyncio loop or policy is needed around it.

Each store call crosses the Trio/asyncio bridge once: the whole call (pool
acquire, transaction, statements) runs as one asyncio coroutine in that
thread, and asyncpg prepares and caches every statement per connection
(``_call``). A Trio cancellation (a caller's deadline, ``store.*`` timeouts,
shutdown) cancels the asyncio task and waits for it, at most
``_CANCEL_GRACE_S``, so that its connection goes back to the pool clean (or,
if asyncpg cannot say it is clean, is closed). A domain may
group calls (``_start_batching``): ``append_message``, the hot path, does
(see ``chat``).

Concurrency: rows are locked in one order (a conversation before its members;
a user's notification counter before their notifications), so concurrent calls
wait rather than deadlock; jobs are claimed with ``FOR UPDATE SKIP LOCKED``. A
deadlock or serialization failure that happens anyway is retried.

Job wake-ups: ``enqueue_job`` (and ``append_message`` with jobs) sends
``NOTIFY realtimed_jobs`` inside its transaction; one dedicated connection
LISTENs and wakes ``wait_for_jobs`` on every node (the notification arrives in
the asyncio thread and is handed to Trio's). It reconnects by itself.

Resource handling: ``run`` starts the asyncio thread, migrates, opens a pool
of ``store.pool_min`` to ``store.pool_max`` connections and the LISTEN
connection, and when cancelled closes them all and joins the thread.

Error handling: a refused or lost connection, a connect timeout, a statement
timeout (``store.statement_timeout_s``) or a server shutting down becomes
``Unavailable`` at once; after a lost or refused connection the pool's
connections are expired so that the next call connects afresh, and calls
succeed again as soon as the server is back, with no restart; the connection
the call was using is terminated, never handed out again. (A timeout expires
nothing: a busy pool or a slow server has not lost its connections, and
replacing them all would only add connects to the load.) A connection
failure that asyncpg leaves behind on the asyncio side with nobody awaiting
it (a connect abandoned by a timeout whose socket is then lost, say) is
logged as a warning, without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final, TypeAlias, TypeVar

import asyncpg
import trio

from realtimed import metrics
from realtimed.clock import WallClock
from realtimed.config import StoreConfig
from realtimed.errors import OperatorError, Unavailable
from realtimed.postgres_dsn import postgres_operator_message
from realtimed.store.jobs import JobWakeups
from realtimed.store.postgres.bridge import AsyncioThread
from realtimed.store.schema import load_migrations, pending_migrations
from realtimed.store.values import PG_CODEC, dumps, loads, utc

__all__ = ["CODEC", "JOBS_CHANNEL", "Conn", "PostgresEngine", "Rollback", "count", "migrate_connection"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
Conn: TypeAlias = Any  # asyncpg.Connection (asyncpg has no type hints)
Pool: TypeAlias = Any  # asyncpg.Pool

CODEC: Final = PG_CODEC
JOBS_CHANNEL: Final = "realtimed_jobs"
_MIGRATION_LOCK: Final = 0x7274_6D69_6772  # pg_advisory_xact_lock key for migrations
_RETRIES: Final = 3
_LISTEN_KEEPALIVE_S: Final = 30.0
_CLOSE_TIMEOUT_S: Final = 5.0
# How long a cancelled call waits for asyncpg to finish cancelling it (the
# server acknowledges the cancel request; the connection is back in the pool).
_CANCEL_GRACE_S: Final = 5.0
_THREAD_NAME: Final = "realtimed-postgres"

# Errors that mean "the database cannot be reached now", not "this call is wrong".
_UNAVAILABLE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    OSError,  # refused, reset, unreachable; TimeoutError (connect, acquire, command) is one too
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, statement timeout, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.InterfaceError,  # connection closed under us, pool closing
    # A connection whose protocol state a lost link left confused ("cannot switch to
    # state ...; another operation is in progress"), or whose cached statements a
    # migration outdated: that connection is unusable, a fresh one is not.
    asyncpg.exceptions.InternalClientError,
)
_CLOSE_ERRORS: Final[tuple[type[BaseException], ...]] = (TimeoutError, *_UNAVAILABLE_ERRORS)
# Unavailable too, but the connection is fine: a timeout (an OSError) or a statement
# the server cancelled for its statement_timeout. Nothing is expired or terminated.
_KEPT_ERRORS: Final[tuple[type[BaseException], ...]] = (TimeoutError, asyncpg.exceptions.QueryCanceledError)
_RETRY_ERRORS: Final = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


class _BackgroundFailures:
    """The loop's exception handler: log the connection failures nobody awaited.

    asyncio reports through ``call_exception_handler`` what failed with no one
    to raise it to ("Future exception was never retrieved", a failed callback).
    A lost or refused PostgreSQL connection is worth one warning line: the calls
    that used it already failed with ``Unavailable``. Anything else goes to the
    handler that was there before (by default: logged with its traceback).
    """

    def __init__(self, previous: Callable[[Any, dict[str, Any]], object] | None) -> None:
        self._previous = previous

    def __call__(self, loop: Any, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, _UNAVAILABLE_ERRORS):
            log.warning(
                "store: a PostgreSQL connection failed with no call waiting on it (%s): %s",
                context.get("message", "background failure"),
                str(exc) or type(exc).__name__,
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


def _log_background_failures(loop: Any) -> None:
    """Install ``_BackgroundFailures`` on the asyncio loop (once; it stays for the loop's life)."""
    previous = loop.get_exception_handler()
    if not isinstance(previous, _BackgroundFailures):
        loop.set_exception_handler(_BackgroundFailures(previous))


def _discard(conn: Conn) -> None:
    """Terminate a pooled connection so that the pool connects afresh in its place."""
    try:
        conn.terminate()
    except asyncpg.exceptions.InterfaceError:
        pass  # it closed by itself, and the pool has taken it back already


def count(status: str) -> int:
    """The row count of a command status (``UPDATE 3``)."""
    return int(status.split()[-1])


class Rollback(Exception):
    """Roll the transaction back and return ``value`` as the call's result."""

    def __init__(self, value: Any) -> None:
        super().__init__("rollback")
        self.value = value


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


async def migrate_connection(conn: Conn, apply: bool, now: datetime) -> list[str]:
    """Apply the pending migrations on ``conn`` (asyncio side); returns their names.

    Several nodes starting at once: one migrates, the others wait for its
    transaction (an advisory lock) and find nothing to do.
    """
    migrations = load_migrations("postgres")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        current = (
            await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") if exists else 0
        )
        pending = pending_migrations(migrations, current, apply=apply)
        if pending and not exists:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL)"
            )
        for m in pending:
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                now,
            )
    return [m.name for m in pending]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


async def _init_connection(conn: Conn) -> None:
    await conn.set_type_codec("jsonb", encoder=dumps, decoder=loads, schema="pg_catalog")


async def _keep_session(conn: Conn) -> None:
    """Reset nothing when a connection goes back to the pool.

    The store never changes session state on pooled connections (no SET, no
    LISTEN, only transaction-scoped locks), and asyncpg still rolls back an
    unfinished transaction; skipping the default reset query saves a round
    trip on every call.
    """


class PostgresEngine(JobWakeups):
    """The bridge, the pool, migrations and job wake-ups (see the module docstring);
    ``PostgresStore`` adds a class per domain on top.

    Args:
        config: ``store`` settings: DSN, pool size, timeouts, apply_migrations.
        clock: wall time, only for the ``applied_at`` of migrations.
        dsn: overrides ``config.postgres_dsn``.
    """

    def __init__(self, config: StoreConfig, *, clock: WallClock, dsn: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.clock = clock
        self.dsn = dsn or config.postgres_dsn
        self._pool: Pool | None = None
        self._bridge: AsyncioThread | None = None  # the asyncio thread, while run() runs
        self._listened = False
        cfg = config
        # A whole call: a connection (maybe a new one) and a few statements.
        self._call_timeout_s = cfg.connect_timeout_s + 2 * cfg.statement_timeout_s

    # -- the bridge ------------------------------------------------------------------------------

    async def _start_bridge(self) -> AsyncioThread:
        bridge = AsyncioThread(name=_THREAD_NAME, cancel_grace_s=_CANCEL_GRACE_S)
        await bridge.start()
        _log_background_failures(bridge.loop)
        return bridge

    async def _aio(self, fn: Callable[..., Awaitable[_T]], *args: Any, timeout_s: float | None) -> _T:
        """Run an asyncio coroutine function once across the bridge, translating connection failures."""
        bridge = self._bridge
        if bridge is None:
            raise Unavailable("the store is not running")
        try:
            if timeout_s is None:
                return await bridge.call(fn, *args)
            with trio.fail_after(timeout_s):
                return await bridge.call(fn, *args)
        except trio.TooSlowError:
            raise Unavailable(f"PostgreSQL did not answer within {timeout_s:g} s") from None
        except _UNAVAILABLE_ERRORS as exc:
            raise Unavailable(f"PostgreSQL is unavailable: {exc or type(exc).__name__}") from exc

    async def _in_pool(
        self, pool: Pool, fn: Callable[..., Awaitable[_T]], args: tuple[Any, ...], tx: bool
    ) -> _T:
        """asyncio side: acquire, run ``fn`` (in a transaction if ``tx``), release."""
        try:
            for attempt in range(1, _RETRIES + 1):
                try:
                    async with pool.acquire(timeout=self.config.connect_timeout_s) as conn:
                        try:
                            if not tx:
                                return await fn(conn, *args)
                            try:
                                async with conn.transaction():
                                    return await fn(conn, *args)
                            except Rollback as rb:
                                return rb.value  # type: ignore[no-any-return]
                        except _KEPT_ERRORS:
                            raise
                        except _UNAVAILABLE_ERRORS:
                            # Lost, or in a state no later call can use (a FATAL
                            # read before the close): never handed out again.
                            _discard(conn)
                            raise
                except _RETRY_ERRORS:
                    if attempt == _RETRIES:
                        raise
                    log.info("store: transaction retried after a deadlock or serialization failure")
            raise AssertionError("unreachable")
        except _KEPT_ERRORS:
            raise
        except _UNAVAILABLE_ERRORS:
            # The server may have restarted: every pooled connection may be dead. Replace them all
            # on their next use, so that the first calls after it is back succeed.
            await pool.expire_connections()
            raise

    async def _call(
        self, fn: Callable[..., Awaitable[_T]], *args: Any, tx: bool = True, read: bool = False
    ) -> _T:
        pool = self._pool
        if pool is None:
            raise Unavailable("the store is not running")
        started = time.perf_counter()
        try:
            try:
                return await self._aio(self._in_pool, pool, fn, args, tx, timeout_s=self._call_timeout_s)
            except Unavailable:
                if not read:
                    raise
            # A read is safe to repeat once, on a fresh connection.
            return await self._aio(self._in_pool, pool, fn, args, tx, timeout_s=self._call_timeout_s)
        finally:
            metrics.STORE_LATENCY.labels("postgres", metrics.call_name(fn)).observe(time.perf_counter() - started)

    # -- lifecycle -------------------------------------------------------------------------------

    async def _starting(self, call: Awaitable[_T]) -> _T:
        """Await a start-up call, worded for the operator when it fails for a reason they can fix.

        A missing database or role, or a refused password, is an ``OperatorError``; an
        unreachable server stays ``Unavailable``, with the address and what to do.
        """
        try:
            return await call
        except (Unavailable, asyncpg.exceptions.PostgresError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ is not None else exc
            message = postgres_operator_message(cause, self.dsn)
            if message is None:
                raise
            if isinstance(exc, Unavailable):
                # Still Unavailable (a server that may come back), now worded for the operator.
                raise Unavailable(message) from exc
            raise OperatorError(message) from exc

    async def _connect_one(self) -> Conn:
        return await asyncpg.connect(
            self.dsn,
            timeout=self.config.connect_timeout_s,
            command_timeout=self.config.statement_timeout_s + 1,
            server_settings=self._server_settings(),
        )

    def _server_settings(self) -> dict[str, str]:
        return {
            "application_name": "realtimed",
            "statement_timeout": str(int(self.config.statement_timeout_s * 1000)),
            "timezone": "UTC",
        }

    async def _migrate_aio(self, apply: bool) -> list[str]:
        conn = await self._connect_one()
        try:
            return await migrate_connection(conn, apply, utc(self.clock.now()))
        finally:
            await conn.close(timeout=_CLOSE_TIMEOUT_S)

    async def migrate(self) -> list[str]:
        """Apply pending migrations now (the ``realtimed migrate`` command); returns their names.

        Outside ``run`` it starts the asyncio thread for this call and joins it after.
        """
        own = self._bridge is None
        if own:
            self._bridge = await self._start_bridge()
        try:
            applied = await self._starting(self._aio(self._migrate_aio, True, timeout_s=None))
        finally:
            if own:
                bridge, self._bridge = self._bridge, None
                if bridge is not None:
                    await bridge.stop()
        for name in applied:
            log.info("store: applied migration %s", name)
        return applied

    async def _create_pool(self) -> Pool:
        return await asyncpg.create_pool(
            self.dsn,
            min_size=self.config.pool_min,
            max_size=self.config.pool_max,
            timeout=self.config.connect_timeout_s,
            command_timeout=self.config.statement_timeout_s + 1,
            server_settings=self._server_settings(),
            statement_cache_size=256,
            init=_init_connection,
            reset=_keep_session,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (see the module docstring).

        Raises:
            SchemaVersionError: the schema is newer, or migrations are pending
                with ``store.apply_migrations`` off.
            Unavailable: the server cannot be reached at start.
        """
        if self._bridge is not None:
            raise RuntimeError("the store is running already")
        self._bridge = await self._start_bridge()
        try:
            applied = await self._starting(self._aio(self._migrate_aio, self.config.apply_migrations, timeout_s=None))
            for name in applied:
                log.info("store: applied migration %s", name)
            self._pool = await self._starting(self._aio(self._create_pool, timeout_s=self._call_timeout_s))
            log.info("store: PostgreSQL ready (pool %d to %d)", self.config.pool_min, self.config.pool_max)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen_forever)
                self._start_batching(nursery)
                task_status.started()
        finally:
            self._stop_batching()
            pool, self._pool = self._pool, None
            bridge, self._bridge = self._bridge, None
            with trio.CancelScope(shield=True):
                await self._close_pool(bridge, pool)
                await bridge.stop()
            if pool is not None:
                log.info("store: PostgreSQL closed")

    async def _close_pool(self, bridge: AsyncioThread, pool: Pool | None) -> None:
        if pool is None:
            return

        async def close() -> None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
            except _CLOSE_ERRORS:
                pool.terminate()

        try:
            await bridge.call(close)
        except Exception as exc:  # closing is best effort
            log.warning("store: closing the PostgreSQL pool failed: %s", exc)

    async def ping(self) -> None:
        await self._call(lambda conn: conn.fetchval("SELECT 1"), tx=False, read=True)

    def _start_batching(self, nursery: trio.Nursery) -> None:
        """Start the tasks that group calls (in ``nursery``, once the pool is open)."""

    def _stop_batching(self) -> None:
        """Stop taking calls into groups (``run`` is ending)."""

    # -- job wake-ups ----------------------------------------------------------------------------

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        # Called in the asyncio thread: the wake-up (Trio events) belongs to Trio's.
        bridge = self._bridge
        if bridge is not None:
            bridge.to_trio(self._wake_jobs)

    async def _listen_once(self) -> None:
        """asyncio side: LISTEN on one connection until it breaks."""
        conn = await self._connect_one()
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(JOBS_CHANNEL, self._on_notify)
            if self._listened and self._bridge is not None:
                # Back after a break: jobs enqueued meanwhile on other nodes sent no NOTIFY that
                # reached us. Wake the waiters once so that they look now.
                self._bridge.to_trio(self._wake_jobs)
            self._listened = True
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), _LISTEN_KEEPALIVE_S)
                except TimeoutError:
                    await conn.fetchval("SELECT 1", timeout=self.config.connect_timeout_s)
        finally:
            conn.terminate()

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            started = trio.current_time()
            try:
                await self._aio(self._listen_once, timeout_s=None)
            except Unavailable as exc:
                log.warning("store: the LISTEN connection failed (%s); reconnecting in %.1f s", exc, delay)
            else:
                log.warning("store: the LISTEN connection closed; reconnecting in %.1f s", delay)
            if trio.current_time() - started > 60:
                delay = 0.5
            await trio.sleep(delay)
            delay = min(delay * 2, 10.0)
