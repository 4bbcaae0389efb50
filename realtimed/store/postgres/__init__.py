"""The PostgreSQL store: asyncpg on an asyncio loop in a thread of its own.

``PostgresStore`` is one class per domain of the ``Store`` Protocol (``chat``,
``users``, ``bans``, ``inbox``, ``devices``, ``jobs``, ``retention``), each
the rules of ``realtimed.store`` over its SQL, on one engine (``engine``): the
Trio/asyncio bridge, the pool, migrations and job wake-ups through
LISTEN/NOTIFY. See ``engine`` for the design, the resource handling and the
error handling, and ``chat`` for the grouped appends.
"""

from __future__ import annotations

from realtimed.store.postgres.bans import PostgresBans
from realtimed.store.postgres.chat import PostgresChat
from realtimed.store.postgres.deliveries import PostgresDeliveryLog
from realtimed.store.postgres.devices import PostgresDevices
from realtimed.store.postgres.emails import PostgresEmails
from realtimed.store.postgres.engine import JOBS_CHANNEL, migrate_connection
from realtimed.store.postgres.feeds import PostgresFeeds
from realtimed.store.postgres.inbox import PostgresInbox
from realtimed.store.postgres.jobs import PostgresJobs
from realtimed.store.postgres.recovery import PostgresRecovery
from realtimed.store.postgres.retention import PostgresRetention
from realtimed.store.postgres.users import PostgresUsers
from realtimed.store.postgres.webhooks import PostgresWebhooks

__all__ = ["JOBS_CHANNEL", "PostgresStore", "migrate_connection"]


class PostgresStore(
    PostgresChat, PostgresUsers, PostgresBans, PostgresInbox, PostgresDevices, PostgresJobs, PostgresRetention,
    PostgresWebhooks,
    PostgresFeeds,
    PostgresRecovery,
    PostgresEmails,
    PostgresDeliveryLog,
):
    """The PostgreSQL store.

    Args:
        config: ``store`` settings: DSN, pool size, timeouts, apply_migrations.
        clock: wall time, only for the ``applied_at`` of migrations.
        dsn: overrides ``config.postgres_dsn``.
    """
