"""The embedded store: one SQLite file in WAL mode.

``SQLiteStore`` is one class per domain of the ``Store`` Protocol (``chat``,
``users``, ``bans``, ``inbox``, ``devices``, ``jobs``, ``retention``), each
the rules of ``realtimed.store`` over its SQL, on one engine (``engine``): a
single writer task that groups commits, and a pool of readers. See
``engine`` for the design, the resource handling and the error handling.
"""

from __future__ import annotations

from realtimed.store.sqlite.bans import SQLiteBans
from realtimed.store.sqlite.chat import SQLiteChat
from realtimed.store.sqlite.deliveries import SQLiteDeliveryLog
from realtimed.store.sqlite.devices import SQLiteDevices
from realtimed.store.sqlite.emails import SQLiteEmails
from realtimed.store.sqlite.feeds import SQLiteFeeds
from realtimed.store.sqlite.inbox import SQLiteInbox
from realtimed.store.sqlite.jobs import SQLiteJobs
from realtimed.store.sqlite.recovery import SQLiteRecovery
from realtimed.store.sqlite.retention import SQLiteRetention
from realtimed.store.sqlite.users import SQLiteUsers
from realtimed.store.sqlite.webhooks import SQLiteWebhooks

__all__ = ["SQLiteStore"]


class SQLiteStore(
    SQLiteChat, SQLiteUsers, SQLiteBans, SQLiteInbox, SQLiteDevices, SQLiteJobs, SQLiteRetention,
    SQLiteWebhooks,
    SQLiteFeeds,
    SQLiteRecovery,
    SQLiteEmails,
    SQLiteDeliveryLog,
):
    """The embedded store.

    Args:
        path: the database file; its folder is created if missing.
        config: ``store`` settings (batch size, readers, apply_migrations).
        clock: wall time, only for the ``applied_at`` of migrations.
    """
