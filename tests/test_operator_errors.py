"""Failures an operator causes read as one line that names the thing, its address and what to do.

``realtimed run`` and ``realtimed migrate`` run as subprocesses, as systemd runs
them: a wrong database, a wrong role, an unreachable server, a port in use, a
state folder that cannot be made, a TLS certificate and key that do not match.
With ``JOURNAL_STREAM`` naming stderr (its ``device:inode``) the line starts with
``<3>``, so ``journalctl -p err`` shows it. A Redis lost while running is said
once, then at a doubling interval with a count.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from realtimed import logs
from realtimed.broker.redis import RedisBroker, describe_link_error
from realtimed.config import BrokerConfig
from realtimed.postgres_dsn import describe_postgres_dsn
from tests.fixtures.daemon import toml_dumps
from tests.fixtures.services import PostgresServer, RedisServer
from tests.test_tls import make_cert

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-pw-never-shown"


def _config(folder: Path, name: str, data: dict[str, object]) -> Path:
    data = {"server": {"state_dir": str(folder / f"state-{name}")}, "http": {"listen": "127.0.0.1:0"}, **data}
    path = folder / f"{name}.toml"
    path.write_text(toml_dumps(data))
    return path


async def _realtimed(folder: Path, *args: str, journal: bool) -> tuple[int, list[str]]:
    """Run ``realtimed ARGS`` with stderr in a file; JOURNAL_STREAM names that file when ``journal``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIMED__", "PG", "JOURNAL_STREAM"))}
    env["PYTHONPATH"] = str(ROOT)
    err_path = folder / f"stderr-{args[0]}-{abs(hash(args))}.txt"

    def run() -> tuple[int, list[str]]:
        with open(err_path, "w+") as err:
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}" if journal else "1:1"
            done = subprocess.run(
                [sys.executable, "-m", "realtimed", *args], cwd=folder, stdout=subprocess.DEVNULL, stderr=err,
                env=env, timeout=60,
            )
        return done.returncode, err_path.read_text().splitlines()

    return await trio.to_thread.run_sync(run)


def _fatal_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("<3>realtimed:", "realtimed:"))]


async def _all(*calls: tuple[Path, tuple[str, ...], bool]) -> list[tuple[int, list[str]]]:
    results: list[tuple[int, list[str]] | None] = [None] * len(calls)

    async def one(i: int, folder: Path, args: tuple[str, ...], journal: bool) -> None:
        results[i] = await _realtimed(folder, *args, journal=journal)

    async with trio.open_nursery() as nursery:
        for i, (folder, args, journal) in enumerate(calls):
            nursery.start_soon(one, i, folder, args, journal)
    return [r for r in results if r is not None]


async def test_start_failures_are_one_line_with_the_journal_priority(tmp_path: Path, postgres_server: PostgresServer) -> None:
    host, port = postgres_server.host, postgres_server.port
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy_port = holder.getsockname()[1]
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = make_cert(tmp_path / "a")
    _, other_key = make_cert(tmp_path / "b")  # a key of another certificate
    (tmp_path / "not-a-folder").write_text("a file where the state folder should be")

    def pg(name: str, dsn: str) -> Path:
        return _config(tmp_path, name, {"store": {"backend": "postgres", "postgres_dsn": dsn, "connect_timeout_s": 2.0}})

    wrong_db = pg("wrongdb", f"postgresql://{postgres_server.user}:{SECRET}@{host}:{port}/realtimed_no_such_db")
    wrong_role = pg("wrongrole", f"postgresql://no_such_role_x:{SECRET}@{host}:{port}/postgres")
    unreachable = pg("unreachable", f"postgresql://app:{SECRET}@127.0.0.1:{closed_port}/realtimed")
    in_use = _config(tmp_path, "inuse", {"http": {"listen": f"127.0.0.1:{busy_port}"}})
    no_folder = _config(tmp_path, "nofolder", {"store": {"sqlite_path": str(tmp_path / "not-a-folder" / "x.db")}})
    tls = _config(tmp_path, "tls", {"http": {"listen": "127.0.0.1:0", "tls_cert_file": str(cert), "tls_key_file": str(other_key)}})
    try:
        with trio.fail_after(90):
            results = await _all(
                (tmp_path, ("migrate", "-c", str(wrong_db)), True),
                (tmp_path, ("run", "-c", str(wrong_role)), True),
                (tmp_path, ("run", "-c", str(in_use)), True),
                (tmp_path, ("migrate", "-c", str(no_folder)), True),
                (tmp_path, ("run", "-c", str(tls)), True),
                (tmp_path, ("migrate", "-c", str(unreachable)), False),
                (tmp_path, ("run", "-c", str(tmp_path / "missing.toml")), True),
            )
    finally:
        holder.close()
    expected = [
        ("migration failed: PostgreSQL at", f"{host}:{port}/realtimed_no_such_db", "does not exist", "createdb"),
        ("cannot run: PostgreSQL at", "role 'no_such_role_x'", "createuser", "store.postgres_dsn"),
        ("cannot run: cannot listen on", f"127.0.0.1:{busy_port} (http.listen)", "in use", "change http.listen"),
        ("migration failed: cannot open the SQLite store", "not-a-folder", "server.state_dir"),
        ("cannot run: cannot load the TLS certificate", "matching PEM key", "http.tls_key_file"),
        ("migration failed: PostgreSQL at", f"127.0.0.1:{closed_port}/realtimed is unreachable", "start the server"),
    ]
    status, lines = results.pop()
    # A configuration that does not load lists every problem (exit 2), each line an error for the journal.
    assert status == 2 and lines == [
        "<3>realtimed: invalid configuration (1 problem(s)):",
        f"<3>  (file): cannot read {tmp_path / 'missing.toml'}: No such file or directory",
    ]
    for (status, lines), words in zip(results, expected, strict=True):
        text = "\n".join(lines)
        assert status == 1, text
        assert "Traceback" not in text and "ExceptionGroup" not in text and "sub-exception" not in text, text
        assert SECRET not in text
        fatal = _fatal_lines(lines)
        assert len(fatal) == 1, text
        for word in words:
            assert word in fatal[0], (word, fatal[0])
    for _, lines in results[:-1]:
        assert _fatal_lines(lines)[0].startswith("<3>realtimed: ")
    # JOURNAL_STREAM naming some other file: stderr is not the journal, so no prefix.
    assert _fatal_lines(results[-1][1])[0].startswith("realtimed: migration failed: ")


async def test_an_unknown_failure_is_one_line_and_its_traceback_is_debug(tmp_path: Path) -> None:
    from realtimed import cli

    try:
        try:
            raise KeyError("surprise")
        except KeyError as exc:
            raise BaseExceptionGroup("Exceptions from Trio nursery", [exc]) from None
    except BaseExceptionGroup as group:
        caught = group
    assert cli._fatal_reason(caught) is None
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = _Keep(level=logging.DEBUG)
    logger = logging.getLogger("realtimed.cli")
    logger.addHandler(keep)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            cli._report_fatal("cannot run", caught)
    finally:
        logger.removeHandler(keep)
        logger.setLevel(old)
    assert err.getvalue().count("\n") == 1
    assert "unexpected KeyError: 'surprise'" in err.getvalue()
    assert "Trio nursery" not in err.getvalue()
    assert [r.levelno for r in records] == [logging.DEBUG] and records[0].exc_info is not None


def test_addresses_never_show_the_password() -> None:
    assert describe_postgres_dsn(f"postgresql://app:{SECRET}@db1:6432,db2/rt") == ("db1:6432,db2:5432/rt", "app", "rt")
    assert describe_postgres_dsn(f"postgresql://app:{SECRET}@[::1]/rt")[0] == "[::1]:5432/rt"
    from realtimed.redis_url import redis_address

    assert redis_address(f"redis://:{SECRET}@cache:6380/0") == "cache:6380"
    assert SECRET not in redis_address(f"redis+sentinel://:{SECRET}@s1:26379,s2/main/0")


def test_a_task_group_is_described_by_what_failed_inside_it() -> None:
    group = BaseExceptionGroup("Exceptions from Trio nursery", [ConnectionError("Connection lost while waiting")])
    assert describe_link_error(group) == "Connection lost while waiting"
    assert describe_link_error(trio.TooSlowError()) == "no answer in time (broker.timeout_s)"


def test_a_repeated_failure_is_logged_once_then_at_a_backoff_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("realtimed.test_repeated")
    repeated = logs.Repeated(logger, first_interval_s=10, max_interval_s=40)
    with caplog.at_level(logging.INFO, logger="realtimed.test_repeated"):
        for second in range(100):  # one failure a second
            repeated.failed(float(second), "Redis down: %s", "refused")
        repeated.recovered(100.0, "Redis back")
    lines = [r.getMessage() for r in caplog.records]
    # At 0, 10, 30 (then every 40 s: 70): four lines for a hundred failures, then one when it is back.
    assert lines[0] == "Redis down: refused"
    assert lines[1].startswith("Redis down: refused (10 failures in 10 s, 11 in all")
    assert lines[2].startswith("Redis down: refused (20 failures in 20 s, 31 in all")
    assert lines[3].startswith("Redis down: refused (40 failures in 40 s, 71 in all")
    assert lines[4] == "Redis back (after 100 failures)"
    assert len(lines) == 5


@pytest.fixture
def outage_clock() -> trio.testing.MockClock:
    # Large enough that Redis answering over the loopback does not jump the clock.
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_a_lost_redis_is_said_once_then_at_a_backoff(
    caplog: pytest.LogCaptureFixture, outage_clock: trio.testing.MockClock
) -> None:
    server = await trio.to_thread.run_sync(RedisServer.create)
    caplog.set_level(logging.INFO, logger="realtimed.broker.redis")
    try:
        broker = RedisBroker("n1", BrokerConfig(backend="redis", redis_url=server.url, timeout_s=1.0))
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                await nursery.start(broker.run)
                while not broker.connected:
                    await trio.sleep(0.01)
                await trio.to_thread.run_sync(server.destroy)
                await trio.sleep(75)  # on the MockClock: the broker retries every few seconds meanwhile
                nursery.cancel_scope.cancel()
    finally:
        server.destroy()
    lines = [r.getMessage() for r in caplog.records if r.name == "realtimed.broker.redis" and r.levelno >= logging.WARNING]
    assert lines, "the outage was not logged"
    assert f"Redis at 127.0.0.1:{server.port} is unreachable" in lines[0]
    assert "fix broker.redis_url" in lines[0]
    assert "failures in" not in lines[0]
    # Once, then at 10 s, 30 s, 70 s at most: a handful of lines for many attempts, each with its count.
    assert 2 <= len(lines) <= 5, lines
    assert all("failures in" in line for line in lines[1:])
    assert not any("Trio nursery" in line or "NoneType" in line for line in lines)
