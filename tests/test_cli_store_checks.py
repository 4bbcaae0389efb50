"""What the commands check before they start anything: the PostgreSQL DSN as asyncpg
reads it (check-config, run), the files run loads at start (check-config), and no
SQLite database made by mistake (jobs, migrate).

The commands run as subprocesses in a folder of their own, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import trio

from realtimed.config import ConfigError, load_config
from tests.test_tls import make_cert

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-pa@ss:wd"


async def realtimed(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIMED__", "PG"))}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "realtimed", *args]
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=30, env=env)
    )


async def all_of(cwd: Path, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands at once (each is a Python start-up), in order of the results."""
    results: list[subprocess.CompletedProcess[str] | None] = [None] * len(commands)

    async def one(i: int, args: tuple[str, ...]) -> None:
        results[i] = await realtimed(cwd, *args)

    async with trio.open_nursery() as nursery:
        for i, args in enumerate(commands):
            nursery.start_soon(one, i, args)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------
# The DSN
# ---------------------------------------------------------------------------

BAD_DSNS = [
    "mysql://app@db.internal/realtimed",  # not PostgreSQL
    "postgresql://app:secret-pw@db.internal:54x2/realtimed",  # port not a number
    f"postgresql://app:{PASSWORD}@db.internal/realtimed",  # an @ and a : left in the password
    "postgresql://db1.internal,/realtimed",  # an empty host in the list
    "postgresql://app:secret-pw@db.internal/realtimed?sslmode=always",
    "postgresql://app:secret-pw@db.internal/realtimed?sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
    "postgresql://app:secret-pw@db.internal/realtimed?connect_timeout&x",  # an option without a value
    "postgresql://app:secret-pw@[::1/realtimed",  # an unclosed IPv6 address
]


def _problems(dsn: str, backend: str = "postgres") -> dict[str, str]:
    try:
        load_config(None, env={}, data={"store": {"backend": backend, "postgres_dsn": dsn}})
    except ConfigError as exc:
        return dict(exc.problems)
    return {}


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_a_dsn_asyncpg_refuses_is_a_config_error_without_the_password(dsn: str) -> None:
    problems = _problems(dsn)
    assert list(problems) == ["store.postgres_dsn"]
    message = problems["store.postgres_dsn"]
    assert message.startswith("not a PostgreSQL URL asyncpg can use: ")
    for secret in ("secret-pw", PASSWORD, "pa@ss", "ss:wd"):
        assert secret not in message
    # What the store would meet when it connects: asyncpg refuses it before any connection.
    with pytest.raises(Exception) as refused:
        asyncio.run(asyncio.wait_for(asyncpg.connect(dsn, timeout=2), 5))
    assert not isinstance(refused.value, (ConnectionError, TimeoutError))


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/realtimed",
        "postgres://app:p%40ss@db1.internal:5432,db2.internal:5433/realtimed?sslmode=require&application_name=x",
        "postgresql:///realtimed?host=/run/postgresql",
    ],
)
def test_a_dsn_asyncpg_reads_is_accepted(dsn: str) -> None:
    assert _problems(dsn) == {}


def test_the_dsn_is_not_checked_while_sqlite_is_the_store() -> None:
    assert _problems("mysql://unused", backend="sqlite") == {}


async def test_check_config_and_run_refuse_what_the_store_would_refuse(tmp_path: Path) -> None:
    with trio.fail_after(60):
        config = tmp_path / "realtimed.toml"
        config.write_text(
            '[http]\nlisten = "127.0.0.1:0"\n'
            f'[store]\nbackend = "postgres"\npostgres_dsn = "postgresql://app:{PASSWORD}@db.internal/realtimed"\n'
            '[[cron]]\nname = "report"\nschedule = "0 6 * * *"\nkind = "reports.daily"\n'
            '[[cron]]\nname = "retention.jobs"\nschedule = "0 4 * * *"\nkind = "retention.jobs"\npayload = {days = -3}\n'
        )
        checked, ran = await all_of(tmp_path, ("check-config", str(config)), ("run", "-c", str(config)))
        for result in (checked, ran):
            assert result.returncode == 2, result.stderr
            assert "Traceback" not in result.stderr and PASSWORD not in result.stderr + result.stdout
            lines = result.stderr.splitlines()
            assert lines[0] == "realtimed: invalid configuration (3 problem(s)):"
            assert [line.split(": ", 1)[0].strip() for line in lines[1:]] == [
                "store.postgres_dsn",
                "cron[0].kind",
                "cron[1].payload.days",
            ]
        assert checked.stdout == ""


async def test_check_config_loads_the_files_run_loads_at_start(tmp_path: Path) -> None:
    with trio.fail_after(60):
        cert, key = make_cert(tmp_path)
        (tmp_path / "garbage.pem").write_text("not a key\n")
        (tmp_path / "fcm.json").write_text('{"type": "service_account", "client_email": "a@b", "private_key": "k"}')
        good = f"""[http]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n
[push]\nservice_account_file = "{tmp_path / 'fcm.json'}"\nca_file = "{cert}"\n"""
        bad = f"""[http]\ntls_cert_file = "{tmp_path / 'garbage.pem'}"\ntls_key_file = "{key}"\n
[auth]\nalgorithms = ["RS256"]\npublic_key_files = ["garbage.pem"]\n
[push]\nservice_account_file = "{tmp_path / 'missing.json'}"\n"""
        bad_ca = f"""[push]\nservice_account_file = "{tmp_path / 'fcm.json'}"\nca_file = "{tmp_path / 'garbage.pem'}"\n
[webhooks]\nca_file = "{tmp_path / 'garbage.pem'}"\n[jobs.http]\nca_file = "{tmp_path / 'garbage.pem'}"\n"""
        for name, text in (("good.toml", good), ("bad.toml", bad), ("bad_ca.toml", bad_ca)):
            (tmp_path / name).write_text(text)
        accepted, refused, refused_ca = await all_of(
            tmp_path, *(("check-config", str(tmp_path / name)) for name in ("good.toml", "bad.toml", "bad_ca.toml"))
        )
        assert accepted.returncode == 0, accepted.stderr
        assert refused.returncode == 2 and refused.stdout == ""
        lines = refused.stderr.splitlines()
        assert lines[0] == "realtimed: configuration that run would refuse at start (3 problem(s)):"
        assert [line.split(": ", 1)[0].strip() for line in lines[1:]] == [
            "auth.public_key_files[0]",
            "http.tls_cert_file",
            "push.service_account_file",
        ]
        assert refused_ca.returncode == 2 and "  push.ca_file: cannot load CA certificates" in refused_ca.stderr
        for key in ("webhooks.ca_file", "jobs.http.ca_file"):
            assert f"  {key}: cannot load CA certificates" in refused_ca.stderr


# ---------------------------------------------------------------------------
# No database made by mistake
# ---------------------------------------------------------------------------


async def test_jobs_and_migrate_without_a_configuration_create_nothing(tmp_path: Path) -> None:
    with trio.fail_after(60):
        results = await all_of(tmp_path, ("jobs", "list"), ("jobs", "cancel", "j_1"), ("migrate",))
        for result in results:
            assert result.returncode == 2, result.stderr
            [line] = result.stderr.splitlines()
            assert "no configuration file and no database at ./state/realtimed.db: pass -c FILE" in line
            assert result.stdout == ""
        assert os.listdir(tmp_path) == []


async def test_jobs_never_create_a_database_and_migrate_with_a_configuration_does(tmp_path: Path) -> None:
    with trio.fail_after(60):
        (tmp_path / "realtimed.toml").write_text('[server]\nstate_dir = "data"\n')
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        config = str(tmp_path / "realtimed.toml")
        listed, retried = await all_of(elsewhere, ("jobs", "list", "-c", config), ("jobs", "retry", "j_1", "-c", config))
        for result in (listed, retried):
            assert result.returncode == 1, result.stderr
            [line] = result.stderr.splitlines()
            assert line.startswith(f"realtimed jobs: no database at {tmp_path / 'data' / 'realtimed.db'} ")
        assert not (tmp_path / "data").exists() and os.listdir(elsewhere) == []
        # In the folder of realtimed.toml, without -c, migrate creates the database; then jobs find it.
        migrated = await realtimed(tmp_path, "migrate")
        assert migrated.returncode == 0 and "applied" in migrated.stdout, migrated.stderr
        listed = await realtimed(tmp_path, "jobs", "list", "--json")
        assert listed.returncode == 0 and '"jobs": []' in listed.stdout, listed.stderr
