"""Socket.IO connection state recovery against a real daemon (SQLite store), packet by packet.

A reconnect with ``{pid, offset}`` (what socket.io-client 4.6 and later sends)
gets the same ``pid`` back and every missed room publication, message and
notification exactly once, in order, before the live ones; or a new ``pid`` and
nothing replayed: a forged pid, another user's, an expired record, an offset the
session never sent, a room whose history was trimmed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import trio

from realtimed.daemon import Daemon
from realtimed.frames import Frame
from realtimed.protocol import encode_event
from realtimed.socketio.recovery import MemoryRecoveryStore, RecoveryRecord, Tracker, frame_position
from realtimed.socketio.replay import Replay
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.sio import SioWs
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}
LIMIT_S = 60


class ShiftedClock:
    """The machine's wall clock, moved forward by ``shift`` (to expire records without waiting)."""

    def __init__(self) -> None:
        self.shift = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.shift


def config(history: int = 10, **socketio: Any) -> dict[str, Any]:
    return {"namespaces": [{"prefix": "job:", "history_size": history}], "socketio": socketio}


async def sio(daemon: Daemon, user: str, **auth: Any) -> tuple[SioWs, dict[str, Any]]:
    """A connected socket and its CONNECT reply (session.ready read)."""
    client = await SioWs.open(daemon.url())
    reply = await client.connect({"token": token(user, rooms=["job:*"]), **auth})
    assert reply.startswith("40{"), reply
    await client.event("session.ready")
    return client, orjson.loads(reply[2:])


async def call(client: SioWs, ack_id: int, op: str, data: dict[str, Any]) -> dict[str, Any]:
    await client.emit(ack_id, op, data)
    (answer,) = await client.ack(ack_id)
    assert answer["ok"] is True, answer
    result: dict[str, Any] = answer["data"]
    return result


async def events(client: SioWs, count: int) -> list[list[Any]]:
    """The next ``count`` events among message.new, job.progress and notification.new (others skipped)."""
    found: list[list[Any]] = []
    while len(found) < count:
        args = await client.event()
        if args[0] in ("message.new", "job.progress", "notification.new"):
            found.append(args)
    return found


def summary(found: list[list[Any]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for args in found:
        name, data = args[0], args[1]
        value = data["message"]["body"] if name == "message.new" else data.get("pct", data.get("notification", {}).get("title"))
        out.append((name, value))
    return out


async def gone(daemon: Daemon, left: int = 1) -> None:
    """Wait until the daemon has ``left`` Socket.IO sessions (alice's); a recovery record is kept before a session ends."""
    while daemon.services.gateway.count("socketio") > left:
        await trio.sleep(0.02)


class World:
    """alice (sender), the server API, and bob's conversation with alice."""

    def __init__(self, daemon: Daemon, alice: SioWs, conversation: str) -> None:
        self.daemon = daemon
        self.alice = alice
        self.conversation = conversation
        self.acks = 100

    @classmethod
    async def start(cls, daemon: Daemon) -> World:
        alice, _ = await sio(daemon, "alice")
        opened = await call(alice, 1, "conversation.open", {"user_id": "bob"})
        return cls(daemon, alice, opened["conversation"]["id"])

    async def send(self, body: str) -> None:
        self.acks += 1
        await call(self.alice, self.acks, "message.send", {"conversation_id": self.conversation, "client_id": body, "body": body})

    async def api(self, path: str, body: dict[str, Any]) -> None:
        async with httpx.AsyncClient(base_url=self.daemon.url(), headers=SERVER) as http:
            answer = await http.post(path, json=body)
            assert answer.status_code in (200, 201, 202), answer.text

    async def publish(self, pct: int, room: str = "job:r") -> None:
        await self.api("/server/v1/publish", {"room": room, "event": "job.progress", "data": {"pct": pct}})

    async def notify(self, title: str) -> None:
        await self.api("/server/v1/notifications", {"user_ids": ["bob"], "type": "announcement", "vars": {"title": title, "body": ""}})


async def bob_in_room(world: World) -> tuple[SioWs, dict[str, Any], list[list[Any]]]:
    """bob subscribed to job:r, having received one message, one publication and one notification."""
    bob, reply = await sio(world.daemon, "bob")
    await call(bob, 1, "subscribe", {"room": "job:r"})
    await world.send("m1")
    await world.publish(1)
    await world.notify("n1")
    first = await events(bob, 3)
    assert sorted(summary(first)) == [("job.progress", 1), ("message.new", "m1"), ("notification.new", "n1")]
    assert all(isinstance(args[-1], str) for args in first), "every event with a position ends with its offset"
    return bob, reply, first


async def test_a_lost_transport_recovers_every_missed_event_once_in_order(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config())
        world = await World.start(daemon)
        bob, reply, first = await bob_in_room(world)
        pid = reply["pid"]
        # A second room, from which bob receives nothing before the loss: its subscribe reply is his position.
        await world.publish(10, room="job:q")
        await call(bob, 2, "subscribe", {"room": "job:q"})
        await bob.close()  # the transport goes: no DISCONNECT
        await gone(daemon)
        for i in (2, 3):
            await world.send(f"m{i}")
            await world.publish(i)
        await world.publish(11, room="job:q")
        await world.notify("n2")

        bob, again = await sio(daemon, "bob", pid=pid, offset=first[-1][-1])
        assert again["pid"] == pid, "recovered: the same pid"
        missed = await events(bob, 6)
        assert summary(missed) == [
            ("job.progress", 11), ("job.progress", 2), ("job.progress", 3), ("message.new", "m2"), ("message.new", "m3"),
            ("notification.new", "n2"),
        ]
        assert [(args[2]["room"], args[2]["seq"]) for args in missed if args[0] == "job.progress"] == [
            ("job:q", 2), ("job:r", 2), ("job:r", 3),
        ]
        # Re-subscribed: live events follow, none twice.
        await world.send("m4")
        await world.publish(4)
        live = await events(bob, 2)
        assert sorted(summary(live)) == [("job.progress", 4), ("message.new", "m4")]
        # A record recovers once: a second CONNECT with the pid while the first socket lives gets a new one.
        _, third = await sio(daemon, "bob", pid=pid, offset=first[-1][-1])
        assert third["pid"] != pid


async def test_a_recovery_resends_presence_typing_and_receipts_as_current_state(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config())
        world = await World.start(daemon)
        bob, reply = await sio(daemon, "bob")
        offset = (await events_after(bob, world, "m1"))[-1]
        await bob.close()
        await gone(daemon)
        # While bob is away: a message, then alice reads it and starts typing (no events reach bob).
        await world.send("m2")
        await call(world.alice, 60, "message.read", {"conversation_id": world.conversation, "seq": 2})
        await call(world.alice, 61, "typing.start", {"conversation_id": world.conversation})
        bob, again = await sio(daemon, "bob", pid=reply["pid"], offset=offset)
        assert again["pid"] == reply["pid"]
        await call(world.alice, 62, "presence.set", {"status": "busy"})  # live, after the state read
        room = {"room": f"conversation:{world.conversation}"}
        got: list[list[Any]] = []
        while not (got and got[-1][0] == "presence.updated" and got[-1][1]["status"] == "busy"):
            got.append(await bob.event())
        names = [args[0] for args in got]
        assert names == ["message.new", "presence.updated", "typing.updated", "receipt.updated", "presence.updated"], got
        assert got[0][1]["message"]["body"] == "m2", "the replay first"
        presence, typing, receipt = got[1:4]
        assert presence[1:] == [{"user_id": "alice", "status": "online", "message": None, "last_seen": None}]
        assert typing[1:] == [{"conversation_id": world.conversation, "user_id": "alice", "typing": True}, room]
        assert receipt[1]["user_id"] == "alice" and receipt[1]["read_seq"] == 2 and receipt[1]["read_at"]
        assert receipt[2:] == [room], "state has no position: no offset"
        # Without a recovery (a new pid) nothing of this is sent: the app queries it.
        await bob.close()
        await gone(daemon)
        bob, _ = await sio(daemon, "bob")
        await world.send("m3")
        assert [args[0] for args in await until_message(bob)] == ["message.new"]


async def until_message(client: SioWs) -> list[list[Any]]:
    """The events up to and with the next message.new."""
    got = [await client.event()]
    while got[-1][0] != "message.new":
        got.append(await client.event())
    return got


async def test_a_drained_daemon_recovers_from_the_store(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config())
        world = await World.start(daemon)
        bob, reply = await sio(daemon, "bob")
        for body in ("m1", "m2"):
            await world.send(body)
        first = await events(bob, 2)
        daemon.request_drain()
        await daemon.wait_stopped()

        daemon = await start_daemon(config())  # the same SQLite file
        alice, _ = await sio(daemon, "alice")
        world = World(daemon, alice, world.conversation)
        for body in ("m3", "m4"):
            await world.send(body)
        bob, again = await sio(daemon, "bob", pid=reply["pid"], offset=first[-1][-1])
        assert again["pid"] == reply["pid"], "the positions outlived the process"
        missed = await events(bob, 2)
        assert summary(missed) == [("message.new", "m3"), ("message.new", "m4")]
        assert [args[2]["seq"] for args in missed] == [3, 4]
        await world.send("m5")
        assert summary(await events(bob, 1)) == [("message.new", "m5")]
        # Lost again right after a recovery, before any new event: the same offset recovers again.
        offset = (await events_after(bob, world, "m6"))[-1]
        await bob.close()
        await gone(daemon)
        await world.send("m7")
        bob, third = await sio(daemon, "bob", pid=reply["pid"], offset=offset)
        assert third["pid"] == reply["pid"]
        assert summary(await events(bob, 1)) == [("message.new", "m7")]
        # The recovered socket still knows the offset it was recovered from (a client that got
        # nothing newer sends it again): m7 comes again, as that offset is before it.
        await bob.close()
        await gone(daemon)
        bob, fourth = await sio(daemon, "bob", pid=reply["pid"], offset=offset)
        assert fourth["pid"] == reply["pid"]
        await world.send("m8")
        assert summary(await events(bob, 2)) == [("message.new", "m7"), ("message.new", "m8")]


async def test_edits_and_deletes_while_away_are_replayed_in_seq_order(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config())
        world = await World.start(daemon)
        bob, reply = await sio(daemon, "bob")
        ids = []
        for body in ("m1", "m2"):
            ids.append((await events_after(bob, world, body))[1]["message"]["id"])
        offset = (await events_after(bob, world, "m3"))[-1]
        await bob.close()
        await gone(daemon)
        await call(world.alice, 50, "message.edit", {"message_id": ids[0], "body": "m1!"})
        await call(world.alice, 51, "message.delete", {"message_id": ids[1]})
        await world.send("m4")
        bob, again = await sio(daemon, "bob", pid=reply["pid"], offset=offset)
        assert again["pid"] == reply["pid"]
        replayed = []
        while len(replayed) < 3:
            args = await bob.event()
            if args[0].startswith("message."):
                replayed.append((args[0], args[1]["message"]["seq"], args[1]["message"]["body"], args[-1]))
        assert [r[:3] for r in replayed] == [("message.updated", 1, "m1!"), ("message.deleted", 2, ""), ("message.new", 4, "m4")]
        assert all(r[3].startswith("c:") for r in replayed)


async def events_after(bob: SioWs, world: World, body: str) -> list[Any]:
    """Send ``body`` to bob; the args of its ``message.new``."""
    await world.send(body)
    (args,) = await events(bob, 1)
    assert summary([args]) == [("message.new", body)]
    return args


async def not_recovered(bob: SioWs, reply: dict[str, Any], pid: str, world: World) -> None:
    """A new pid, nothing replayed: the next event is the next live one."""
    assert reply["pid"] != pid
    body = f"live{world.acks}"
    await world.send(body)
    assert summary(await events(bob, 1)) == [("message.new", body)]


async def test_another_node_recovers_from_the_shared_store(start_daemon: DaemonFactory, redis_url: str, pg_dsn: str) -> None:
    with trio.fail_after(LIMIT_S):
        shared = {
            "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            **config(),
        }
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        room = f"job:{uuid.uuid4().hex[:8]}"
        world = await World.start(b)
        bob, reply = await sio(a, "bob")
        await call(bob, 1, "subscribe", {"room": room})
        await world.send("m1")
        await world.publish(1, room=room)
        first = await events(bob, 2)
        await bob.close()
        await gone(a, left=0)
        await world.send("m2")
        await world.publish(2, room=room)
        bob, again = await sio(b, "bob", pid=reply["pid"], offset=first[-1][-1])
        assert again["pid"] == reply["pid"], "node b recovered node a's socket"
        assert sorted(summary(await events(bob, 2))) == [("job.progress", 2), ("message.new", "m2")]
        await world.send("m3")
        assert summary(await events(bob, 1)) == [("message.new", "m3")]


async def test_both_nodes_give_a_conversations_event_the_same_arguments(
    start_daemon: DaemonFactory, redis_url: str, pg_dsn: str
) -> None:
    with trio.fail_after(LIMIT_S):
        shared = {
            "store": {"backend": "postgres", "postgres_dsn": pg_dsn},
            "broker": {"backend": "redis", "redis_url": redis_url, "timeout_s": 2.0},
            **config(),
        }
        a = await start_daemon({"server": {"node": "na"}, **shared})
        b = await start_daemon({"server": {"node": "nb"}, **shared})
        world = await World.start(b)  # alice sends on node b
        on_a, _ = await sio(a, "bob")
        on_b, _ = await sio(b, "bob")
        native = []
        for daemon in (a, b):
            client = await WsClient.connect(daemon.url().replace("http", "ws", 1) + "/ws", token=token("bob"))
            await client.event("session.ready")
            native.append(client)
        await world.send("m1")
        (remote,) = await events(on_a, 1)  # through the broker
        (local,) = await events(on_b, 1)
        room = f"conversation:{world.conversation}"
        assert local[2] == {"room": room, "seq": 1}
        assert remote == local, "the second argument and the offset agree on both nodes"
        frames = [await client.event("message.new") for client in native]
        assert frames[0] == frames[1] and frames[0]["room"] == room and frames[0]["seq"] == 1
        for client in native:
            await client.close()


async def test_forged_or_foreign_pids_and_unknown_offsets_recover_nothing(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config())
        world = await World.start(daemon)
        bob, reply, first = await bob_in_room(world)
        pid = reply["pid"]
        await bob.close()
        await gone(daemon)
        await world.send("m2")
        # Another user's token with bob's pid: nothing of bob's (and the record is used up).
        carol, answer = await sio(daemon, "carol", pid=pid, offset=first[-1][-1])
        assert answer["pid"] != pid
        await carol.close()
        bob, answer = await sio(daemon, "bob", pid=pid, offset=first[-1][-1])
        await not_recovered(bob, answer, pid, world)
        # An offset the session never sent.
        await bob.close()
        await gone(daemon)
        bob, answer = await sio(daemon, "bob", pid=answer["pid"], offset="c:999:nope")
        await not_recovered(bob, answer, pid, world)
        # A forged pid, and ones that are not strings or too long.
        for auth in ({"pid": "forged", "offset": "i:1"}, {"pid": 5}, {"pid": "x" * 100}, {"pid": "p", "offset": ["x"]}):
            other, answer = await sio(daemon, "bob", **auth)
            assert answer["pid"] not in (pid, "forged")
            await other.close()


async def test_streams_never_seen_are_replayed_from_the_connection_on(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config())
        world = await World.start(daemon)
        await world.send("before")  # before bob connects: the app fetched it, not replayed
        bob, reply = await sio(daemon, "bob")
        await bob.close()  # no event with an offset reached bob: socket.io-client sends no offset
        await gone(daemon)
        carol, _ = await sio(daemon, "carol")
        opened = await call(carol, 1, "conversation.open", {"user_id": "bob"})
        await call(carol, 2, "message.send", {"conversation_id": opened["conversation"]["id"], "client_id": "c1", "body": "c1"})
        await world.send("m1")
        await world.notify("n1")
        bob, again = await sio(daemon, "bob", pid=reply["pid"])
        assert again["pid"] == reply["pid"]
        missed = await events(bob, 3)
        assert sorted(summary(missed)) == [("message.new", "c1"), ("message.new", "m1"), ("notification.new", "n1")]
        await world.send("m2")
        assert summary(await events(bob, 1)) == [("message.new", "m2")]


async def test_a_terminal_close_keeps_nothing(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config())
        world = await World.start(daemon)
        bob, reply, first = await bob_in_room(world)
        await world.api("/server/v1/users/bob/disconnect", {})
        assert (await bob.event("session.closed"))[1]["code"] == 4510
        await gone(daemon)
        await world.send("m2")
        bob, answer = await sio(daemon, "bob", pid=reply["pid"], offset=first[-1][-1])
        await not_recovered(bob, answer, reply["pid"], world)


async def test_too_many_live_events_while_a_recovery_is_read_close_the_transport(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(LIMIT_S):
        reading, go_on = trio.Event(), trio.Event()
        collect = Replay.collect

        async def slow(self: Replay, *args: Any) -> Any:
            reading.set()
            await go_on.wait()
            return await collect(self, *args)

        monkeypatch.setattr(Replay, "collect", slow)
        daemon = await start_daemon(config(recovery_max_replay=1))
        world = await World.start(daemon)
        bob, reply = await sio(daemon, "bob")
        offset = (await events_after(bob, world, "m1"))[-1]
        await bob.close()
        await gone(daemon)
        bob = await SioWs.open(daemon.url())
        auth = {"token": token("bob"), "pid": reply["pid"], "offset": offset}
        await bob.send("40" + orjson.dumps(auth).decode())
        await reading.wait()
        await world.send("m2")  # held with session.ready: one more than recovery_max_replay
        go_on.set()
        # Not a CONNECT_ERROR (socket.io-client would not retry): the transport closes, as for a slow consumer.
        assert await bob.closed() == 4008


async def test_an_expired_record_recovers_nothing(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        clock = ShiftedClock()
        daemon = await start_daemon(config(recovery_ttl_s=30), clock=clock)
        world = await World.start(daemon)
        bob, reply, first = await bob_in_room(world)
        await bob.close()
        await gone(daemon)
        await world.send("m2")
        clock.shift = timedelta(seconds=31)
        bob, answer = await sio(daemon, "bob", pid=reply["pid"], offset=first[-1][-1])
        await not_recovered(bob, answer, reply["pid"], world)


async def test_a_trimmed_room_history_replays_nothing_at_all(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(LIMIT_S):
        daemon = await start_daemon(config(history=2))
        world = await World.start(daemon)
        bob, reply, first = await bob_in_room(world)
        await bob.close()
        await gone(daemon)
        await world.send("m2")  # replayable by itself, but not without the room
        for i in (2, 3, 4):
            await world.publish(i)  # history keeps 2: publication 2 is gone
        bob, answer = await sio(daemon, "bob", pid=reply["pid"], offset=first[-1][-1])
        await not_recovered(bob, answer, reply["pid"], world)
        # Not re-subscribed either: the app subscribes again (and refetches).
        await world.publish(5)
        await world.send("after")
        assert summary(await events(bob, 1)) == [("message.new", "after")]


# ---------------------------------------------------------------------------
# The positions, sans IO
# ---------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def room_frame(seq: int, room: str = "job:r", epoch: str = "e1") -> Frame:
    return Frame(encode_event("job.progress", {}, room=room, seq=seq, epoch=epoch), "job.progress", room=room, seq=seq, epoch=epoch)


def note_frame(seq: int) -> Frame:
    return Frame(encode_event("notification.new", {"notification": {}}, seq=seq), "notification.new", seq=seq)


def send(tracker: Tracker, frame: Frame) -> str:
    found = frame_position(frame)
    assert found is not None
    assert tracker.accepts(found[1], found[2])
    tracker.sent(found)
    return found[0]


def test_positions_as_of_an_offset_are_those_of_the_last_send_up_to_it() -> None:
    tracker = Tracker(10, T0)
    tracker.baseline("r:job:r", [4, "e1"])
    offsets = [send(tracker, room_frame(5)), send(tracker, note_frame(1)), send(tracker, room_frame(6)), send(tracker, note_frame(2))]
    assert not tracker.accepts("r:job:r", [6, "e1"]) and tracker.accepts("r:job:r", [1, "e2"])  # another epoch is news
    record = RecoveryRecord.loads(tracker.record("bob", ["job:r"]).dumps())
    assert record is not None and record.rooms == ["job:r"]
    assert record.as_of(offsets[3]) == {"r:job:r": [6, "e1"], "i": [2, ""]}
    assert record.as_of(offsets[1]) == {"r:job:r": [5, "e1"], "i": [1, ""]}
    assert record.as_of(offsets[0]) == {"r:job:r": [5, "e1"]}  # the inbox: nothing yet
    assert record.as_of(None) == {"r:job:r": [4, "e1"]}  # before every event: the subscribe reply
    assert record.as_of("i:99") is None
    # A socket resumed from offsets[1] still knows that offset.
    resumed = Tracker(10, T0)
    resumed.resume({"r:job:r": [5, "e1"], "i": [1, ""]}, record.entry(offsets[1]))
    assert resumed.record("bob", []).as_of(offsets[1]) == {"r:job:r": [5, "e1"], "i": [1, ""]}
    # Conversations keep their version and their highest seq (an edit does not lower it).
    conv = Tracker(10, T0)
    conv.sent(("c:7:c1", "c:c1", [7, "", 3]))
    conv.sent(("c:8:c1", "c:c1", [8, "", 1]))
    assert conv.positions["c:c1"] == [8, "", 3]
    assert not conv.accepts("c:c1", [8, "", 3]) and conv.accepts("c:c1", [9, "", 4])


def test_an_offset_that_fell_out_of_the_ring_recovers_nothing() -> None:
    tracker = Tracker(3, T0)
    offsets = [send(tracker, note_frame(seq)) for seq in range(1, 6)]
    record = tracker.record("bob", [])
    assert not record.complete
    assert record.as_of(offsets[0]) is None and record.as_of(offsets[1]) is None and record.as_of(None) is None
    assert record.as_of(offsets[2]) == {"i": [3, ""]}
    assert RecoveryRecord.loads(b'{"user_id": "bob"}') is None and RecoveryRecord.loads(b"\xff") is None


async def test_the_memory_store_takes_a_record_once_until_it_expires() -> None:
    store = MemoryRecoveryStore()
    await store.put_recovery(pid="p", user_id="a", record=b"r", expires_at=T0 + timedelta(seconds=60), now=T0)
    await store.put_recovery(pid="q", user_id="a", record=b"s", expires_at=T0 + timedelta(seconds=10), now=T0)
    assert await store.take_recovery(pid="p", now=T0) == ("a", b"r")
    assert await store.take_recovery(pid="p", now=T0) is None
    assert await store.take_recovery(pid="q", now=T0 + timedelta(seconds=10)) is None
