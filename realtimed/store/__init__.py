"""The store: durable state behind chat, notifications, push and jobs.

``open_store`` builds the configured backend; the caller runs it as a service
(``await nursery.start(store.run)``). ``run_migrations`` applies pending schema
migrations without starting the store (the ``realtimed migrate`` command).

A PostgreSQL store runs asyncpg on an asyncio loop in a thread of its own,
which it starts and joins itself: nothing is needed around it.
"""

from __future__ import annotations

from realtimed.clock import SystemClock, WallClock
from realtimed.config import Config
from realtimed.store.base import SchemaVersionError, Store

__all__ = ["SchemaVersionError", "Store", "open_store", "run_migrations"]


def open_store(cfg: Config, *, clock: WallClock) -> Store:
    """The store ``cfg.store.backend`` names (not yet running)."""
    if cfg.store.backend == "postgres":
        from realtimed.store.postgres import PostgresStore

        return PostgresStore(cfg.store, clock=clock)
    from realtimed.store.sqlite import SQLiteStore

    return SQLiteStore(cfg.state_dir / cfg.store.sqlite_path, config=cfg.store, clock=clock)


async def run_migrations(cfg: Config) -> list[str]:
    """Apply pending migrations to the configured database; returns the names applied.

    Raises:
        SchemaVersionError: the database schema is newer than this realtimed.
        Unavailable: the database cannot be reached.
    """
    if cfg.store.backend == "postgres":
        from realtimed.store.postgres import PostgresStore

        return await PostgresStore(cfg.store, clock=SystemClock()).migrate()
    from realtimed.store.sqlite import SQLiteStore

    return await SQLiteStore(
        cfg.state_dir / cfg.store.sqlite_path, config=cfg.store, clock=SystemClock()
    ).migrate()
