"""One conformance suite for every Store backend: SQLite (a file in tmp_path) and
PostgreSQL (a fresh database on the real server)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio

from realtimed.clock import SystemClock
from realtimed.config import Config, ServerConfig, StoreConfig
from realtimed.errors import Conflict, Forbidden, NotFound, ValidationFailed
from realtimed.store import SchemaVersionError, Store, open_store, run_migrations
from realtimed.store.base import (
    DeliveryEntry,
    DeliveryFilter,
    JobSpec,
    NewNotification,
    WebhookAttempt,
    WebhookEndpoint,
)
from realtimed.store.feeds import ActivityQuery, NewActivity
from realtimed.store.schema import load_migrations
from tests.fixtures.services import _run_sql

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
# Every backend has the same numbered migrations, in order.
MIGRATIONS = ["0001_initial", "0002_bans", "0003_channel_preferences", "0004_mark_read_function", "0005_socketio_recovery", "0006_webhooks", "0007_email", "0008_notification_rules", "0009_activities", "0010_delivery_log"]
LIMIT_S = 20


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@attrs.define
class Harness:
    """Builds and runs stores of one backend against one database."""

    backend: str
    state_dir: Path
    dsn: str = ""

    def config(self, **store: Any) -> Config:
        base = StoreConfig(backend=self.backend, postgres_dsn=self.dsn, sqlite_path="store.db")  # type: ignore[arg-type]
        return Config(server=ServerConfig(state_dir=self.state_dir), store=attrs.evolve(base, **store))

    def make(self, **store: Any) -> Store:
        return open_store(self.config(**store), clock=SystemClock())

    @asynccontextmanager
    async def running(self, **store: Any) -> AsyncIterator[Store]:
        async with trio.open_nursery() as nursery:
            s = self.make(**store)
            with trio.fail_after(LIMIT_S):
                await nursery.start(s.run)
            yield s
            nursery.cancel_scope.cancel()

    async def migrate(self) -> list[str]:
        return await run_migrations(self.config())

    async def column(self, query: str) -> list[Any]:
        """The first column of a query's rows, read outside the store."""
        if self.backend == "postgres":
            results = await trio.to_thread.run_sync(_run_sql, self.dsn, query)
            return [row[0] for row in results[0]]

        def run() -> list[Any]:
            conn = sqlite3.connect(self.state_dir / "store.db")
            try:
                return [row[0] for row in conn.execute(query)]
            finally:
                conn.close()

        return await trio.to_thread.run_sync(run)

    async def sql(self, statement: str) -> None:
        """Run one statement on the database, outside the store."""
        if self.backend == "postgres":
            await trio.to_thread.run_sync(_run_sql, self.dsn, statement)
        else:

            def run() -> None:
                conn = sqlite3.connect(self.state_dir / "store.db")
                with conn:
                    conn.execute(statement)
                conn.close()

            await trio.to_thread.run_sync(run)


@pytest.fixture(params=["sqlite", "postgres"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "postgres":
        return Harness("postgres", tmp_path, request.getfixturevalue("pg_dsn"))
    return Harness("sqlite", tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "postgres":
        return Harness("postgres", tmp_path, request.getfixturevalue("pg_empty_dsn"))
    return Harness("sqlite", tmp_path)


@pytest.fixture
async def store(harness: Harness) -> AsyncIterator[Store]:
    async with harness.running() as s:
        yield s


async def group(store: Store, *members: str, title: str | None = "g") -> str:
    conv = await store.create_group(member_ids=list(members), now=T0, title=title)
    return conv.id


async def send(store: Store, cid: str, sender: str, n: int, *, start: float = 1) -> list[int]:
    seqs = []
    for i in range(n):
        msg, created = await store.append_message(
            conversation_id=cid, sender_id=sender, client_id=f"{sender}-{start + i}", body=f"m{i}", now=at(start + i)
        )
        assert created
        seqs.append(msg.seq)
    return seqs


# ---------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------


async def test_direct_conversation_is_found_or_created_on_the_pair(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        conv, created = await store.open_direct(user_id="alice", other_id="bob", now=T0)
        assert created and conv.type == "direct" and sorted(conv.member_ids) == ["alice", "bob"]
        again, created_again = await store.open_direct(user_id="bob", other_id="alice", now=at(5))
        assert again.id == conv.id and not created_again
        wire = conv.to_wire(for_user="alice")
        assert wire["type"] == "direct" and wire["unread_count"] == 0 and wire["read_seq"] == 0
        assert wire["muted"] is False and wire["last_message"] is None and wire["updated_at"].endswith("Z")
        assert "unread_count" not in conv.to_wire()
        with pytest.raises(Conflict):
            await store.add_members(conversation_id=conv.id, user_ids=["carol"], now=T0)
        with pytest.raises(Conflict):
            await store.set_title(conversation_id=conv.id, title="x", now=T0)


async def test_concurrent_opens_of_one_pair_make_one_conversation(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        ids: list[str] = []

        async def one(i: int) -> None:
            a, b = ("u1", "u2") if i % 2 else ("u2", "u1")
            conv, _ = await store.open_direct(user_id=a, other_id=b, now=T0)
            ids.append(conv.id)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
        assert len(set(ids)) == 1


async def test_group_members_title_mute_and_leave(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        conv = await store.create_group(member_ids=["b", "c"], owner_id="a", title="team", now=T0)
        assert [(m.user_id, m.role) for m in conv.members] == [("a", "owner"), ("b", "member"), ("c", "member")]
        assert conv.title == "team" and conv.last_seq == 0
        renamed = await store.set_title(conversation_id=conv.id, title="crew", now=at(1))
        assert renamed.title == "crew" and renamed.updated_at == at(1)
        await send(store, conv.id, "a", 2)
        grown = await store.add_members(conversation_id=conv.id, user_ids=["d", "b"], now=at(10))
        d = grown.member("d")
        assert d is not None and d.read_seq == 2 and d.unread_count == 0  # joins with everything read
        member = await store.set_muted(conversation_id=conv.id, user_id="b", muted=True)
        assert member.muted
        left = await store.leave_conversation(conversation_id=conv.id, user_id="c", now=at(11))
        assert "c" not in left.member_ids
        gone = await store.get_member(conv.id, "c")
        assert gone is not None and gone.left_at == at(11)
        with pytest.raises(NotFound):
            await store.leave_conversation(conversation_id=conv.id, user_id="c", now=at(12))
        with pytest.raises(NotFound):
            await store.set_muted(conversation_id=conv.id, user_id="c", muted=True)
        with pytest.raises(Forbidden):
            await store.append_message(conversation_id=conv.id, sender_id="c", client_id="x", body="hi", now=at(13))
        back = await store.add_members(conversation_id=conv.id, user_ids=["c"], now=at(14))
        assert "c" in back.member_ids
        assert await store.get_conversation("nope") is None
        with pytest.raises(NotFound):
            await store.add_members(conversation_id="nope", user_ids=["x"], now=T0)


async def test_list_conversations_newest_activity_first_by_cursor(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        ids = []
        for i in range(5):
            ids.append(await group(store, "me", f"other{i}", title=f"g{i}"))
        # Activity: a message in the second-created moves it to the top.
        await store.append_message(conversation_id=ids[1], sender_id="other1", client_id="k", body="hi", now=at(60))
        page1, cursor = await store.list_conversations(user_id="me", limit=2)
        assert page1[0].id == ids[1]
        assert cursor is not None
        seen = [c.id for c in page1]
        while cursor is not None:
            page, cursor = await store.list_conversations(user_id="me", cursor=cursor, limit=2)
            seen += [c.id for c in page]
        assert sorted(seen) == sorted(ids) and len(seen) == 5
        top = page1[0]
        assert top.last_message is not None and top.last_message.body == "hi"
        assert top.to_wire(for_user="me")["unread_count"] == 1
        with pytest.raises(ValidationFailed):
            await store.list_conversations(user_id="me", cursor="garbage!")


async def test_contacts_and_blocks(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        await store.set_contacts(user_id="a", contact_ids=["b", "c", "a"])
        assert await store.is_contact("a", "b") and await store.is_contact("b", "a")
        assert not await store.is_contact("b", "c")
        await store.set_contacts(user_id="a", contact_ids=["c"])
        assert not await store.is_contact("a", "b")
        await group(store, "b", "d")
        assert await store.is_contact("d", "b")  # shares a conversation
        assert await store.contact_ids("b") == {"d"}
        assert await store.contact_ids("a") == {"c"}
        assert await store.contact_ids("c") == {"a"}
        assert await store.block_user(user_id="a", blocked_id="b", now=T0)
        assert not await store.block_user(user_id="a", blocked_id="b", now=T0)
        assert await store.is_blocked(user_id="b", by="a")
        assert not await store.is_blocked(user_id="a", by="b")
        assert await store.blocked_ids("a") == {"b"}
        assert await store.unblock_user(user_id="a", blocked_id="b")
        assert not await store.unblock_user(user_id="a", blocked_id="b")
        assert not await store.is_blocked(user_id="b", by="a")


async def test_bans_expire_replace_and_lift(store: Store, harness: Harness) -> None:
    with trio.fail_after(LIMIT_S):
        assert await store.active_ban(user_id="a", now=T0) is None
        ban = await store.ban_user(user_id="a", until=at(60), now=T0)
        assert (ban.user_id, ban.until, ban.created_at) == ("a", at(60), T0)
        found = await store.active_ban(user_id="a", now=at(59))
        assert found is not None and found.until == at(60) and found.created_at == T0
        assert await store.active_ban(user_id="a", now=at(60)) is None  # ends at `until`
        assert await store.active_ban(user_id="b", now=at(1)) is None
        # A later ban replaces the earlier one, even a shorter one.
        await store.ban_user(user_id="a", until=at(10), now=at(1))
        found = await store.active_ban(user_id="a", now=at(5))
        assert found is not None and found.until == at(10) and found.created_at == at(1)
        assert await store.active_ban(user_id="a", now=at(30)) is None
        # No end: in force until lifted.
        await store.ban_user(user_id="b", until=None, now=T0)
        found = await store.active_ban(user_id="b", now=at(10**8))
        assert found is not None and found.until is None
        assert await store.unban_user(user_id="b", now=at(2))
        assert not await store.unban_user(user_id="b", now=at(2))
        assert await store.active_ban(user_id="b", now=at(2)) is None
        # Lifting a ban that has ended answers False.
        await store.ban_user(user_id="c", until=at(5), now=T0)
        assert not await store.unban_user(user_id="c", now=at(6))
        # A ban sweeps those that have ended: only bans in force stay.
        await store.ban_user(user_id="d", until=at(5), now=T0)
        await store.ban_user(user_id="e", until=at(100), now=at(50))
        assert await harness.column("SELECT user_id FROM bans ORDER BY user_id") == ["e"]
        assert await store.active_ban(user_id="e", now=at(50)) is not None


async def test_bans_survive_a_restart(harness: Harness) -> None:
    with trio.fail_after(LIMIT_S):
        async with harness.running() as s:
            await s.ban_user(user_id="a", until=at(3600), now=T0)
            await s.ban_user(user_id="b", until=None, now=T0)
        async with harness.running() as s:
            a = await s.active_ban(user_id="a", now=at(1))
            b = await s.active_ban(user_id="b", now=at(1))
            assert a is not None and a.until == at(3600)
            assert b is not None and b.until is None


async def test_email_addresses_set_read_bounce_and_delete(store: Store, harness: Harness) -> None:
    with trio.fail_after(LIMIT_S):
        assert await store.get_email_addresses([]) == {}
        a = await store.set_email_address(user_id="a", address="Ann@Example.com", verified=False, now=T0)
        assert (a.address, a.verified, a.bounced_at, a.updated_at, a.deliverable) == (
            "Ann@Example.com", False, None, T0, False,
        )
        await store.set_email_address(user_id="b", address="ann@example.COM", verified=True, now=T0)
        await store.set_email_address(user_id="c", address="carl@example.com", verified=True, now=T0)
        found = await store.get_email_addresses(["a", "b", "c", "nobody", "a"])
        assert sorted(found) == ["a", "b", "c"] and found["b"].deliverable
        # A bounce names the address in any case: every row holding it is marked, once.
        assert await store.mark_email_bounced(address="ANN@example.com", kind="bounce", reason="550 no such user", now=at(5)) == ["a", "b"]
        assert await store.mark_email_bounced(address="ann@example.com", kind="complaint", reason="spam", now=at(6)) == []
        b = (await store.get_email_addresses(["b"]))["b"]
        assert (b.bounced_at, b.bounce_kind, b.bounce_reason, b.deliverable) == (at(5), "bounce", "550 no such user", False)
        assert b.to_wire()["bounced_at"] is not None
        assert (await store.get_email_addresses(["c"]))["c"].deliverable
        # Setting the address again clears the bounce.
        b = await store.set_email_address(user_id="b", address="ann@example.com", verified=True, now=at(10))
        assert (b.bounced_at, b.bounce_kind, b.deliverable, b.updated_at) == (None, None, True, at(10))
        assert await store.delete_email_address(user_id="b")
        assert not await store.delete_email_address(user_id="b")
        assert sorted(await store.get_email_addresses(["a", "b", "c"])) == ["a", "c"]
        # Many users at once (beyond one SQL chunk).
        for i in range(3):
            await store.set_email_address(user_id=f"m{i}", address=f"m{i}@example.com", verified=True, now=T0)
        many = await store.get_email_addresses([f"m{i}" for i in range(1200)])
        assert sorted(many) == ["m0", "m1", "m2"]
        # The digest: off for a new address, replaced when given, kept when not.
        assert many["m0"].digest == "off"
        d = await store.set_email_address(user_id="m0", address="m0@example.com", verified=True, now=at(20), digest="daily")
        assert d.digest == "daily" and d.to_wire()["digest"] == "daily"
        d = await store.set_email_address(user_id="m0", address="new@example.com", verified=True, now=at(21))
        assert (d.digest, d.address) == ("daily", "new@example.com")
        d = await store.set_email_address(user_id="m9", address="m9@example.com", verified=True, now=at(21), digest="hourly")
        assert d.digest == "hourly"
        assert sorted(await harness.column("SELECT address_key FROM email_addresses WHERE user_id = 'a'")) == ["ann@example.com"]


async def test_recovery_records_are_taken_once_and_expire(store: Store, harness: Harness) -> None:
    with trio.fail_after(LIMIT_S):
        await store.put_recovery(pid="p1", user_id="a", record=b"\x00one", expires_at=at(60), now=T0)
        await store.put_recovery(pid="p2", user_id="b", record=b"two", expires_at=at(10), now=T0)
        assert await store.take_recovery(pid="nope", now=at(1)) is None
        assert await store.take_recovery(pid="p1", now=at(59)) == ("a", b"\x00one")
        assert await store.take_recovery(pid="p1", now=at(59)) is None  # once
        assert await store.take_recovery(pid="p2", now=at(10)) is None  # expired at expires_at
        # A put replaces the record under its pid, and sweeps the expired ones.
        await store.put_recovery(pid="p3", user_id="a", record=b"old", expires_at=at(5), now=T0)
        await store.put_recovery(pid="p4", user_id="a", record=b"x", expires_at=at(100), now=T0)
        await store.put_recovery(pid="p4", user_id="a", record=b"new", expires_at=at(100), now=at(6))
        assert await harness.column("SELECT pid FROM socketio_recovery ORDER BY pid") == ["p4"]
        assert await store.take_recovery(pid="p4", now=at(7)) == ("a", b"new")


async def test_recovery_records_survive_a_restart(harness: Harness) -> None:
    with trio.fail_after(LIMIT_S):
        async with harness.running() as s:
            await s.put_recovery(pid="p", user_id="a", record=b"r", expires_at=at(60), now=T0)
        async with harness.running() as s:
            assert await s.take_recovery(pid="p", now=at(1)) == ("a", b"r")


async def test_session_start_reads_ban_and_unread_counts_as_their_own_calls_do(store: Store) -> None:
    """``session_start`` answers what ``active_ban``, ``unread_total`` and
    ``notification_unread_count`` answer, in one call (a connect's one round trip)."""
    with trio.fail_after(LIMIT_S):
        fresh = await store.session_start(user_id="nobody", now=T0)
        assert (fresh.ban, fresh.unread_total, fresh.notifications_unread) == (None, 0, 0)
        cid = await group(store, "a", "c")
        muted = await group(store, "a", "c", title="muted")
        await send(store, cid, "a", 3)
        await send(store, muted, "a", 2, start=10)
        await store.set_muted(conversation_id=muted, user_id="c", muted=True)
        await store.insert_notifications(items=[note("c", 1), note("c", 2)], now=T0)
        await store.ban_user(user_id="c", until=at(60), now=T0)
        start = await store.session_start(user_id="c", now=at(59))
        assert start.ban is not None and (start.ban.user_id, start.ban.until, start.ban.created_at) == ("c", at(60), T0)
        assert (start.unread_total, start.notifications_unread) == (3, 2)
        assert start.unread_total == await store.unread_total("c")
        assert start.notifications_unread == await store.notification_unread_count("c")
        later = await store.session_start(user_id="c", now=at(60))  # the ban ends at `until`
        assert later.ban is None and (later.unread_total, later.notifications_unread) == (3, 2)
        await store.ban_user(user_id="a", until=None, now=T0)
        forever = await store.session_start(user_id="a", now=at(10**8))
        assert forever.ban is not None and forever.ban.until is None and forever.unread_total == 0


async def test_presence_audience_is_contacts_and_last_seen_in_one_call(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        await store.set_last_seen(user_id="a", at=at(5))
        assert await store.presence_audience("a") == (set(), None)  # no contacts: no last seen asked for
        await store.set_contacts(user_id="a", contact_ids=["b"])
        await group(store, "a", "c")
        assert await store.presence_audience("a") == ({"b", "c"}, at(5))
        assert await store.presence_audience("b") == ({"a"}, None)  # b was never seen


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


async def test_seq_is_gap_free_under_50_concurrent_appenders(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b")
        results = []

        async def one(i: int) -> None:
            msg, created = await store.append_message(
                conversation_id=cid, sender_id="a" if i % 2 else "b", client_id=f"k{i}", body=str(i), now=at(i)
            )
            assert created
            results.append(msg)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert sorted(m.seq for m in results) == list(range(1, 51))
        assert sorted(m.version for m in results) == list(range(1, 51))
        conv = await store.get_conversation(cid)
        assert conv is not None and conv.last_seq == 50 and conv.version == 50
        page = await store.message_history(conversation_id=cid, limit=100)
        assert [m.seq for m in page.messages] == list(range(1, 51)) and not page.has_more
        assert conv.last_message is not None and conv.last_message.seq == 50
        # Each member has the other's 25 messages unread, however the appends were grouped.
        assert [(m.user_id, m.unread_count) for m in conv.members] == [("a", 25), ("b", 25)]


async def test_one_message_for_20_concurrent_retries_and_conflict_for_another_body(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b")
        results = []

        async def one() -> None:
            results.append(
                await store.append_message(conversation_id=cid, sender_id="a", client_id="same", body="hi", now=T0)
            )

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        assert len({m.id for m, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        conv = await store.get_conversation(cid)
        assert conv is not None and conv.last_seq == 1 and conv.version == 1
        member = conv.member("b")
        assert member is not None and member.unread_count == 1
        with pytest.raises(Conflict):
            await store.append_message(conversation_id=cid, sender_id="a", client_id="same", body="other", now=T0)
        # Another sender may use the same client id.
        msg, created = await store.append_message(
            conversation_id=cid, sender_id="b", client_id="same", body="yo", now=T0
        )
        assert created and msg.seq == 2


async def test_failed_appends_take_no_seq_and_do_not_fail_their_neighbours(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a")
        errors: list[Exception] = []
        seqs: list[int] = []

        async def good(i: int) -> None:
            msg, _ = await store.append_message(conversation_id=cid, sender_id="a", client_id=f"g{i}", body="x", now=T0)
            seqs.append(msg.seq)

        async def bad(i: int) -> None:
            try:
                await store.append_message(
                    conversation_id=cid if i % 2 else "missing", sender_id="stranger", client_id=f"b{i}", body="x", now=T0
                )
            except (NotFound, Forbidden) as exc:
                errors.append(exc)

        async def broken(i: int) -> None:
            # A job payload that cannot be stored fails this append alone.
            try:
                await store.append_message(
                    conversation_id=cid, sender_id="a", client_id=f"j{i}", body="x", now=T0,
                    jobs=[JobSpec(queue="q", kind="k", payload={"not json": object()})],
                )
            except TypeError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(good, i)
                nursery.start_soon(bad, i)
                if i % 5 == 0:
                    nursery.start_soon(broken, i)
        assert sorted(seqs) == list(range(1, 21))
        assert len(errors) == 24
        assert {type(e) for e in errors} == {NotFound, Forbidden, TypeError}
        jobs, _ = await store.list_jobs()
        assert jobs == []
        with pytest.raises(ValidationFailed):
            await store.append_message(conversation_id=cid, sender_id="a", client_id="n", body="a\x00b", now=T0)


async def test_a_client_id_conflict_fails_its_own_append_only_among_concurrent_ones(store: Store) -> None:
    """Appends sent together (one group on PostgreSQL, one commit on SQLite): a
    repeated client id with another body is a CONFLICT for that append alone, a
    repeat with the same body gets the stored message, and the rest take
    gap-free seqs."""
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b")
        first, _ = await store.append_message(conversation_id=cid, sender_id="a", client_id="taken", body="hi", now=T0)
        created: list[int] = []
        repeats: list[str] = []
        conflicts: list[str] = []

        async def good(i: int) -> None:
            msg, new = await store.append_message(
                conversation_id=cid, sender_id="b", client_id=f"g{i}", body="x", now=T0
            )
            assert new
            created.append(msg.seq)

        async def clash(i: int) -> None:
            try:
                msg, new = await store.append_message(
                    conversation_id=cid, sender_id="a", client_id="taken", body="hi" if i % 2 else f"other {i}", now=T0
                )
            except Conflict:
                conflicts.append(f"c{i}")
            else:
                assert not new and msg.id == first.id
                repeats.append(f"c{i}")

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(good, i)
                if i % 3 == 0:
                    nursery.start_soon(clash, i)
        assert sorted(created) == list(range(2, 32))
        assert set(conflicts) == {f"c{i}" for i in range(0, 30, 3) if i % 2 == 0} and len(conflicts) == 5
        assert set(repeats) == {f"c{i}" for i in range(0, 30, 3) if i % 2} and len(repeats) == 5
        conv = await store.get_conversation(cid)
        assert conv is not None and conv.last_seq == 31
        member = conv.member("a")
        assert member is not None and member.unread_count == 30


async def test_edit_delete_history_and_changed_since(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b")
        await send(store, cid, "a", 10)
        page = await store.message_history(conversation_id=cid)
        ids = {m.seq: m.id for m in page.messages}
        assert page.version == 10
        edited = await store.edit_message(message_id=ids[3], body="new", now=at(100), sender_id="a")
        assert edited.body == "new" and edited.version == 11 and edited.edited_at == at(100) and edited.seq == 3
        with pytest.raises(Forbidden):
            await store.edit_message(message_id=ids[3], body="x", now=at(100), sender_id="b")
        deleted, changed = await store.delete_message(message_id=ids[5], now=at(101))
        assert changed and deleted.deleted and deleted.version == 12 and deleted.seq == 5
        assert deleted.to_wire()["body"] == "" and deleted.to_wire()["deleted"] is True
        again, changed = await store.delete_message(message_id=ids[5], now=at(102))
        assert not changed and again.version == 12
        with pytest.raises(Conflict):
            await store.edit_message(message_id=ids[5], body="x", now=at(103))
        with pytest.raises(NotFound):
            await store.delete_message(message_id="missing", now=at(103))
        await send(store, cid, "b", 1, start=200)  # seq 11, version 13
        changes = await store.message_history(conversation_id=cid, changed_since=10)
        assert [(m.seq, m.version) for m in changes.messages] == [(3, 11), (5, 12), (11, 13)]
        assert changes.version == 13 and not changes.has_more
        first = await store.message_history(conversation_id=cid, changed_since=10, limit=2)
        assert [m.version for m in first.messages] == [11, 12] and first.has_more
        rest = await store.message_history(conversation_id=cid, changed_since=12, limit=2)
        assert [m.version for m in rest.messages] == [13] and not rest.has_more
        stored = await store.get_message(ids[5])
        assert stored is not None and stored.deleted and stored.seq == 5


async def test_history_bounds_and_has_more(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a")
        await send(store, cid, "a", 12)
        newest = await store.message_history(conversation_id=cid, limit=5)
        assert [m.seq for m in newest.messages] == [8, 9, 10, 11, 12] and newest.has_more
        older = await store.message_history(conversation_id=cid, before_seq=8, limit=5)
        assert [m.seq for m in older.messages] == [3, 4, 5, 6, 7] and older.has_more
        oldest = await store.message_history(conversation_id=cid, before_seq=3, limit=5)
        assert [m.seq for m in oldest.messages] == [1, 2] and not oldest.has_more
        after = await store.message_history(conversation_id=cid, after_seq=2, limit=5)
        assert [m.seq for m in after.messages] == [3, 4, 5, 6, 7] and after.has_more
        tail = await store.message_history(conversation_id=cid, after_seq=9, limit=5)
        assert [m.seq for m in tail.messages] == [10, 11, 12] and not tail.has_more
        with pytest.raises(ValidationFailed):
            await store.message_history(conversation_id=cid, after_seq=1, before_seq=5)
        with pytest.raises(NotFound):
            await store.message_history(conversation_id="missing")


async def test_read_cursor_never_moves_back(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b")
        await send(store, cid, "a", 5)
        state = await store.mark_read(conversation_id=cid, user_id="b", seq=3, now=at(10))
        assert state.moved and state.read_seq == 3 and state.unread_count == 2 and state.read_at == at(10)
        back = await store.mark_read(conversation_id=cid, user_id="b", seq=1, now=at(11))
        assert not back.moved and back.read_seq == 3 and back.read_at == at(10) and back.unread_count == 2
        beyond = await store.mark_read(conversation_id=cid, user_id="b", seq=99, now=at(12))
        assert beyond.read_seq == 5 and beyond.unread_count == 0  # capped at last_seq
        member = await store.get_member(cid, "b")
        assert member is not None and member.read_seq == 5
        with pytest.raises(NotFound):
            await store.mark_read(conversation_id=cid, user_id="stranger", seq=1, now=at(13))

        # Concurrent reads to different seqs: the cursor ends at the highest.
        await send(store, cid, "a", 20, start=100)

        async def read_to(seq: int) -> None:
            await store.mark_read(conversation_id=cid, user_id="b", seq=seq, now=at(200))

        async with trio.open_nursery() as nursery:
            for seq in range(6, 26):
                nursery.start_soon(read_to, seq)
        member = await store.get_member(cid, "b")
        assert member is not None and member.read_seq == 25 and member.unread_count == 0


async def test_unread_counts_stay_exact_under_concurrent_appends_and_reads(store: Store) -> None:
    """A read racing appends to the same conversation: whatever the order the
    backend serializes them in, the reader's unread count ends equal to the
    messages of others after its cursor (a read that waited for an append
    counts that append's message)."""
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b")
        await send(store, cid, "a", 5)
        with pytest.raises(NotFound):
            await store.mark_read(conversation_id="missing", user_id="b", seq=1, now=at(1))

        async def append(i: int) -> None:
            await store.append_message(conversation_id=cid, sender_id="a", client_id=f"r{i}", body="x", now=at(50))

        async def read(seq: int) -> None:
            state = await store.mark_read(conversation_id=cid, user_id="b", seq=seq, now=at(60))
            assert state.unread_count >= 0

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(append, i)
                if i % 4 == 0:
                    nursery.start_soon(read, 5 + i)
        member = await store.get_member(cid, "b")
        assert member is not None
        page = await store.message_history(conversation_id=cid, limit=100)
        assert member.unread_count == sum(1 for m in page.messages if m.seq > member.read_seq)
        state = await store.mark_read(conversation_id=cid, user_id="b", seq=10_000, now=at(70))
        assert state.read_seq == 45 and state.unread_count == 0


async def test_unread_counts_after_sends_reads_deletes_and_leave(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b", "c")
        other = await group(store, "a", "c", title="other")
        a_msgs = await send(store, cid, "a", 3)  # seqs 1-3
        await send(store, cid, "b", 2, start=10)  # seqs 4-5
        await send(store, other, "a", 4, start=20)

        async def unread(user: str, conv: str = cid) -> int:
            member = await store.get_member(conv, user)
            assert member is not None
            return member.unread_count

        # Own messages never count.
        assert (await unread("a"), await unread("b"), await unread("c")) == (2, 3, 5)
        assert await store.unread_total("c") == 9
        # A partial read counts only what is after the cursor.
        state = await store.mark_read(conversation_id=cid, user_id="c", seq=2, now=at(30))
        assert state.unread_count == 3
        # Deleting an unread message lowers the count of those who had not read it, not of the sender.
        page = await store.message_history(conversation_id=cid)
        by_seq = {m.seq: m for m in page.messages}
        await store.delete_message(message_id=by_seq[3].id, now=at(31))
        assert (await unread("a"), await unread("b"), await unread("c")) == (2, 2, 2)
        # Deleting a message someone already read leaves their count alone.
        await store.delete_message(message_id=by_seq[1].id, now=at(32))
        assert (await unread("b"), await unread("c")) == (1, 2)
        # A partial read after deletes skips the deleted ones.
        state = await store.mark_read(conversation_id=cid, user_id="b", seq=1, now=at(33))
        assert state.unread_count == 1 and state.read_seq == 1  # seq 2; 3 is deleted, 4 and 5 are b's own
        state = await store.mark_read(conversation_id=cid, user_id="b", seq=3, now=at(34))
        assert state.unread_count == 0 and state.read_seq == 3
        assert a_msgs == [1, 2, 3]
        # Muted conversations are left out of the total unless asked for.
        await store.set_muted(conversation_id=other, user_id="c", muted=True)
        assert await store.unread_total("c") == 2
        assert await store.unread_total("c", include_muted=True) == 6
        # Leaving zeroes the member's count and drops it from the total; later messages do not count.
        await store.leave_conversation(conversation_id=cid, user_id="c", now=at(40))
        await send(store, cid, "a", 1, start=50)
        assert await store.unread_total("c", include_muted=True) == 4
        left = await store.get_member(cid, "c")
        assert left is not None and left.unread_count == 0 and left.read_seq == 5
        assert await unread("b") == 1
        # Reading to the end is zero.
        state = await store.mark_read(conversation_id=cid, user_id="b", seq=6, now=at(60))
        assert state.unread_count == 0
        assert await store.unread_total("b") == 0


async def test_left_direct_conversation_comes_back_with_the_next_message(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        conv, _ = await store.open_direct(user_id="a", other_id="b", now=T0)
        await send(store, conv.id, "a", 2)
        await store.leave_conversation(conversation_id=conv.id, user_id="b", now=at(10))
        page, _ = await store.list_conversations(user_id="b")
        assert page == []
        msg, _ = await store.append_message(conversation_id=conv.id, sender_id="a", client_id="z", body="back", now=at(20))
        page, _ = await store.list_conversations(user_id="b")
        assert [c.id for c in page] == [conv.id]
        member = await store.get_member(conv.id, "b")
        assert member is not None and member.active and member.unread_count == 1 and member.read_seq == 2
        assert msg.seq == 3


async def test_append_enqueues_its_jobs_in_the_same_transaction(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        cid = await group(store, "a", "b")
        spec = JobSpec(queue="chat", kind="chat.offline", payload={"to": ["b"]}, dedupe_key="offline:k1")
        msg, _ = await store.append_message(
            conversation_id=cid, sender_id="a", client_id="k1", body="hi", now=T0, jobs=[spec]
        )
        jobs = await store.claim_jobs(queue="chat", limit=10, owner="w", lease_s=30, now=T0)
        assert len(jobs) == 1 and jobs[0].kind == "chat.offline"
        assert jobs[0].payload == {"to": ["b"], "message_id": msg.id, "seq": 1}
        # A repeat of the message enqueues nothing; a failed append enqueues nothing.
        await store.append_message(conversation_id=cid, sender_id="a", client_id="k1", body="hi", now=T0, jobs=[spec])
        with pytest.raises(Forbidden):
            await store.append_message(
                conversation_id=cid, sender_id="x", client_id="k2", body="hi", now=T0,
                jobs=[JobSpec(queue="chat", kind="chat.offline")],
            )
        jobs, _ = await store.list_jobs(queue="chat")
        assert len(jobs) == 1


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


async def test_enqueue_dedupe_key_holds_in_every_status(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        job, created = await store.enqueue_job(queue="q", kind="k", payload={"a": 1}, now=T0, dedupe_key="d1")
        assert created and job.status == "queued" and job.run_at == T0 and job.payload == {"a": 1}
        same, created = await store.enqueue_job(queue="q", kind="k", payload={"a": 2}, now=at(1), dedupe_key="d1")
        assert not created and same.id == job.id and same.payload == {"a": 1}
        (claimed,) = await store.claim_jobs(queue="q", limit=5, owner="w", lease_s=10, now=at(2))
        assert await store.complete_job(job_id=claimed.id, owner="w", now=at(3))
        done, created = await store.enqueue_job(queue="q", kind="k", payload={}, now=at(4), dedupe_key="d1")
        assert not created and done.status == "succeeded" and done.finished_at == at(3)
        assert done.to_wire()["finished_at"] == "2026-01-01T12:00:03.000Z"


async def test_50_concurrent_enqueues_with_one_key_leave_one_job(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        results = []

        async def one(i: int) -> None:
            results.append(await store.enqueue_job(queue="q", kind="k", payload={"i": i}, now=T0, dedupe_key="once"))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert len({job.id for job, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        jobs, _ = await store.list_jobs()
        assert len(jobs) == 1


async def test_claim_order_priority_then_run_at_then_creation(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        a, _ = await store.enqueue_job(queue="q", kind="a", payload={}, now=T0, run_at=at(5))
        b, _ = await store.enqueue_job(queue="q", kind="b", payload={}, now=T0, run_at=at(1))
        c, _ = await store.enqueue_job(queue="q", kind="c", payload={}, now=T0, run_at=at(5), priority=10)
        d, _ = await store.enqueue_job(queue="q", kind="d", payload={}, now=T0, run_at=at(1))
        await store.enqueue_job(queue="q", kind="later", payload={}, now=T0, run_at=at(100))
        await store.enqueue_job(queue="other", kind="x", payload={}, now=T0)
        claimed = await store.claim_jobs(queue="q", limit=10, owner="w", lease_s=30, now=at(10))
        assert [j.id for j in claimed] == [c.id, b.id, d.id, a.id]
        first = claimed[0]
        assert first.status == "running" and first.attempts == 1 and first.lease_owner == "w"
        assert first.lease_expires_at == at(40)
        assert await store.claim_jobs(queue="q", limit=10, owner="w2", lease_s=30, now=at(10)) == []
        assert await store.next_job_time(queues=["q"]) == at(40)  # the leases expire before "later" is due
        assert await store.next_job_time(queues=["none"]) is None


async def test_no_job_is_claimed_twice_by_10_concurrent_claimers(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        for i in range(60):
            await store.enqueue_job(queue="q", kind="k", payload={"i": i}, now=T0)
        claimed: dict[str, list[str]] = {}

        async def claimer(owner: str) -> None:
            while True:
                jobs = await store.claim_jobs(queue="q", limit=3, owner=owner, lease_s=60, now=at(1))
                if not jobs:
                    return
                claimed.setdefault(owner, []).extend(j.id for j in jobs)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(claimer, f"w{n}")
        all_ids = [jid for ids in claimed.values() for jid in ids]
        assert len(all_ids) == 60 and len(set(all_ids)) == 60


async def test_an_expired_lease_returns_its_job(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        job, _ = await store.enqueue_job(queue="q", kind="k", payload={}, now=T0)
        (first,) = await store.claim_jobs(queue="q", limit=1, owner="dead-node", lease_s=5, now=T0)
        assert await store.claim_jobs(queue="q", limit=1, owner="other", lease_s=5, now=at(4)) == []
        assert await store.renew_leases(job_ids=[job.id], owner="dead-node", lease_s=5, now=at(4)) == {job.id}
        assert await store.claim_jobs(queue="q", limit=1, owner="other", lease_s=5, now=at(8)) == []
        (second,) = await store.claim_jobs(queue="q", limit=1, owner="other", lease_s=5, now=at(9.5))
        assert second.id == job.id and second.attempts == 2 and second.lease_owner == "other"
        # The old owner lost it: its renewals, completion and failure are refused.
        assert await store.renew_leases(job_ids=[job.id], owner="dead-node", lease_s=5, now=at(10)) == set()
        assert not await store.complete_job(job_id=job.id, owner="dead-node", now=at(10))
        assert await store.fail_job(job_id=job.id, owner="dead-node", error="x", now=at(10), retry_at=None) is None
        assert await store.complete_job(job_id=job.id, owner="other", now=at(11))
        assert first.attempts == 1


async def test_enqueue_jobs_in_one_batch_with_dedupe_keys_inside_and_outside_it(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        held, _ = await store.enqueue_job(queue="p", kind="push", payload={"old": 1}, now=T0, dedupe_key="push:a")
        specs = [
            JobSpec(queue="p", kind="push", payload={"i": 0}, dedupe_key="push:a"),  # taken before the batch
            JobSpec(queue="p", kind="push", payload={"i": 1}, dedupe_key="push:b"),
            JobSpec(queue="p", kind="push", payload={"i": 2}, dedupe_key="push:b"),  # taken inside the batch
            JobSpec(queue="p", kind="push", payload={"i": 3}, run_at=at(60), priority=5, max_attempts=2),
            JobSpec(queue="other", kind="x", payload={"nested": {"a": [1, 2]}}),
        ]
        results = await store.enqueue_jobs(specs, now=at(1))
        assert [created for _, created in results] == [False, True, False, True, True]
        assert results[0][0].id == held.id and results[0][0].payload == {"old": 1}
        assert results[2][0].id == results[1][0].id and results[1][0].payload == {"i": 1}
        later = results[3][0]
        assert later.run_at == at(60) and later.priority == 5 and later.max_attempts == 2 and later.created_at == at(1)
        assert results[4][0].payload == {"nested": {"a": [1, 2]}} and results[4][0].run_at == at(1)
        for job, _ in results:
            stored = await store.get_job(job.id)
            assert stored is not None and stored.status == "queued" and stored.payload == job.payload
        claimed = await store.claim_jobs(queue="p", limit=10, owner="w", lease_s=30, now=at(2))
        assert {j.id for j in claimed} == {held.id, results[1][0].id}
        assert await store.enqueue_jobs([], now=at(3)) == []


async def test_complete_jobs_in_one_batch_skips_only_a_lost_lease(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        for i in range(5):
            await store.enqueue_job(queue="q", kind="k", payload={"i": i}, now=T0)
        claimed = await store.claim_jobs(queue="q", limit=5, owner="w", lease_s=5, now=T0)
        ids = [j.id for j in claimed]
        assert len(ids) == 5
        # The first job's lease ran out and another runner holds it now.
        await store.renew_leases(job_ids=ids[1:], owner="w", lease_s=30, now=at(4))
        (taken,) = await store.claim_jobs(queue="q", limit=5, owner="other", lease_s=30, now=at(6))
        assert taken.id == ids[0]
        done = await store.complete_jobs(job_ids=[*ids, "missing", ids[1]], owner="w", now=at(7))
        assert done == set(ids[1:])
        for job_id in ids[1:]:
            job = await store.get_job(job_id)
            assert job is not None and job.status == "succeeded" and job.finished_at == at(7)
            assert job.lease_expires_at is None
        held = await store.get_job(ids[0])
        assert held is not None and held.status == "running" and held.lease_owner == "other"
        assert await store.complete_jobs(job_ids=[], owner="w", now=at(8)) == set()
        assert await store.complete_jobs(job_ids=[ids[0]], owner="other", now=at(8)) == {ids[0]}


async def test_successful_webhook_attempts_are_stored_with_their_jobs_completion(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        endpoint = WebhookEndpoint(
            id="ep", source="api", url="https://app.example/hooks", events=(), secrets=("whsec_x",), enabled=True,
            created_at=T0, updated_at=T0,
        )
        await store.put_webhook_endpoint(endpoint=endpoint, create=True)

        def attempt(job_id: str, status: int | None = 200, error: str | None = None) -> WebhookAttempt:
            return WebhookAttempt(
                delivery_id=job_id, webhook_id=f"msg_{job_id}", endpoint_id="ep", event="message.new", attempt=1,
                status=status, error=error, latency_ms=1.5, response="ok", at=at(3),
            )

        for i in range(3):
            await store.enqueue_job(queue="q", kind="webhook.deliver", payload={"i": i}, now=T0)
        ids = [j.id for j in await store.claim_jobs(queue="q", limit=3, owner="w", lease_s=5, now=T0)]
        failed = await store.record_webhook_attempts(attempts=[attempt("x", 500, "HTTP 500")], disable_after=0)
        assert failed == [(1, False)]
        # The third job's lease was lost: it is not completed, but its attempt happened and is stored.
        await store.renew_leases(job_ids=ids[:2], owner="w", lease_s=30, now=at(4))
        (taken,) = await store.claim_jobs(queue="q", limit=3, owner="other", lease_s=30, now=at(6))
        assert taken.id == ids[2]
        done = await store.complete_jobs_with_attempts(
            job_ids=ids, owner="w", now=at(7), attempts=[attempt(job_id) for job_id in ids]
        )
        assert done == set(ids[:2])
        for job_id in ids[:2]:
            job = await store.get_job(job_id)
            assert job is not None and job.status == "succeeded"
        for job_id in ids:
            (stored,) = await store.list_webhook_attempts(delivery_id=job_id)
            assert stored.status == 200 and stored.error is None and stored.webhook_id == f"msg_{job_id}"
            assert stored.at == at(3) and stored.latency_ms == 1.5
        ep = await store.get_webhook_endpoint("ep")
        assert ep is not None and ep.consecutive_failures == 0  # a success ends the run of failures
        with pytest.raises(ValueError):
            await store.complete_jobs_with_attempts(
                job_ids=[], owner="w", now=at(8), attempts=[attempt("y", 500, "HTTP 500")]
            )
        assert await store.complete_jobs_with_attempts(job_ids=[], owner="w", now=at(8), attempts=[]) == set()


async def test_a_batch_claimed_by_a_crashed_runner_is_claimed_again_after_its_lease(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        for i in range(6):
            await store.enqueue_job(queue="q", kind="k", payload={"i": i}, now=T0)
        claimed = await store.claim_jobs(queue="q", limit=6, owner="crashed", lease_s=10, now=T0)
        # It recorded half of its batch, then died.
        assert await store.complete_jobs(job_ids=[j.id for j in claimed[:3]], owner="crashed", now=at(1)) == {
            j.id for j in claimed[:3]
        }
        assert await store.claim_jobs(queue="q", limit=6, owner="next", lease_s=10, now=at(9)) == []
        again = await store.claim_jobs(queue="q", limit=6, owner="next", lease_s=10, now=at(10))
        assert [j.id for j in again] == [j.id for j in claimed[3:]]
        assert all(j.attempts == 2 and j.lease_owner == "next" for j in again)
        assert await store.complete_jobs(job_ids=[j.id for j in claimed], owner="crashed", now=at(11)) == set()
        assert await store.complete_jobs(job_ids=[j.id for j in again], owner="next", now=at(11)) == {
            j.id for j in again
        }


async def test_fail_retry_release_and_final_states(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        job, _ = await store.enqueue_job(queue="q", kind="k", payload={}, now=T0, max_attempts=3)
        await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=T0)
        retried = await store.fail_job(job_id=job.id, owner="w", error="boom", now=at(1), retry_at=at(60))
        assert retried is not None and retried.status == "queued" and retried.run_at == at(60)
        assert retried.last_error == "boom" and retried.lease_owner is None
        assert await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=at(59)) == []
        (again,) = await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=at(60))
        assert again.attempts == 2
        dead = await store.fail_job(job_id=job.id, owner="w", error="boom2", now=at(61), retry_at=None)
        assert dead is not None and dead.status == "dead" and dead.finished_at == at(61)
        revived = await store.retry_job(job_id=job.id, now=at(70))
        assert revived.status == "queued" and revived.attempts == 0 and revived.run_at == at(70)
        assert revived.finished_at is None
        with pytest.raises(Conflict):
            await store.retry_job(job_id=job.id, now=at(71))
        with pytest.raises(NotFound):
            await store.retry_job(job_id="missing", now=at(71))
        (third,) = await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=at(72))
        failed = await store.fail_job(
            job_id=job.id, owner="w", error="bad input", now=at(73), retry_at=None, final_status="failed"
        )
        assert failed is not None and failed.status == "failed"
        # Release: a drain gives a claim back without counting the attempt.
        other, _ = await store.enqueue_job(queue="q", kind="k", payload={}, now=T0)
        (claimed,) = await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=at(80))
        assert claimed.id == other.id and claimed.attempts == 1
        await store.release_jobs(owner="w", job_ids=[other.id], now=at(81))
        back = await store.get_job(other.id)
        assert back is not None and back.status == "queued" and back.attempts == 0 and back.run_at == at(81)
        assert third.attempts == 1


async def test_cancel_and_cancel_by_dedupe_prefix(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        job, _ = await store.enqueue_job(queue="q", kind="k", payload={}, now=T0)
        cancelled = await store.cancel_job(job_id=job.id, now=at(1))
        assert cancelled.status == "cancelled" and cancelled.finished_at == at(1)
        with pytest.raises(Conflict):
            await store.cancel_job(job_id=job.id, now=at(2))
        with pytest.raises(NotFound):
            await store.cancel_job(job_id="missing", now=at(2))
        running, _ = await store.enqueue_job(queue="r", kind="k", payload={}, now=T0)
        await store.claim_jobs(queue="r", limit=1, owner="w", lease_s=30, now=T0)
        with pytest.raises(Conflict):
            await store.cancel_job(job_id=running.id, now=at(2))
        for key in ("push:n1:d1", "push:n1:d2", "push:n10:d1", "push:n2:d1"):
            await store.enqueue_job(queue="p", kind="push", payload={}, now=T0, dedupe_key=key)
        await store.claim_jobs(queue="p", limit=1, owner="w", lease_s=30, now=T0)  # push:n1:d1 is running
        assert await store.cancel_jobs_by_dedupe_prefix(prefix="push:n1:", now=at(3)) == 1
        jobs, _ = await store.list_jobs(queue="p", status="queued")
        assert sorted(j.dedupe_key or "" for j in jobs) == ["push:n10:d1", "push:n2:d1"]
        retried = await store.retry_job(job_id=job.id, now=at(4))
        assert retried.status == "queued"


async def test_list_jobs_filters_and_pages(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        for i in range(7):
            await store.enqueue_job(queue="q" if i % 2 else "r", kind=f"k{i % 3}", payload={}, now=at(i))
        seen = []
        cursor = None
        while True:
            page, cursor = await store.list_jobs(cursor=cursor, limit=3)
            seen += page
            if cursor is None:
                break
        assert [j.kind for j in seen] == ["k0", "k2", "k1", "k0", "k2", "k1", "k0"]  # newest first
        only_q, _ = await store.list_jobs(queue="q", kind="k0")
        assert len(only_q) == 1 and only_q[0].queue == "q"
        assert await store.get_job("missing") is None


async def test_wait_for_jobs_wakes_on_enqueue(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        start = trio.current_time()
        await store.wait_for_jobs(0.2)
        assert trio.current_time() - start >= 0.19
        woke = trio.Event()

        async def waiter() -> None:
            await store.wait_for_jobs(10)
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(0.1)
            start = trio.current_time()
            await store.enqueue_job(queue="q", kind="k", payload={}, now=T0)
            await woke.wait()
            assert trio.current_time() - start < 5


async def test_queue_stats_count_every_queued_job_per_queue(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        assert await store.queue_stats(at(50)) == []
        # More than the 1000 that the depth used to stop at: it is a count, not a page of a listing.
        async with trio.open_nursery() as nursery:
            for i in range(1001):
                nursery.start_soon(
                    functools.partial(store.enqueue_job, queue="bulk", kind="a", payload={}, now=T0, run_at=at(10 + i % 3))
                )
        await store.enqueue_job(queue="q", kind="a", payload={}, now=T0, run_at=at(20))
        await store.enqueue_job(queue="q", kind="b", payload={}, now=T0, run_at=at(1000))
        await store.enqueue_job(queue="late", kind="b", payload={}, now=T0, run_at=at(1000))
        await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=at(25))  # running: not queued
        stats = {queue: (depth, age) for queue, depth, age in await store.queue_stats(at(50))}
        assert stats.keys() == {"bulk", "q", "late"}
        assert stats["bulk"][0] == 1001 and stats["bulk"][1] == pytest.approx(40.0)
        assert stats["q"] == (1, None)  # the one left is not due yet
        assert stats["late"] == (1, None)


async def test_job_stats_oldest_age_and_cron_ticks(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        await store.enqueue_job(queue="q", kind="a", payload={}, now=T0, run_at=at(10))
        await store.enqueue_job(queue="q", kind="a", payload={}, now=T0, run_at=at(20))
        await store.enqueue_job(queue="q", kind="b", payload={}, now=T0, run_at=at(1000))
        await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=at(15))
        assert sorted(await store.job_stats()) == [("a", "queued", 1), ("a", "running", 1), ("b", "queued", 1)]
        assert await store.oldest_queued_job_age_s(at(50)) == pytest.approx(30.0)
        assert await store.oldest_queued_job_age_s(at(5)) is None
        assert await store.cron_last_tick(name="digest") is None  # never ran
        assert await store.cron_claim_tick(name="digest", tick=at(60))
        assert await store.cron_last_tick(name="digest") == at(60)
        assert not await store.cron_claim_tick(name="digest", tick=at(60))
        assert not await store.cron_claim_tick(name="digest", tick=at(0))  # a clock stepping back
        assert await store.cron_claim_tick(name="digest", tick=at(120))
        results = []

        async def node() -> None:
            results.append(await store.cron_claim_tick(name="digest", tick=at(180)))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(node)
        assert sorted(results) == [False, False, False, False, True]
        assert await store.cron_last_tick(name="digest") == at(180)
        assert await store.cron_last_tick(name="other") is None


# ---------------------------------------------------------------------------
# Notifications
# ---------------------------------------------------------------------------


def note(user: str, i: int, **kw: Any) -> NewNotification:
    return NewNotification(user_id=user, type="t", title=f"T{i}", body=f"B{i}", data={"i": i}, **kw)


async def test_notification_seq_is_gap_free_per_user_under_concurrency(store: Store) -> None:
    with trio.fail_after(LIMIT_S):

        async def batch(i: int) -> None:
            await store.insert_notifications(items=[note("u1", i), note("u2", i), note("u3", i)], now=at(i))

        async def single(i: int) -> None:
            await store.insert_notifications(items=[note("u2", 100 + i)], now=at(i))

        async with trio.open_nursery() as nursery:
            for i in range(15):
                nursery.start_soon(batch, i)
                nursery.start_soon(single, i)
        for user, count in (("u1", 15), ("u2", 30), ("u3", 15)):
            page, _ = await store.list_notifications(user_id=user, limit=100)
            assert sorted(n.seq for n in page) == list(range(1, count + 1))
            assert await store.notification_unread_count(user) == count


async def test_notification_dedupe_list_read_and_delete(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        results = await store.insert_notifications(
            items=[note("u", 1, dedupe_key="like:1"), note("v", 1, dedupe_key="like:1"), note("u", 2)], now=T0
        )
        assert [(r.user_id, r.seq, created) for r, created in results] == [("u", 1, True), ("v", 1, True), ("u", 2, True)]
        again = await store.insert_notifications(items=[note("u", 9, dedupe_key="like:1"), note("u", 3)], now=at(1))
        assert again[0][0].id == results[0][0].id and not again[0][1] and again[0][0].title == "T1"
        assert again[1][0].seq == 3  # the repeat took no seq
        wire = again[1][0].to_wire()
        assert set(wire) == {"id", "seq", "type", "title", "body", "data", "priority", "group_key", "created_at", "read_at", "expires_at"}
        for i in range(4, 11):
            await store.insert_notifications(items=[note("u", i)], now=at(i))
        page, cursor = await store.list_notifications(user_id="u", limit=4)
        assert [n.seq for n in page] == [10, 9, 8, 7] and cursor is not None
        page2, cursor2 = await store.list_notifications(user_id="u", cursor=cursor, limit=4)
        assert [n.seq for n in page2] == [6, 5, 4, 3]
        page3, cursor3 = await store.list_notifications(user_id="u", cursor=cursor2, limit=4)
        assert [n.seq for n in page3] == [2, 1] and cursor3 is None
        asc, acursor = await store.list_notifications(user_id="u", after_seq=5, limit=3)
        assert [n.seq for n in asc] == [6, 7, 8] and acursor is not None
        asc2, _ = await store.list_notifications(user_id="u", cursor=acursor, limit=3)
        assert [n.seq for n in asc2] == [9, 10]
        by_seq = {n.seq: n.id for n in page + page2 + page3}
        assert await store.notification_unread_count("u") == 10
        assert await store.mark_notifications_read(user_id="u", ids=[by_seq[1], by_seq[2], "nope"], now=at(20)) == 8
        assert await store.mark_notifications_read(user_id="u", ids=[by_seq[1]], now=at(21)) == 8  # already read
        assert await store.mark_notifications_read(user_id="v", ids=[by_seq[3]], now=at(21)) == 1  # not v's
        unread, _ = await store.list_notifications(user_id="u", unread_only=True, limit=100)
        assert sorted(n.seq for n in unread) == list(range(3, 11))
        assert await store.delete_notifications(user_id="u", ids=[by_seq[3], by_seq[1]]) == 7  # one was unread
        up_to, count = await store.mark_all_notifications_read(user_id="u", now=at(30))
        assert (up_to, count) == (10, 0)
        assert await store.notification_unread_count("u") == 0
        assert await store.mark_all_notifications_read(user_id="nobody", now=at(30)) == (0, 0)
        remaining, _ = await store.list_notifications(user_id="u", limit=100)
        assert len(remaining) == 8 and all(n.read_at is not None for n in remaining)
        with pytest.raises(ValidationFailed):
            await store.list_notifications(user_id="u", cursor=cursor, after_seq=1)


async def test_expired_notifications_leave_lists_and_unread_counts_given_now(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        made = await store.insert_notifications(
            items=[
                note("u", 1, expires_at=at(100)),
                note("u", 2),
                note("u", 3, expires_at=at(300)),
                note("v", 1, expires_at=at(100)),
            ],
            now=T0,
        )
        (first, _), (_, _), (third, _), _ = made
        assert first.expires_at == at(100) and first.to_wire()["expires_at"] == "2026-01-01T12:01:40.000Z"
        stored, _ = await store.list_notifications(user_id="u")
        assert [(n.seq, n.expires_at) for n in stored] == [(3, at(300)), (2, None), (1, at(100))]
        # Before it expires it is there; at its expires_at it is gone from what a reader given now sees.
        seen, _ = await store.list_notifications(user_id="u", now=at(99))
        assert [n.seq for n in seen] == [3, 2, 1]
        seen, _ = await store.list_notifications(user_id="u", now=at(100))
        assert [n.seq for n in seen] == [3, 2]
        seen, _ = await store.list_notifications(user_id="u", after_seq=0, unread_only=True, now=at(300))
        assert [n.seq for n in seen] == [2]
        assert await store.notification_unread_count("u") == 3
        assert await store.notification_unread_count("u", now=at(100)) == 2
        assert await store.notification_unread_counts(["u", "v", "w"], now=at(100)) == {"u": 2, "v": 0, "w": 0}
        # Reads and deletes answer the count a reader given now sees.
        assert await store.mark_notifications_read(user_id="u", ids=[first.id], now=at(200)) == 2
        assert await store.delete_notifications(user_id="u", ids=[third.id], now=at(200)) == 1
        assert await store.notification_unread_count("u") == 1
        # Retention deletes the expired ones, read or not, and the counters agree with the inbox again.
        await store.insert_notifications(items=[note("u", 4, expires_at=at(400))], now=at(200))
        assert await store.notification_unread_count("u") == 2
        assert await store.delete_expired_notifications(now=at(399)) == 2  # u's read one and v's
        assert await store.notification_unread_count("v") == 0
        assert await store.notification_unread_count("u") == 2
        assert await store.delete_expired_notifications(now=at(400)) == 1
        assert await store.notification_unread_count("u") == 1
        left, _ = await store.list_notifications(user_id="u")
        assert [n.seq for n in left] == [2]
        assert await store.delete_expired_notifications(now=at(10_000)) == 0


async def test_unread_notifications_retention(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        old = await store.insert_notifications(items=[note("u", 1), note("u", 2), note("v", 1)], now=T0)
        await store.mark_notifications_read(user_id="u", ids=[old[1][0].id], now=at(5))
        await store.insert_notifications(items=[note("u", 3)], now=at(100))
        assert await store.delete_unread_notifications(before=at(50)) == 2  # u's first and v's; not the read one
        left, _ = await store.list_notifications(user_id="u")
        assert [(n.seq, n.read_at is not None) for n in left] == [(3, False), (2, True)]
        assert await store.notification_unread_counts(["u", "v"]) == {"u": 1, "v": 0}
        assert await store.delete_unread_notifications(before=at(50)) == 0


# ---------------------------------------------------------------------------
# Preferences, devices, last seen
# ---------------------------------------------------------------------------


async def test_preferences_per_type_and_channel(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        # A channel the store has never heard of (email) is stored like in_app and push.
        pref = await store.set_preference(user_id="u", type="like", channels={"email": False, "push": True})
        assert pref.channels == {"email": False, "push": True}
        assert not pref.enabled("email") and pref.enabled("push") and pref.enabled("in_app")
        # A partial update keeps the other channels; in_app / push are short for channels entries.
        pref = await store.set_preference(user_id="u", type="like", in_app=False)
        assert pref.channels == {"email": False, "in_app": False, "push": True}
        await store.set_preference(user_id="u", type="mention", channels={"sms": False})
        await store.set_preference(user_id="w", type="like", channels={"email": True})
        assert [(p.type, dict(p.channels)) for p in await store.get_preferences("u")] == [
            ("like", {"email": False, "in_app": False, "push": True}),
            ("mention", {"sms": False}),
        ]
        many = await store.get_preferences_for(user_ids=["u", "v", "w"], type="like")
        assert not many["u"].enabled("email") and not many["u"].in_app
        assert many["v"].channels == {} and many["v"].enabled("email") and many["v"].enabled("anything")
        assert many["w"].channels == {"email": True}
        assert (await store.get_preferences_for(user_ids=["u"], type="mention"))["u"].channels == {"sms": False}
        # Nothing named: nothing changes, the stored preference comes back.
        assert (await store.set_preference(user_id="u", type="mention")).channels == {"sms": False}
        for channels in ({"": False}, {"x" * 65: False}, {"email": "no"}):
            with pytest.raises(ValidationFailed) as info:
                await store.set_preference(user_id="u", type="like", channels=channels)  # type: ignore[arg-type]
            assert info.value.field == "channels"
        assert [p.type for p in await store.get_preferences("v")] == []


async def test_preferences_and_quiet_hours(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        assert await store.get_preferences("u") == []
        await store.set_preference(user_id="u", type="like", in_app=True, push=False)
        await store.set_preference(user_id="u", type="like", in_app=False, push=False)
        (pref,) = await store.get_preferences("u")
        assert (pref.type, pref.in_app, pref.push) == ("like", False, False)
        many = await store.get_preferences_for(user_ids=["u", "v"], type="like")
        assert not many["u"].in_app and many["v"].in_app and many["v"].push
        settings = await store.get_user_settings("u")
        assert settings.quiet_hours_start is None and settings.time_zone == "UTC"
        await store.set_user_settings(
            user_id="u", quiet_hours_start="22:00", quiet_hours_end="07:30", time_zone="Europe/Paris"
        )
        settings = await store.get_user_settings("u")
        assert settings.to_wire() == {"quiet_hours_start": "22:00", "quiet_hours_end": "07:30", "time_zone": "Europe/Paris"}
        both = await store.get_user_settings_many(["u", "v"])
        assert both["v"].time_zone == "UTC" and both["u"].quiet_hours_end == "07:30"
        for start, end, tz in (("25:00", "07:00", "UTC"), ("22:00", None, "UTC"), ("22:00", "07:00", "Mars/Base")):
            with pytest.raises(ValidationFailed):
                await store.set_user_settings(user_id="u", quiet_hours_start=start, quiet_hours_end=end, time_zone=tz)


async def test_devices_register_move_topics_and_last_seen(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        d = await store.register_device(user_id="u", token="tok1", platform="ios", now=T0, app_version="1.0")
        assert d.active and d.user_id == "u" and d.last_seen_at == T0 and d.topics == ()
        assert d.device_info == {} and d.to_wire()["device_info"] == {}
        info = {"model": "iPhone 15", "os": "iOS", "os_version": "18.1", "app_version": "1.0"}
        d = await store.register_device(user_id="u", token="tok1", platform="ios", now=T0, app_version="1.0", device_info=info)
        got = await store.get_device("tok1")
        assert d.device_info == info and got is not None and got.device_info == info
        assert [x.device_info for x in (await store.list_devices_many(["u"]))["u"]] == [info]
        with pytest.raises(ValidationFailed):
            await store.register_device(user_id="u", token="t", platform="palm", now=T0)
        await store.register_device(user_id="u", token="tok2", platform="web", now=at(1))
        d = await store.add_device_topics(token="tok1", topics=["news", "sports", "news"])
        assert d.topics == ("news", "sports")
        d = await store.remove_device_topics(token="tok1", topics=["sports"])
        assert d.topics == ("news",)
        assert [x.token for x in await store.topic_devices("news")] == ["tok1"]
        with pytest.raises(NotFound):
            await store.add_device_topics(token="missing", topics=["x"])
        assert [x.token for x in await store.list_devices("u")] == ["tok1", "tok2"]
        # The token moves to another user (a shared phone): it leaves the first, and its topics.
        moved = await store.register_device(user_id="v", token="tok1", platform="ios", now=at(2))
        assert moved.user_id == "v" and moved.topics == ()
        assert [x.token for x in await store.list_devices("u")] == ["tok2"]
        assert await store.deactivate_device(token="tok2")
        assert not await store.deactivate_device(token="tok2")
        assert await store.list_devices("u") == []
        assert [x.active for x in await store.list_devices("u", active_only=False)] == [False]
        assert await store.touch_device(token="tok1", now=at(50))
        assert not await store.touch_device(token="missing", now=at(50))
        device = await store.get_device("tok1")
        assert device is not None and device.last_seen_at == at(50)
        assert not await store.unregister_device(token="tok1", user_id="u")
        assert await store.unregister_device(token="tok1", user_id="v")
        assert await store.get_device("tok1") is None
        await store.set_last_seen(user_id="u", at=at(10))
        await store.set_last_seen(user_id="u", at=at(5))  # never moves back
        assert await store.get_last_seen(["u", "v"]) == {"u": at(10)}


async def test_batched_reads_of_devices_badges_and_notification_states(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        await store.register_device(user_id="u", token="u-new", platform="ios", now=at(2))
        await store.register_device(user_id="u", token="u-old", platform="web", now=at(1))
        await store.register_device(user_id="v", token="v-off", platform="android", now=at(1))
        await store.register_device(user_id="w", token="w-1", platform="android", now=at(1))
        await store.add_device_topics(token="w-1", topics=["news"])
        assert await store.deactivate_device(token="v-off")
        by_user = await store.list_devices_many(["u", "v", "w", "nobody", "u"])
        assert {user: [d.token for d in found] for user, found in by_user.items()} == {
            "u": [d.token for d in await store.list_devices("u")],
            "w": ["w-1"],
        }
        assert by_user["w"][0].topics == ("news",)
        devices = await store.get_devices(["v-off", "w-1", "missing", "w-1"])
        assert set(devices) == {"v-off", "w-1"} and not devices["v-off"].active and devices["w-1"].user_id == "w"
        assert await store.get_devices([]) == {} and await store.list_devices_many([]) == {}

        items = await store.insert_notifications(items=[note("u", 1), note("u", 2), note("v", 3)], now=T0)
        ids = [n.id for n, _ in items]
        await store.mark_notifications_read(user_id="u", ids=[ids[0]], now=at(1))
        await store.delete_notifications(user_id="v", ids=[ids[2]])
        assert await store.notification_unread_counts(["u", "v", "nobody"]) == {"u": 1, "v": 0, "nobody": 0}
        assert await store.notification_states([*ids, "missing"]) == {ids[0]: ("u", True), ids[1]: ("u", False)}
        assert await store.notification_states([]) == {} and await store.notification_unread_counts([]) == {}


# ---------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------


async def test_retention_deletes(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        items = await store.insert_notifications(items=[note("u", i) for i in range(3)], now=T0)
        await store.mark_notifications_read(user_id="u", ids=[items[0][0].id], now=at(10))
        await store.mark_notifications_read(user_id="u", ids=[items[1][0].id], now=at(100))
        assert await store.delete_read_notifications(before=at(50)) == 1
        left, _ = await store.list_notifications(user_id="u")
        assert sorted(n.seq for n in left) == [2, 3]
        assert await store.notification_unread_count("u") == 1

        done, _ = await store.enqueue_job(queue="q", kind="k", payload={}, now=T0, dedupe_key="once")
        await store.claim_jobs(queue="q", limit=1, owner="w", lease_s=30, now=T0)
        await store.complete_job(job_id=done.id, owner="w", now=at(10))
        cancelled, _ = await store.enqueue_job(queue="c", kind="k", payload={}, now=T0)
        await store.cancel_job(job_id=cancelled.id, now=at(200))
        await store.enqueue_job(queue="z", kind="k", payload={}, now=T0)  # queued: kept
        assert await store.delete_finished_jobs(before=at(50)) == 1
        assert await store.get_job(done.id) is None and await store.get_job(cancelled.id) is not None
        _, created = await store.enqueue_job(queue="q", kind="k", payload={}, now=at(60), dedupe_key="once")
        assert created  # the key is free once its job is gone

        cid = await group(store, "a")
        seqs = await send(store, cid, "a", 3)
        page = await store.message_history(conversation_id=cid)
        await store.delete_message(message_id=page.messages[0].id, now=at(10))
        await store.delete_message(message_id=page.messages[1].id, now=at(100))
        assert await store.purge_deleted_messages(before=at(50)) == 1
        assert await store.purge_deleted_messages(before=at(50)) == 0
        purged = await store.get_message(page.messages[0].id)
        kept = await store.get_message(page.messages[1].id)
        assert purged is not None and purged.body == "" and purged.seq == 1
        assert kept is not None and kept.body == "m1"
        assert seqs == [1, 2, 3]

        await store.register_device(user_id="u", token="old", platform="android", now=T0)
        await store.register_device(user_id="u", token="new", platform="android", now=at(100))
        assert await store.deactivate_stale_devices(before=at(50)) == 1
        assert [d.token for d in await store.list_devices("u")] == ["new"]


# ---------------------------------------------------------------------------
# Migrations
# ---------------------------------------------------------------------------


def refused(match: str) -> pytest.RaisesGroup[SchemaVersionError]:
    """The store refuses to start (the error may come wrapped by the nurseries it passes through)."""
    return pytest.RaisesGroup(
        pytest.RaisesExc(SchemaVersionError, match=match), allow_unwrapped=True, flatten_subgroups=True
    )


def entry(user: str, outcome: str, seconds: float, **kw: Any) -> DeliveryEntry:
    return DeliveryEntry(at=at(seconds), user_id=user, channel=kw.pop("channel", "push"), type="mention", outcome=outcome, **kw)


async def test_delivery_log_pages_newest_first_with_filters(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        await store.record_deliveries(entries=[
            entry("a", "delivered", 1, channel="in_app", notification_id="n1", ref="nn1"),
            entry("a", "failed:UNREGISTERED", 2, notification_id="n1", ref="nn1", detail="x" * 1000),
            entry("a", "device_removed", 2, notification_id="n1", ref="nn1"),
            entry("b", "skipped:cap", 3, cap="hourly"),
            entry("b", "skipped:quiet_hours", 4, deferred_until=at(3600)),
            entry("c", "skipped:preference", 5, channel="in_app"),
        ])
        newest, cursor = await store.list_deliveries(where=DeliveryFilter(), limit=4)
        assert [e.outcome for e in newest] == ["skipped:preference", "skipped:quiet_hours", "skipped:cap", "device_removed"]
        assert cursor is not None
        rest, end = await store.list_deliveries(where=DeliveryFilter(), cursor=cursor, limit=4)
        # Two entries at one time keep their order of writing (newest first: the later one).
        assert [e.outcome for e in rest] == ["failed:UNREGISTERED", "delivered"] and end is None
        ids = [e.id for e in newest + rest]
        assert len(set(ids)) == 6 and ids == sorted(ids, reverse=True)
        quiet = newest[1]
        assert quiet.deferred_until == at(3600) and quiet.at == at(4) and quiet.user_id == "b"
        assert newest[2].cap == "hourly" and rest[0].detail == "x" * 300  # cut to DETAIL_CHARS

        async def outcomes(**where: Any) -> list[str]:
            found, _ = await store.list_deliveries(where=DeliveryFilter(**where), limit=100)
            return [e.outcome for e in found]

        assert await outcomes(user_id="a") == ["device_removed", "failed:UNREGISTERED", "delivered"]
        assert await outcomes(notification_id="n1", channel="push") == ["device_removed", "failed:UNREGISTERED"]
        assert await outcomes(outcome="failed") == ["failed:UNREGISTERED"]
        assert await outcomes(outcome="skipped") == ["skipped:preference", "skipped:quiet_hours", "skipped:cap"]
        assert await outcomes(outcome="skipped:cap") == ["skipped:cap"]
        assert await outcomes(outcome="delivered") == ["delivered"]
        assert await outcomes(type="other") == []
        assert await outcomes(since=at(3), until=at(5)) == ["skipped:quiet_hours", "skipped:cap"]
        with pytest.raises(ValidationFailed) as bad:
            await store.list_deliveries(where=DeliveryFilter(), cursor="not-a-cursor")
        assert bad.value.field == "cursor"


async def test_delivery_log_of_inbox_inserts_and_hourly_stats_and_prune(store: Store) -> None:
    with trio.fail_after(LIMIT_S):
        results = await store.insert_notifications(
            items=[note("u", 1), note("v", 2, dedupe_key="k")], now=at(10), log_channel="in_app"
        )
        again = await store.insert_notifications(items=[note("v", 3, dedupe_key="k")], now=at(11), log_channel="in_app")
        assert not again[0][1]
        await store.insert_notifications(items=[note("w", 4)], now=at(12))  # not logged
        logged, _ = await store.list_deliveries(where=DeliveryFilter(channel="in_app"))
        # One entry per new notification, none for the repeat or the unlogged insert.
        assert [(e.user_id, e.notification_id, e.ref, e.outcome, e.type) for e in logged] == [
            (r.user_id, r.id, f"n{r.id}", "delivered", "t") for r, _ in reversed(results)
        ]
        await store.record_deliveries(entries=[
            entry("a", "delivered", 3600 * 2 + 5),
            entry("a", "delivered", 3600 * 2 + 6),
            entry("a", "failed:UNREGISTERED", 3600 * 2 + 7),
            entry("a", "delivered", 3600 * 3),
            entry("a", "delivered", 3600 * 9),  # outside the span asked for
        ])
        stats = await store.delivery_stats(since=at(3600), until=at(3600 * 4), channel="push")
        hour = T0 + timedelta(hours=3)
        assert [(c.hour, c.outcome, c.count) for c in stats] == [
            (hour - timedelta(hours=1), "delivered", 2), (hour - timedelta(hours=1), "failed:UNREGISTERED", 1),
            (hour, "delivered", 1),
        ]
        every = await store.delivery_stats(since=T0, until=at(3600))
        assert [(c.outcome, c.count) for c in every] == [("delivered", 2)]  # the in-app ones
        assert await store.delete_delivery_log(before=at(3600 * 3)) == 5
        left, _ = await store.list_deliveries(where=DeliveryFilter())
        assert [e.at for e in left] == [at(3600 * 9), at(3600 * 3)]


async def test_migrations_are_recorded_and_a_newer_schema_is_refused(empty_harness: Harness) -> None:
    h = empty_harness
    with trio.fail_after(LIMIT_S):
        with refused("database schema version 0 is older than this realtimed .* run `realtimed migrate`"):
            async with h.running(apply_migrations=False):
                pass
        assert await h.migrate() == MIGRATIONS
        assert await h.migrate() == []
        async with h.running(apply_migrations=False) as s:
            await s.ping()
        await h.sql("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, '0999_future', 0)"
                    if h.backend == "sqlite"
                    else "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, '0999_future', now())")
        with refused(rf"database schema version 999 is newer than this realtimed \({len(MIGRATIONS)}\)"):
            async with h.running():
                pass
        with refused("is newer than this realtimed"):
            await h.migrate()


async def test_preferences_of_schema_2_become_one_row_per_channel(
    empty_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0003: each (in_app, push) row of version 2 becomes two channel rows."""
    h = empty_harness
    module = f"realtimed.store.{h.backend}.engine"
    with trio.fail_after(LIMIT_S):
        every = load_migrations(h.backend)
        monkeypatch.setattr(f"{module}.load_migrations", lambda backend: every[:2])
        assert await h.migrate() == MIGRATIONS[:2]
        true, false = ("1", "0") if h.backend == "sqlite" else ("true", "false")
        await h.sql(
            "INSERT INTO notification_preferences (user_id, type, in_app, push) VALUES "
            f"('u', 'like', {false}, {true}), ('u', 'mention', {true}, {false}), ('v', 'like', {false}, {false})"
        )
        monkeypatch.undo()
        assert await h.migrate() == MIGRATIONS[2:]
        async with h.running() as s:
            assert [(p.type, dict(p.channels)) for p in await s.get_preferences("u")] == [
                ("like", {"in_app": False, "push": True}),
                ("mention", {"in_app": True, "push": False}),
            ]
            many = await s.get_preferences_for(user_ids=["u", "v", "x"], type="like")
            assert [(many[u].in_app, many[u].push) for u in ("u", "v", "x")] == [(False, True), (False, False), (True, True)]
        assert await h.column("SELECT count(*) FROM notification_channel_preferences") == [6]


async def test_store_applies_migrations_at_start(empty_harness: Harness) -> None:
    h = empty_harness
    with trio.fail_after(LIMIT_S):
        async with h.running() as s:
            conv = await s.create_group(member_ids=["a"], now=T0)
            assert (await s.get_conversation(conv.id)) is not None
        assert await h.migrate() == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_each_name_belongs_to_one_domain(backend: str) -> None:
    """A store is one class per domain over one engine: a method name defined in two
    domains (a primitive ``_mark_read`` of chat and of the inbox, say) would route one
    domain's calls to the other's code, so each name belongs to one domain (the
    engine's batching hooks are overridden on purpose, by each domain that groups
    calls, each override calling the next through ``super()``)."""
    from realtimed.store.postgres import PostgresStore
    from realtimed.store.sqlite import SQLiteStore

    store_class = SQLiteStore if backend == "sqlite" else PostgresStore
    assert not getattr(store_class, "__abstractmethods__", None)
    domains: dict[str, set[str]] = {}
    for cls in store_class.__mro__[1:]:
        if not cls.__module__.startswith("realtimed.store."):
            continue
        domain = cls.__module__.rsplit(".", 1)[-1]
        for name in vars(cls):
            if not name.startswith("__") and name != "_abc_impl":
                domains.setdefault(name, set()).add(domain)
    hooks = {"_start_batching", "_stop_batching"}
    shared = {name: found for name, found in domains.items() if len(found - {"engine"}) > 1 and name not in hooks}
    assert shared == {}
    overridden = {name for name, found in domains.items() if "engine" in found and len(found) > 1}
    assert overridden <= hooks


# ---------------------------------------------------------------------------
# Activity feeds
# ---------------------------------------------------------------------------


def activity(actor: str, verb: str, obj: str, *feeds: str, t: float = 0, data: dict[str, Any] | None = None,
             target: str | None = None) -> NewActivity:
    value = data or {}
    return NewActivity(actor=actor, verb=verb, object=obj, target=target, time=at(t), data=value,
                       data_json=orjson.dumps(value).decode(), feeds=tuple(feeds))


async def test_feed_seqs_are_gap_free_per_feed_in_batch_order_and_under_concurrent_batches(store: Store) -> None:
    first = await store.append_activities(activities=[
        activity("alice", "like", "doc1", "user:alice", "global", t=1),
        activity("bob", "comment", "doc1", "global", "resource:doc1", t=2, data={"text": "nice"}, target="c1"),
    ], now=at(10))
    assert first.seqs == [{"user:alice": 1, "global": 1}, {"global": 2, "resource:doc1": 1}]
    assert set(first.epochs) == {"user:alice", "global", "resource:doc1"}
    assert first.activities[1].to_wire()["data"] == {"text": "nice"}
    assert first.activities[1].target == "c1"

    async def batch(i: int) -> None:
        await store.append_activities(
            activities=[activity(f"u{i}", "post", f"o{i}-{k}", "global", t=3 + k) for k in range(5)], now=at(10)
        )

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(batch, i)
    seq, epoch = await store.feed_position("global")
    assert (seq, epoch) == (52, first.epochs["global"])
    items = await store.feed_after("global", after_seq=0, limit=1000)
    assert [i.seq for i in items] == list(range(1, 53))
    # Each batch's five activities took consecutive seqs, in the order given.
    by_actor: dict[str, list[int]] = {}
    for item in items[2:]:
        by_actor.setdefault(item.activity.actor, []).append(item.seq)
    for seqs in by_actor.values():
        assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert await store.feed_position("nobody") == (0, epoch)
    assert len(set(first.epochs.values())) == 1
    assert [i.seq for i in await store.feed_after("global", after_seq=50, limit=10)] == [51, 52]


async def test_read_feed_filters_search_and_pages_newest_first(store: Store) -> None:
    batch = [
        activity("alice", "like", "doc1", "team:t1", t=1, data={"title": "Quarterly report"}),
        activity("bob", "comment", "doc1", "team:t1", t=2, data={"text": "Looks good", "n": 3}),
        activity("alice", "comment", "doc2", "team:t1", t=3, data={"text": "report typo"}),
        activity("carol", "like", "doc2", "team:t1", "team:t2", t=3),
        activity("bob", "share", "doc3", "team:t2", t=4),
    ]
    await store.append_activities(activities=batch, now=at(10))

    async def ids(**kw: Any) -> list[tuple[str, str]]:
        page = await store.read_feed(ActivityQuery(feed="team:t1", **kw))
        return [(i.activity.actor, i.activity.verb) for i in page.items]

    # Newest first by time, then by seq (carol's and alice's share t=3; carol's came later).
    assert await ids() == [("carol", "like"), ("alice", "comment"), ("bob", "comment"), ("alice", "like")]
    assert await ids(actor="alice") == [("alice", "comment"), ("alice", "like")]
    assert await ids(verb="comment") == [("alice", "comment"), ("bob", "comment")]
    assert await ids(object="doc2") == [("carol", "like"), ("alice", "comment")]
    assert await ids(since=at(2), until=at(3)) == [("bob", "comment")]
    assert await ids(q="report") == [("alice", "comment"), ("alice", "like")]
    assert await ids(q="REPORT quarterly") == [("alice", "like")]
    assert await ids(q="looks bob") == [("bob", "comment")]
    assert await ids(q="nothing-here") == []
    assert await ids(q="...") == []
    assert await ids(q='" OR *') == []
    # Pages of two follow each other with no repeat and no gap.
    seen: list[int] = []
    cursor = None
    while True:
        page = await store.read_feed(ActivityQuery(feed="team:t1", limit=2, cursor=cursor))
        seen.extend(i.seq for i in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [4, 3, 2, 1]
    from realtimed.store.paging import encode_cursor

    for bad in ("not-a-cursor", encode_cursor(2**62, 1), encode_cursor(1, "x"), encode_cursor(-(2**62), 1)):
        with pytest.raises(ValidationFailed) as err:
            await store.read_feed(ActivityQuery(feed="team:t1", cursor=bad))
        assert err.value.field == "cursor"


async def test_feed_stats_count_by_verb_and_actor_per_day(store: Store) -> None:
    day = 86400
    await store.append_activities(activities=[
        activity("alice", "like", "d", "global", t=-2 * day),
        activity("alice", "like", "d", "global", t=0),
        activity("bob", "like", "d", "global", t=1),
        activity("bob", "comment", "d", "global", t=2),
        activity("bob", "comment", "d", "other", t=2),
    ], now=at(10))
    stats = await store.feed_stats("global", days=3, now=at(10), top_actors=1)
    assert [d["day"] for d in stats.days] == ["2025-12-30", "2025-12-31", "2026-01-01"]
    assert stats.days[0] == {"day": "2025-12-30", "total": 1, "verbs": {"like": 1}, "actors": {"alice": 1},
                             "actor_count": 1}
    assert stats.days[1]["total"] == 0
    assert stats.days[2] == {"day": "2026-01-01", "total": 3, "verbs": {"comment": 1, "like": 2},
                             "actors": {"bob": 2}, "actor_count": 2}


async def test_feed_retention_prunes_by_prefix_and_deletes_orphans(store: Store, harness: Harness) -> None:
    await store.append_activities(activities=[
        activity("a", "old", "x", "user:alice", "global", t=0),
        activity("a", "old", "y", "user:alice", t=0),
        activity("a", "old", "z", "user:vip:1", t=0),
        activity("a", "new", "w", "user:alice", t=100),
    ], now=at(200))
    removed = await store.delete_feed_activities(prefix="user:", before=at(50), except_prefixes=["user:vip:"])
    assert removed == 2
    assert [i.activity.verb for i in await store.feed_after("user:alice", after_seq=0, limit=10)] == ["new"]
    assert len(await store.feed_after("user:vip:1", after_seq=0, limit=10)) == 1
    # The activity still in "global" stays; the one in no feed any more is gone, from search too.
    assert [i.activity.object for i in await store.feed_after("global", after_seq=0, limit=10)] == ["x"]
    assert sorted(await harness.column("SELECT object FROM activities")) == ["w", "x", "z"]
    assert (await store.read_feed(ActivityQuery(feed="global", q="old"))).items[0].activity.object == "x"
    # Seqs go on from where they were after a prune.
    more = await store.append_activities(activities=[activity("a", "later", "v", "user:alice", t=300)], now=at(300))
    assert more.seqs == [{"user:alice": 4}]
    assert await store.delete_feed_activities(prefix="", before=at(1000)) == 4
    assert await harness.column("SELECT count(*) FROM activities") == [0]
