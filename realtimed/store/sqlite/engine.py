"""The SQLite engine: connections, the writer task, the read pool, migrations.

Writes: one writer task owns the write connection. Callers put write requests
(a function of the connection) on a bounded channel; the writer takes every
request waiting, up to ``store.sqlite_batch_max``, and runs them in ONE
transaction on a worker thread. A request that fails is rolled back alone and
the others commit: the group is then run again with each request inside its
own SAVEPOINT (request functions are pure functions of the connection, so a
second run is the same as the first). Before committing, the writer waits up
to 3 ms for as many requests as its last group answered (those callers usually
write again at once), so that under load groups stay large. The connection runs
with ``synchronous=FULL``: every COMMIT fsyncs the WAL, so a write is durable
when its call returns, and a group of writes costs one fsync. Because there is
one writer, read-modify-write operations (``seq`` assignment, job claims) are
atomic without locks.

Reads: a small pool of connections (``store.sqlite_readers``) used on worker
threads; WAL lets them read while the writer writes, and each read sees the
last commit. Nothing blocks the Trio loop.

Rows come back as ``sqlite3.Row`` (read by column name by the record builders
of ``realtimed.store``); times are stored as integer microseconds since the
epoch, UTC (``SQLITE_CODEC``).

Resource handling: ``run`` opens the connections, migrates, serves until
cancelled, then fails queued writes with ``Unavailable`` and closes the
connections. A write being committed when ``run`` is cancelled completes first.

Error handling: SQLite errors other than constraint violations (a full disk,
an I/O error, a closed store) become ``Unavailable``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import outcome
import trio

from realtimed import metrics
from realtimed.clock import WallClock
from realtimed.config import StoreConfig
from realtimed.errors import OperatorError, Unavailable
from realtimed.store.jobs import JobWakeups
from realtimed.store.schema import Migration, load_migrations, pending_migrations
from realtimed.store.values import SQLITE_CODEC, dumps, to_micros

__all__ = ["CODEC", "Conn", "SQLiteEngine", "json_list", "us"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_BUSY_TIMEOUT_S: Final = 5.0
_CLOSE_TIMEOUT_S: Final = 10.0
_GATHER_WAIT_S: Final = 0.003

Conn = sqlite3.Connection
CODEC: Final = SQLITE_CODEC
us = to_micros


def json_list(values: Iterable[str]) -> str:
    """A list of ids as one parameter (``IN (SELECT value FROM json_each(?))``)."""
    return dumps(list(values))


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


def _split_statements(sql: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise RuntimeError(f"incomplete SQL statement at the end of a migration: {buf.strip()[:80]!r}")
    return out


def _migrate(conn: Conn, migrations: list[Migration], apply: bool, now: int) -> list[str]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        current = 0
        if exists:
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        pending = pending_migrations(migrations, current, apply=apply)
        if pending and not exists:
            conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at INTEGER NOT NULL)"
            )
        for m in pending:
            for statement in _split_statements(m.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, now),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [m.name for m in pending]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Write:
    fn: Callable[[Conn], Any]
    wakes_jobs: bool
    done: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[Any] | None = None


def _observe(fn: Callable[..., object], started: float) -> None:
    metrics.STORE_LATENCY.labels("sqlite", metrics.call_name(fn)).observe(time.perf_counter() - started)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
        err = Unavailable(f"the SQLite store failed: {exc}")
        err.__cause__ = exc
        return err
    return exc


class SQLiteEngine(JobWakeups):
    """Connections, the writer task and the read pool (see the module docstring);
    ``SQLiteStore`` adds a class per domain on top.

    Args:
        path: the database file; its folder is created if missing.
        config: ``store`` settings (batch size, readers, apply_migrations).
        clock: wall time, only for the ``applied_at`` of migrations.
    """

    def __init__(self, path: str | Path, *, config: StoreConfig | None = None, clock: WallClock) -> None:
        super().__init__()
        self.path = Path(path)
        self.config = config or StoreConfig()
        self.clock = clock
        self._write_send: trio.MemorySendChannel[_Write] | None = None
        self._readers: list[Conn] = []
        self._reader_slots: trio.CapacityLimiter | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    def _connect(self) -> Conn:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_S,
            cached_statements=256,
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.row_factory = sqlite3.Row  # rows read by column name (``store.values.Row``)
        return conn

    async def migrate(self) -> list[str]:
        """Apply pending migrations now (the ``realtimed migrate`` command); returns their names."""
        try:
            return await trio.to_thread.run_sync(self._migrate_sync, True)
        except (sqlite3.Error, OSError) as exc:
            raise OperatorError(self._cannot_open(exc)) from exc

    def _cannot_open(self, exc: BaseException) -> str:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        return (
            f"cannot open the SQLite store {self.path} ({detail}); make its folder exist and be writable by the "
            "daemon's user, or fix server.state_dir / store.sqlite_path"
        )

    def _migrate_sync(self, apply: bool) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            return self._migrate_on(conn, apply)
        finally:
            conn.close()

    def _migrate_on(self, conn: Conn, apply: bool) -> list[str]:
        applied = _migrate(conn, load_migrations("sqlite"), apply, us(self.clock.now()))
        for name in applied:
            log.info("store: applied migration %s to %s", name, self.path)
        return applied

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (see the module docstring).

        Raises:
            SchemaVersionError: the file's schema is newer, or migrations are
                pending with ``store.apply_migrations`` off.
        """
        conns: list[Conn] = []

        def open_all() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conns.append(self._connect())
            self._migrate_on(conns[0], self.config.apply_migrations)
            for _ in range(self.config.sqlite_readers):
                conns.append(self._connect())

        try:
            try:
                await trio.to_thread.run_sync(open_all)
            except (sqlite3.Error, OSError) as exc:
                raise OperatorError(self._cannot_open(exc)) from exc
            writer, readers = conns[0], conns[1:]
            send, recv = trio.open_memory_channel[_Write](self.config.sqlite_batch_max)
            self._readers = list(readers)
            self._reader_slots = trio.CapacityLimiter(len(readers))
            self._write_send = send
            self._closed = False
            log.info("store: SQLite %s ready (%d readers)", self.path, len(readers))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, writer, recv)
                task_status.started()
        finally:
            self._closed = True
            self._write_send = None
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                # Reads still running on a worker thread finish before their connection closes.
                while len(self._readers) < len(conns) - 1 and self._reader_slots is not None:
                    await trio.sleep(0.01)
                await trio.to_thread.run_sync(self._close_all, conns)
            log.info("store: SQLite %s closed", self.path)

    @staticmethod
    def _close_all(conns: list[Conn]) -> None:
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing best effort
                log.warning("store: closing a SQLite connection failed: %s", exc)

    async def _writer(self, conn: Conn, recv: trio.MemoryReceiveChannel[_Write]) -> None:
        batch: list[_Write] = []
        limit = self.config.sqlite_batch_max
        try:
            answered = 1
            while True:
                batch = [await recv.receive()]
                # A commit costs one fsync whatever its size, so fewer, larger groups carry more
                # writes. The callers the last group answered usually write again at once: wait
                # (briefly) for as many writes as that group had before committing.
                target = min(limit, answered)
                deadline = trio.current_time() + _GATHER_WAIT_S
                while len(batch) < limit:
                    try:
                        batch.append(recv.receive_nowait())
                        continue
                    except trio.WouldBlock:
                        pass
                    if len(batch) >= target:
                        break
                    with trio.move_on_at(deadline):
                        batch.append(await recv.receive())
                        continue
                    break
                await trio.to_thread.run_sync(self._commit_batch, conn, batch)
                answered = len(batch)
                wake = False
                for req in batch:
                    wake = wake or (req.wakes_jobs and isinstance(req.result, outcome.Value))
                    req.done.set()
                batch = []
                if wake:
                    self._wake_jobs()
        finally:
            closed = Unavailable("the store is shutting down")
            recv.close()
            leftovers = list(batch)
            while True:
                try:
                    leftovers.append(recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            for req in leftovers:
                if req.result is None:
                    req.result = outcome.Error(closed)
                req.done.set()

    @staticmethod
    def _commit_batch(conn: Conn, batch: list[_Write]) -> None:
        """Run a group of writes in one transaction (worker thread).

        The group first runs as is; if any write raises, the transaction is
        rolled back and the group runs again with each write in its own
        SAVEPOINT, so that the failing one is undone alone. (Savepoints cost
        about as much as the rest of an append; writes rarely fail.)
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                values = [req.fn(conn) for req in batch]
            except Exception:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                for req in batch:
                    conn.execute("SAVEPOINT w")
                    try:
                        value = req.fn(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO w")
                        conn.execute("RELEASE w")
                        req.result = outcome.Error(_translate(exc))
                    else:
                        conn.execute("RELEASE w")
                        req.result = outcome.Value(value)
            else:
                for req, value in zip(batch, values, strict=True):
                    req.result = outcome.Value(value)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("store: a SQLite write group of %d failed: %s", len(batch), exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = Unavailable(f"the SQLite store failed: {exc}")
            err.__cause__ = exc
            for req in batch:
                if req.result is None or isinstance(req.result, outcome.Value):
                    req.result = outcome.Error(err)

    async def _write(self, fn: Callable[[Conn], _T], *, wakes_jobs: bool = False) -> _T:
        send = self._write_send
        if send is None:
            raise Unavailable("the store is not running")
        req = _Write(fn, wakes_jobs)
        started = time.perf_counter()
        try:
            await send.send(req)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Unavailable("the store is shutting down") from None
        await req.done.wait()
        _observe(fn, started)
        assert req.result is not None
        result: _T = req.result.unwrap()
        return result

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        slots = self._reader_slots
        if slots is None or self._closed:
            raise Unavailable("the store is not running")
        started = time.perf_counter()
        try:
            return await self._read_now(slots, fn, *args)
        finally:
            _observe(fn, started)

    async def _read_now(self, slots: trio.CapacityLimiter, fn: Callable[..., _T], *args: Any) -> _T:
        async with slots:
            if self._closed:
                raise Unavailable("the store is shutting down")
            conn = self._readers.pop()
            try:
                return await trio.to_thread.run_sync(self._read_sync, conn, fn, args)
            except sqlite3.Error as exc:
                raise _translate(exc) from exc
            finally:
                self._readers.append(conn)

    @staticmethod
    def _read_sync(conn: Conn, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
        # One read transaction: the queries of one call see one snapshot.
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
