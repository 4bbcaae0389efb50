"""Activity feeds end to end: the server API logs, sockets hear, reconnects recover
from the store, reads filter, search, page and count, retention prunes, and
hostile input gets a code and a field.

Real daemons on SQLite or PostgreSQL, driven with httpx and the ``websockets``
client on real time, as a client written against docs/protocol.md would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from realtimed.daemon import Daemon
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

SERVER = {"Authorization": f"Bearer {API_KEY}"}


def ws_url(daemon: Daemon) -> str:
    return daemon.url().replace("http", "ws", 1) + "/ws"


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


async def connect(daemon: Daemon, user: str, **claims: Any) -> WsClient:
    client = await WsClient.connect(ws_url(daemon), token=token(user, **claims))
    await client.event("session.ready")
    return client


async def log(http: httpx.AsyncClient, *activities: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await http.post("/server/v1/activities", json={"activities": list(activities)})
    assert answer.status_code == 200, answer.text
    logged: list[dict[str, Any]] = answer.json()["activities"]
    return logged


def act(actor: str, verb: str, obj: str, *feeds: str, **more: Any) -> dict[str, Any]:
    return {"actor": actor, "verb": verb, "object": obj, "feeds": list(feeds), **more}


async def test_logged_activities_reach_subscribers_and_a_reconnect_recovers_them_once(
    start_daemon: DaemonFactory, backend: dict[str, Any]
) -> None:
    with trio.fail_after(40):
        daemon = await start_daemon(backend)
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            alice = await connect(daemon, "alice", rooms=["feed:team:t1"])
            own = await alice.ok("subscribe", {"room": "feed:user:alice"})
            assert (own["seq"], own["recovered"]) == (0, False) and own["epoch"]
            await alice.ok("subscribe", {"room": "feed:team:t1"})
            bob = await connect(daemon, "bob")
            for room in ("feed:team:t1", "feed:user:alice"):
                refused = await bob.request("subscribe", {"room": room})
                assert refused["error"]["code"] == "FORBIDDEN"

            logged = await log(
                http,
                act("alice", "like", "doc1", "user:alice", "team:t1", data={"title": "Quarterly report"}),
                act("bob", "comment", "doc1", "team:t1", target="c1", time="2026-01-02T03:04:05Z"),
                act("carol", "share", "doc2", "global"),
            )
            assert [a["seqs"] for a in logged] == [{"user:alice": 1, "team:t1": 1}, {"team:t1": 2}, {"global": 1}]
            events = [await alice.event("feed.activity") for _ in range(3)]
            by_room = {(e["room"], e["seq"]): e for e in events}
            assert set(by_room) == {("feed:user:alice", 1), ("feed:team:t1", 1), ("feed:team:t1", 2)}
            second = by_room[("feed:team:t1", 2)]["data"]["activity"]
            assert second["id"] == logged[1]["id"]
            assert (second["actor"], second["verb"], second["object"], second["target"]) == ("bob", "comment", "doc1", "c1")
            assert second["time"] == "2026-01-02T03:04:05.000Z"
            assert (second["feed"], second["seq"], second["feeds"]) == ("team:t1", 2, ["team:t1"])
            epoch = by_room[("feed:team:t1", 2)]["epoch"]
            assert epoch == own["epoch"]
            await alice.close()

            # Missed while away: two more; back with since, they come in order, then live ones, once each.
            await log(http, act("dan", "join", "t1", "team:t1"), act("erin", "join", "t1", "team:t1"))
            alice = await connect(daemon, "alice", rooms=["feed:team:t1"])
            back = await alice.ok("subscribe", {"room": "feed:team:t1", "since": {"seq": 2, "epoch": epoch}})
            assert (back["seq"], back["epoch"], back["recovered"]) == (4, epoch, True)
            assert [(p["seq"], p["event"], p["data"]["activity"]["actor"]) for p in back["publications"]] == [
                (3, "feed.activity", "dan"), (4, "feed.activity", "erin")
            ]
            await log(http, act("fay", "join", "t1", "team:t1"))
            live = await alice.event("feed.activity")
            assert (live["seq"], live["data"]["activity"]["actor"]) == (5, "fay")
            await alice.no_event("feed.activity", wait=0.3)
            other_epoch = await alice.ok("subscribe", {"room": "feed:team:t1", "since": {"seq": 2, "epoch": "x"}})
            assert (other_epoch["recovered"], other_epoch["publications"]) == (False, [])
            from_start = await alice.ok("subscribe", {"room": "feed:user:alice", "since": {"seq": 0, "epoch": ""}})
            assert from_start["recovered"] and [p["seq"] for p in from_start["publications"]] == [1]

            # A feed's seq belongs to the store: publishing to its room is refused.
            refused_publish = await http.post(
                "/server/v1/publish", json={"room": "feed:team:t1", "event": "x.y", "data": {}}
            )
            assert refused_publish.status_code == 400 and refused_publish.json()["error"]["field"] == "room"

            # Reads: the server API, the client op and the client REST route, authorized as subscribe.
            page = (await http.get("/server/v1/feeds/team:t1/activities", params={"limit": 2})).json()
            assert [a["seq"] for a in page["activities"]] == [5, 4]
            rest = (await http.get(
                "/server/v1/feeds/team:t1/activities", params={"limit": 2, "cursor": page["next_cursor"]}
            )).json()
            # bob's activity is timed in January 2026, before the others (logged now): it comes last.
            assert [a["seq"] for a in rest["activities"]] == [3, 1]
            found = (await http.get("/server/v1/feeds/team:t1/activities", params={"q": "quarterly"})).json()
            assert [a["actor"] for a in found["activities"]] == ["alice"]
            by_verb = (await http.get("/server/v1/feeds/team:t1/activities", params={"verb": "join"})).json()
            assert [a["actor"] for a in by_verb["activities"]] == ["fay", "erin", "dan"]
            january = (await http.get("/server/v1/feeds/team:t1/activities", params={
                "since": "2026-01-01T00:00:00Z", "until": "2026-01-03T00:00:00Z"})).json()
            assert [a["actor"] for a in january["activities"]] == ["bob"]
            over_op = await alice.ok("feed.activities", {"feed": "team:t1", "actor": "dan"})
            assert [a["seq"] for a in over_op["activities"]] == [3]
            as_alice = await http.get(
                "/api/v1/feeds/team:t1/activities", params={"object": "doc1"},
                headers={"Authorization": f"Bearer {token('alice', rooms=['feed:team:t1'])}"},
            )
            assert as_alice.status_code == 200 and [a["seq"] for a in as_alice.json()["activities"]] == [1, 2]
            as_bob = await http.get(
                "/api/v1/feeds/team:t1/activities", headers={"Authorization": f"Bearer {token('bob')}"}
            )
            assert as_bob.status_code == 403
            own_feed = await bob.request("feed.activities", {"feed": "user:bob"})
            assert own_feed["ok"] and own_feed["data"] == {"activities": [], "next_cursor": None}

            stats = (await http.get("/server/v1/feeds/team:t1/stats", params={"days": 2})).json()
            today = stats["days"][-1]
            assert len(stats["days"]) == 2 and today["day"] == datetime.now(UTC).date().isoformat()
            assert today["verbs"] == {"join": 3, "like": 1} and today["total"] == 4
            assert today["actors"] == {"alice": 1, "dan": 1, "erin": 1, "fay": 1}
            await alice.close()
            await bob.close()


async def test_hostile_input_gets_a_code_and_a_field(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        daemon = await start_daemon(
            {"feeds": {"max_batch": 3, "max_data_bytes": 64, "max_feeds_per_activity": 2, "recovery_cap": 2}}
        )
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:

            async def refused(body: Any, status: int, code: str, field: str) -> None:
                answer = await http.post("/server/v1/activities", json=body)
                assert answer.status_code == status, answer.text
                error = answer.json()["error"]
                assert (error["code"], error.get("field")) == (code, field), error

            ok = act("a", "v", "o", "global")
            await refused({"activities": [ok] * 4}, 413, "PAYLOAD_TOO_LARGE", "activities")
            await refused({"activities": []}, 400, "VALIDATION_ERROR", "activities")
            await refused({"activities": {"a": 1}}, 400, "VALIDATION_ERROR", "activities")
            await refused({}, 400, "VALIDATION_ERROR", "activities")
            await refused({"activities": [ok, "x"]}, 400, "VALIDATION_ERROR", "activities[1]")
            await refused({"activities": [{**ok, "data": {"x": "y" * 100}}]}, 413, "PAYLOAD_TOO_LARGE",
                          "activities[0].data")
            await refused({"activities": [{**ok, "data": [1]}]}, 400, "VALIDATION_ERROR", "activities[0].data")
            await refused({"activities": [{**ok, "data": {"k": "a\u0000b"}}]}, 400, "VALIDATION_ERROR",
                          "activities[0].data")
            for feed in ("a b", "", "x:*", "a,b", "::", "f" * 196, 7):
                await refused({"activities": [{**ok, "feeds": ["global", feed]}]}, 400, "VALIDATION_ERROR",
                              "activities[0].feeds[1]")
            await refused({"activities": [{**ok, "feeds": ["a", "b", "c"]}]}, 400, "VALIDATION_ERROR",
                          "activities[0].feeds")
            await refused({"activities": [{**ok, "feeds": []}]}, 400, "VALIDATION_ERROR", "activities[0].feeds")
            future = iso(datetime.now(UTC) + timedelta(days=1))
            for bad_time in ("yesterday", "1969-12-31T23:59:59Z", future, 12, "9999-99-99T00:00:00Z"):
                await refused({"activities": [{**ok, "time": bad_time}]}, 400, "VALIDATION_ERROR",
                              "activities[0].time")
            for name, bad in (("actor", ""), ("verb", "v" * 65), ("object", "a\nb"), ("target", 5), ("actor", None)):
                await refused({"activities": [{**ok, name: bad}]}, 400, "VALIDATION_ERROR", f"activities[0].{name}")
            assert (await http.post("/server/v1/activities", content=b"[1")).status_code == 400
            # Nothing was stored by any refused batch.
            empty = (await http.get("/server/v1/feeds/global/activities")).json()
            assert empty == {"activities": [], "next_cursor": None}

            async def bad_read(path: str, params: dict[str, Any], field: str) -> None:
                answer = await http.get(path, params=params)
                assert answer.status_code == 400, answer.text
                assert answer.json()["error"]["field"] == field

            await bad_read("/server/v1/feeds/global/activities", {"cursor": "nope"}, "cursor")
            await bad_read("/server/v1/feeds/global/activities", {"actor": "a\u0000b"}, "actor")
            await bad_read("/server/v1/feeds/global/activities", {"until": "2026-01-01T00:00:00\u0000"}, "until")
            nul = (await http.get("/server/v1/feeds/global/activities", params={"q": "a\u0000b"})).json()
            assert nul == {"activities": [], "next_cursor": None}
            await bad_read("/server/v1/feeds/global/activities", {"limit": "0"}, "limit")
            await bad_read("/server/v1/feeds/global/activities", {"since": "soon"}, "since")
            await bad_read("/server/v1/feeds/global/activities", {"q": "x" * 201}, "q")
            await bad_read("/server/v1/feeds/a,b/activities", {}, "feed")
            await bad_read("/server/v1/feeds/global/stats", {"days": "91"}, "days")
            assert (await http.get("/server/v1/feeds/global/activities", headers={"Authorization": "Bearer x"})).status_code == 401
            alice = await connect(daemon, "alice")
            # More missed than feeds.recovery_cap: not recovered, nothing replayed; within it: replayed.
            await log(http, *[act("x", "v", "o", "user:alice")] * 3)
            epoch = (await alice.ok("subscribe", {"room": "feed:user:alice"}))["epoch"]
            over = await alice.ok("subscribe", {"room": "feed:user:alice", "since": {"seq": 0, "epoch": epoch}})
            assert (over["seq"], over["recovered"], over["publications"]) == (3, False, [])
            within = await alice.ok("subscribe", {"room": "feed:user:alice", "since": {"seq": 1, "epoch": epoch}})
            assert within["recovered"] and [p["seq"] for p in within["publications"]] == [2, 3]
            for data, field in (({"feed": "a b"}, "feed"), ({"feed": "user:alice", "limit": 101}, "limit"), ({}, "feed")):
                reply = await alice.request("feed.activities", data)
                assert reply["error"]["code"] == "VALIDATION_ERROR" and reply["error"]["field"] == field
            await alice.close()


class SteppedClock:
    """The machine's wall clock, moved forward by the test."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def test_retention_prunes_each_feed_namespace_and_recovery_then_says_so(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(30):
        wall = SteppedClock()
        daemon = await start_daemon(
            {"feeds": {"keep_s": 0, "retention": [{"prefix": "user:", "keep_s": 3600}]}}, clock=wall
        )
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            old = iso(datetime.now(UTC) - timedelta(hours=2))
            logged = await log(
                http, act("a", "old", "x", "user:alice", "global", time=old), act("a", "new", "y", "user:alice")
            )
            job = await daemon.services.jobs.enqueue("retention.activities", {})
            while True:
                status = (await http.get(f"/server/v1/jobs/{job.id}")).json()["job"]["status"]
                if status == "succeeded":
                    break
                assert status in ("queued", "running"), status
                await trio.sleep(0.05)
            alice = (await http.get("/server/v1/feeds/user:alice/activities")).json()["activities"]
            assert [a["verb"] for a in alice] == ["new"]
            kept = (await http.get("/server/v1/feeds/global/activities")).json()["activities"]
            assert [a["id"] for a in kept] == [logged[0]["id"]]
            client = await connect(daemon, "alice")
            reply = await client.ok("subscribe", {"room": "feed:user:alice", "since": {"seq": 0, "epoch": ""}})
            assert (reply["seq"], reply["recovered"], reply["publications"]) == (2, False, [])
            reply = await client.ok("subscribe", {"room": "feed:user:alice", "since": {"seq": 1, "epoch": reply["epoch"]}})
            assert reply["recovered"] and [p["seq"] for p in reply["publications"]] == [2]
            await client.close()


def test_a_feed_namespace_with_history_or_client_publishing_is_a_config_error(tmp_path: Any) -> None:
    from realtimed.config import ConfigError
    from tests.fixtures.daemon import make_config

    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, {
            "namespaces": [{"prefix": "feed:team:", "history_size": 10, "client_publish": True}],
            "feeds": {"retention": [{"prefix": "user:", "keep_s": 60}, {"prefix": "user:", "keep_s": 5}]},
        })
    keys = {key for key, _ in err.value.problems}
    assert keys == {"namespaces[0].history_size", "namespaces[0].client_publish", "feeds.retention[1].prefix"}
    # A public feed namespace is how a feed is opened to every user.
    make_config(tmp_path, {"namespaces": [{"prefix": "feed:global", "public": True}]})


async def test_an_sse_stream_follows_a_feed_and_resumes_it_from_the_store(start_daemon: DaemonFactory) -> None:
    from tests.test_sse import sse

    with trio.fail_after(30):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            async with sse(daemon, rooms="feed:user:alice") as stream:
                await stream.until("session.ready")
                await log(http, act("bob", "follow", "alice", "user:alice"))
                first = await stream.until("feed.activity")
                assert (first["frame"]["room"], first["frame"]["seq"]) == ("feed:user:alice", 1)
                assert first["frame"]["data"]["activity"]["actor"] == "bob"
                cursor = stream.last_id
            assert cursor
            await log(http, act("cy", "follow", "alice", "user:alice"), act("di", "follow", "alice", "user:alice"))
            async with sse(daemon, rooms="feed:user:alice", last_id=cursor) as stream:
                await stream.until("session.ready")
                missed = [await stream.until("feed.activity") for _ in range(2)]
                assert [(m["frame"]["seq"], m["frame"]["data"]["activity"]["actor"]) for m in missed] == [
                    (2, "cy"), (3, "di")
                ]
                await log(http, act("ed", "follow", "alice", "user:alice"))
                assert (await stream.until("feed.activity"))["frame"]["seq"] == 4


async def test_with_feeds_off_the_routes_answer_503_and_feed_rooms_are_plain_rooms(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon({"feeds": {"enabled": False}})
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = await http.post("/server/v1/activities", json={"activities": [act("a", "v", "o", "global")]})
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "UNAVAILABLE"
            assert (await http.get("/server/v1/feeds/global/activities")).status_code == 503
            alice = await connect(daemon, "alice")
            reply = await alice.ok("subscribe", {"room": "feed:user:alice"})
            assert (reply["seq"], reply["epoch"]) == (0, "")
            published = await http.post("/server/v1/publish", json={"room": "feed:user:alice", "event": "x.y", "data": {}})
            assert published.status_code == 200
            assert (await alice.event("x.y"))["room"] == "feed:user:alice"
            refused = await alice.request("feed.activities", {"feed": "user:alice"})
            assert refused["error"]["code"] == "UNAVAILABLE"
            await alice.close()
