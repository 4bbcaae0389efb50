"""Chat between two nodes while one of them is killed: the scenario, shared by
``tests/test_faults.py`` (200 clients at 200 msg/s) and ``bench/faults.py`` (500 msg/s).

Half the users are on node A, half on node B, in pairs that share a direct
conversation across the nodes. Every user sends at an even rate (together
``rate`` messages per second) with a fresh ``client_id`` each, and records the
``seq`` of every acknowledged message. ``kill`` (SIGKILL of B) comes at
``kill_at_s``; B's users reconnect to A at once, send again what was not
acknowledged (same ``client_id``: the retry answers the first message if it was
stored) and fetch what they missed with ``message.history``. At the end every
client fills the gaps in what it received live from history.

``run`` answers what the caller asserts: acknowledged messages missing from the
store (must be none), conversations whose ``seq`` has a gap or a ``client_id``
twice, clients that did not catch up, live frames received twice, and for B's
users the time from the kill until each was caught up (reconnected, and every
message acknowledged before the kill in its conversation fetched).

Clients are in-process Trio clients (trio-websocket), one task each plus a
reader, so hundreds of them cost one thread.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

Token = Callable[[str], str]


@attrs.define(eq=False)
class ChatClient:
    """One user's socket: requests answered by id, ``message.new`` seqs recorded."""

    user: str
    token: Token
    url: str = ""
    ws: WebSocketConnection | None = None
    live: dict[str, list[int]] = attrs.field(factory=dict)  # conversation → seqs received live
    replies: dict[int, trio.Event] = attrs.field(factory=dict)
    answers: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    closed: trio.Event = attrs.field(factory=trio.Event)
    on_event: Callable[[dict[str, Any]], object] | None = None  # every event frame, as it comes

    async def serve(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and read until the socket closes (``closed`` is then set)."""
        self.url = url
        self.closed = trio.Event()
        try:
            async with open_websocket_url(
                url.replace("http", "ws", 1) + "/ws", extra_headers=[(b"authorization", f"Bearer {self.token(self.user)}".encode())],
                connect_timeout=10, disconnect_timeout=2, message_queue_size=0,
            ) as ws:
                self.ws = ws
                ready = orjson.loads(await ws.get_message())
                assert ready.get("event") == "session.ready", ready
                task_status.started()
                while True:
                    frame = orjson.loads(await ws.get_message())
                    if "event" in frame and self.on_event is not None:
                        self.on_event(frame)
                    if frame.get("event") == "message.new":
                        message = frame["data"]["message"]
                        self.live.setdefault(message["conversation_id"], []).append(message["seq"])
                    elif "id" in frame and frame["id"] in self.replies:
                        self.answers[frame["id"]] = frame
                        self.replies.pop(frame["id"]).set()
        except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
            pass
        finally:
            self.ws = None
            for event in self.replies.values():
                event.set()  # answered by nobody: the caller sees no answer
            self.replies.clear()
            self.closed.set()

    async def request(self, op: str, data: dict[str, Any], *, timeout: float = 10) -> dict[str, Any] | None:
        """The reply, or None when the socket closed (or stayed silent) before it came."""
        ws = self.ws
        if ws is None:
            return None
        request_id = next(self.ids)
        done = self.replies[request_id] = trio.Event()
        try:
            await ws.send_message(orjson.dumps({"id": request_id, "op": op, "data": data}).decode())
        except (ConnectionClosed, trio.BrokenResourceError):
            return None
        with trio.move_on_after(timeout):
            await done.wait()
        self.replies.pop(request_id, None)
        return self.answers.pop(request_id, None)


@attrs.define(eq=False)
class Pair:
    conversation_id: str
    a: ChatClient
    b: ChatClient


@attrs.define
class Outcome:
    acked: int = 0
    acked_before_kill: int = 0
    sent_attempts: int = 0
    lost: list[tuple[str, str]] = attrs.field(factory=list)  # (conversation, client_id) acknowledged, not stored
    gaps: list[str] = attrs.field(factory=list)  # conversations whose seq is not 1..n, or has a client_id twice
    behind: list[str] = attrs.field(factory=list)  # users missing messages at the end
    duplicates: list[str] = attrs.field(factory=list)  # users that received a live frame twice
    catch_up_s: list[float] = attrs.field(factory=list)  # B's users: kill → caught up
    ack_s: list[float] = attrs.field(factory=list)  # message.send → its reply

    def p(self, q: float, values: list[float] | None = None) -> float | None:
        """The ``q`` quantile of ``values`` (default: the catch-up times)."""
        ordered = sorted(self.catch_up_s if values is None else values)
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def history(client: ChatClient, conversation_id: str, after: int = 0) -> list[dict[str, Any]]:
    """Every message after ``after``, paged."""
    found: list[dict[str, Any]] = []
    while True:
        reply = await client.request("message.history", {"conversation_id": conversation_id, "after_seq": after, "limit": 100})
        if reply is None or not reply.get("ok"):
            raise AssertionError(f"message.history failed: {reply}")
        page = reply["data"]["messages"]
        found += page
        if not reply["data"]["has_more"] or not page:
            return found
        after = page[-1]["seq"]


async def run(
    *,
    url_a: str,
    url_b: str,
    kill: Callable[[], Awaitable[None]],
    token: Token,
    clients: int = 200,
    rate: float = 200.0,
    duration_s: float = 4.0,
    kill_at_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Run the scenario (see the module docstring); the caller bounds it with its own deadline."""
    tag = uuid.uuid4().hex[:6]
    pairs_n = clients // 2
    outcome = Outcome()
    # (conversation, client_id) → seq, for every acknowledged send
    acked: dict[tuple[str, str], int] = {}
    # conversation → highest seq acknowledged before the kill
    before_kill: dict[str, int] = {}
    killed = trio.Event()
    killed_at = 0.0
    async with trio.open_nursery() as nursery:
        pairs: list[Pair] = []
        limiter = trio.CapacityLimiter(32)  # handshakes at once

        async def open_pair(i: int) -> None:
            async with limiter:
                a = ChatClient(f"ka{i}-{tag}", token)
                b = ChatClient(f"kb{i}-{tag}", token)
                await nursery.start(a.serve, url_a)
                await nursery.start(b.serve, url_b)
                reply = await a.request("conversation.open", {"user_id": b.user})
                assert reply is not None and reply.get("ok"), reply
                pairs.append(Pair(reply["data"]["conversation"]["id"], a, b))

        async with trio.open_nursery() as opening:
            for i in range(pairs_n):
                opening.start_soon(open_pair, i)
        if progress:
            progress(f"{len(pairs) * 2} clients connected")
        await trio.sleep(0.5)  # the user channels are subscribed on both nodes
        start = trio.current_time()
        end = start + duration_s
        period = clients / rate  # each client's interval between sends

        async def reconnect(client: ChatClient) -> None:
            """B died under this client: connect to A, as a client library would after its backoff."""
            while True:
                try:
                    await nursery.start(client.serve, url_a)
                    return
                except Exception:
                    await trio.sleep(0.1)

        async def sender(client: ChatClient, pair: Pair, offset: float) -> None:
            n = 0
            next_at = start + offset
            while next_at < end:
                await trio.sleep_until(next_at)
                n += 1
                client_id = f"{client.user}-{n}"
                while True:
                    outcome.sent_attempts += 1
                    asked = trio.current_time()
                    reply = await client.request(
                        "message.send", {"conversation_id": pair.conversation_id, "client_id": client_id, "body": client_id}
                    )
                    if reply is not None and reply.get("ok"):
                        seq = reply["data"]["message"]["seq"]
                        outcome.ack_s.append(trio.current_time() - asked)
                        acked[(pair.conversation_id, client_id)] = seq
                        if not killed.is_set():
                            before_kill[pair.conversation_id] = max(before_kill.get(pair.conversation_id, 0), seq)
                        break
                    if reply is not None and reply.get("error", {}).get("code") == "RATE_LIMITED":
                        await trio.sleep(reply["error"].get("retry_after_ms", 100) / 1000)
                        continue
                    # No answer: the socket closed (the node died). The same client_id
                    # again once its watcher has reconnected it to A.
                    await trio.sleep(0.05)
                next_at += period

        async def watch_b(client: ChatClient, pair: Pair) -> None:
            """Reconnect B's user to A when B dies, fetch what was missed, note when caught up."""
            await client.closed.wait()
            await killed.wait()
            await reconnect(client)
            target = before_kill.get(pair.conversation_id, 0)
            have = set(client.live.get(pair.conversation_id, []))
            missing = [s for s in range(1, target + 1) if s not in have]
            if missing:
                for message in await history(client, pair.conversation_id, min(missing) - 1):
                    have.add(message["seq"])
            outcome.catch_up_s.append(trio.current_time() - killed_at)
            if progress and len(outcome.catch_up_s) in (1, pairs_n // 2, pairs_n):
                progress(f"{len(outcome.catch_up_s)} of B's users caught up")

        async def killer() -> None:
            nonlocal killed_at
            await trio.sleep_until(start + kill_at_s)
            killed_at = trio.current_time()
            killed.set()
            outcome.acked_before_kill = len(acked)
            await kill()
            if progress:
                progress(f"node B killed after {kill_at_s:.1f} s; {len(acked)} messages acknowledged so far")

        async with trio.open_nursery() as load:
            load.start_soon(killer)
            for index, pair in enumerate(pairs):
                offset = period * index / len(pairs)
                load.start_soon(sender, pair.a, pair, offset)
                load.start_soon(sender, pair.b, pair, offset + period / 2)
            async with trio.open_nursery() as watchers:
                for pair in pairs:
                    watchers.start_soon(watch_b, pair.b, pair)
        outcome.acked = len(acked)
        if progress:
            progress(f"load over; {len(acked)} acknowledged")
        await trio.sleep(1.0)  # the last live deliveries
        # The store has every acknowledged message, seq gap-free, each client_id once.
        for pair in pairs:
            messages = await history(pair.a, pair.conversation_id)
            seqs = [m["seq"] for m in messages]
            ids = [m["client_id"] for m in messages]
            if seqs != list(range(1, len(seqs) + 1)) or len(set(ids)) != len(ids):
                outcome.gaps.append(pair.conversation_id)
            stored = {(pair.conversation_id, m["client_id"]): m["seq"] for m in messages}
            for key, seq in acked.items():
                if key[0] == pair.conversation_id and stored.get(key) != seq:
                    outcome.lost.append(key)
            for client in (pair.a, pair.b):
                live = client.live.get(pair.conversation_id, [])
                if len(live) != len(set(live)):
                    outcome.duplicates.append(client.user)
                have = set(live)
                if len(have) < len(seqs):
                    have |= {m["seq"] for m in await history(client, pair.conversation_id, 0)}
                if not set(seqs) <= have:
                    outcome.behind.append(client.user)
        nursery.cancel_scope.cancel()
    return outcome
