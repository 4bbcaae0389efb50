"""The Store: everything a user would miss if it were lost.

``Store`` is the Protocol every backend implements (``sqlite``, the embedded
default, and ``postgres``), composed of one small Protocol per domain, each in
its own module with its records and its rules:

====================  ==============================================  ====================
Protocol              what                                            module
====================  ==============================================  ====================
``ChatStore``         conversations, members, messages, read cursors  ``store.chat``
``UserStore``         contacts, blocks, last-seen times               ``store.users``
``BanStore``          bans                                            ``store.bans``
``InboxStore``        notifications, preferences, quiet hours         ``store.inbox``
``DeviceStore``       push tokens and topics                          ``store.devices``
``JobStore``          jobs and cron ticks                             ``store.jobs``
``RetentionStore``    retention deletes                               ``store.retention``
``WebhookStore``      webhook endpoints, delivery attempts            ``store.webhooks``
``RecoveryStore``     Socket.IO connection state recovery records     ``store.recovery``
``DeliveryLogStore``  the outcome of each notification per channel    ``store.deliveries``
``EmailStore``        users' email addresses, bounces                 ``store.emails``
``FeedStore``         activities, their feeds, search and stats       ``store.feeds``
====================  ==============================================  ====================

A service may ask for the one it needs. Each record has a ``to_wire()`` giving
the JSON object of docs/protocol.md section 7; they are re-exported here.

Times are timezone-aware UTC ``datetime`` values, always handed in by the caller
(``now=`` arguments) or taken from the injected ``WallClock``: a store never asks
the database or the machine for the time, so tests can drive it.
"""

from __future__ import annotations

from typing import Protocol

import trio

from realtimed.store.bans import BanRecord, BanStore
from realtimed.store.chat import (
    ROLE_MEMBER,
    ROLE_OWNER,
    ChatStore,
    ConversationRecord,
    ConversationType,
    MemberRecord,
    MessagePage,
    MessageRecord,
    ReadState,
)
from realtimed.store.deliveries import DeliveryCount, DeliveryEntry, DeliveryFilter, DeliveryLogStore
from realtimed.store.devices import PLATFORMS, DeviceRecord, DeviceStore
from realtimed.store.emails import EmailAddressRecord, EmailStore
from realtimed.store.feeds import ActivityQuery, ActivityRecord, FeedItem, FeedStore, NewActivity
from realtimed.store.inbox import (
    InboxStore,
    NewNotification,
    NotificationPreference,
    NotificationRecord,
    UserSettings,
)
from realtimed.store.jobs import FINISHED_JOB_STATUSES, JOB_STATUSES, JobRecord, JobSpec, JobStatus, JobStore
from realtimed.store.recovery import RecoveryStore
from realtimed.store.retention import RetentionStore
from realtimed.store.schema import SchemaVersionError
from realtimed.store.users import UserStore
from realtimed.store.webhooks import WebhookAttempt, WebhookEndpoint, WebhookStore

__all__ = [
    "FINISHED_JOB_STATUSES",
    "JOB_STATUSES",
    "PLATFORMS",
    "ROLE_MEMBER",
    "ROLE_OWNER",
    "ActivityQuery",
    "ActivityRecord",
    "BanRecord",
    "BanStore",
    "ChatStore",
    "ConversationRecord",
    "ConversationType",
    "DeliveryCount",
    "DeliveryEntry",
    "DeliveryFilter",
    "DeliveryLogStore",
    "DeviceRecord",
    "DeviceStore",
    "EmailAddressRecord",
    "EmailStore",
    "FeedItem",
    "FeedStore",
    "InboxStore",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "JobStore",
    "MemberRecord",
    "MessagePage",
    "MessageRecord",
    "NewActivity",
    "NewNotification",
    "NotificationPreference",
    "NotificationRecord",
    "ReadState",
    "RecoveryStore",
    "RetentionStore",
    "SchemaVersionError",
    "Store",
    "UserSettings",
    "UserStore",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WebhookStore",
]


class Store(
    ChatStore, UserStore, BanStore, InboxStore, DeviceStore, JobStore, RetentionStore, WebhookStore, RecoveryStore,
    DeliveryLogStore, EmailStore, FeedStore, Protocol,
):
    """Durable state: conversations, messages, read cursors, notifications,
    preferences, devices, contacts and blocks, bans, jobs.

    Atomicity: every method is one transaction. It either happens completely
    or not at all, and when it returns its effect is durable (committed to
    disk: an SQLite ``synchronous=FULL`` WAL commit, a PostgreSQL commit).
    A caller cancelled while waiting does not know whether a write happened;
    writes that may be retried are idempotent (``append_message`` on
    ``client_id``, ``insert_notifications`` and ``enqueue_job`` on their dedupe keys).

    Ordering: each conversation's messages and each user's notifications get a
    gap-free, strictly increasing ``seq`` (1, 2, 3, ...) in commit order, even
    under concurrent writers; a failed write takes no ``seq``. A conversation's
    ``version`` rises by one with each append, edit and delete. Read cursors
    only move forward.

    Expiry: nothing expires by itself except job leases: a ``running`` job
    whose ``lease_expires_at`` has passed is claimable again, and bans: one
    whose ``until`` has passed is no longer in force (``active_ban``). Retention deletes
    (``delete_read_notifications`` and the others) are explicit calls.

    Errors: a backend that cannot be reached raises ``Unavailable``, quickly
    (bounded by the store's connect and statement timeouts); the next call
    after it comes back succeeds with no restart. ``NotFound``, ``Forbidden``,
    ``Conflict`` and ``ValidationFailed`` carry the meanings given per method.
    """

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open connections, apply pending migrations, report started; close on cancel.

        Raises:
            SchemaVersionError: the schema is newer than this realtimed, or
                migrations are pending and ``store.apply_migrations`` is off.
            Unavailable: the database cannot be reached at start.
        """
        ...

    async def ping(self) -> None:
        """Answer if the database answers; raises ``Unavailable`` otherwise."""
        ...

    async def migrate(self) -> list[str]:
        """Apply pending migrations without starting the store; returns their names.

        Raises:
            SchemaVersionError: the schema is newer than this realtimed.
        """
        ...
