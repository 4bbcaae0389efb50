"""Webhooks: signed deliveries to a real HTTP receiver that verifies them with the
``standardwebhooks`` package; retries, timeouts, an outage, disabling, replay, the
server API, reload, and the address checks. Real daemons on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from realtimed.config import load_config
from realtimed.daemon import Daemon
from realtimed.metrics import REGISTRY
from realtimed.outbound.client import is_public_address
from realtimed.outbound.signing import sign
from tests.fixtures.daemon import API_KEY, BASE_CONFIG, DaemonFactory, merge, toml_dumps
from tests.webhook_receiver import Receiver, new_secret

SERVER = {"Authorization": f"Bearer {API_KEY}"}
FAST = {
    "allow_private": True,
    "backoff_base_s": 0.05,
    "backoff_max_s": 0.2,
    "timeout_s": 1.0,
    "connect_timeout_s": 1.0,
    "refresh_s": 0.2,
}


@pytest.fixture(params=["sqlite", "postgres"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "postgres":
        return {"store": {"backend": "postgres", "postgres_dsn": request.getfixturevalue("pg_dsn")}}
    return {}


def endpoint(receiver: Receiver, secrets: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": "app", "url": receiver.url, "secrets": secrets, **extra}


def config(endpoints: list[dict[str, Any]], **webhooks: Any) -> dict[str, Any]:
    return {
        "webhooks": {**FAST, **webhooks, "endpoints": endpoints},
        "jobs": {"poll_s": 0.2, "queues": [{"name": "webhooks", "concurrency": 8}]},
    }


@asynccontextmanager
async def api(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=daemon.url() + "/server/v1", headers=SERVER, timeout=10) as http:
        yield http


async def send(http: httpx.AsyncClient, conversation_id: str, sender: str, text: str) -> dict[str, Any]:
    answer = await http.post(
        f"/conversations/{conversation_id}/messages", json={"sender_id": sender, "client_id": text, "body": text}
    )
    assert answer.status_code == 200, answer.text
    message: dict[str, Any] = answer.json()["message"]
    return message


async def conversation(http: httpx.AsyncClient) -> str:
    answer = await http.post("/conversations", json={"type": "group", "member_ids": ["alice", "bob"]})
    assert answer.status_code == 200, answer.text
    cid: str = answer.json()["conversation"]["id"]
    return cid


async def until(check: Callable[[], Any], *, step_s: float = 0.02) -> None:
    """Wait for ``check()`` to hold (each test bounds the wait with its own fail_after)."""
    while not check():
        await trio.sleep(step_s)


async def attempts(http: httpx.AsyncClient, endpoint_id: str = "app") -> list[dict[str, Any]]:
    answer = await http.get(f"/webhooks/{endpoint_id}/attempts", params={"limit": 500})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["attempts"]
    return found


async def test_message_events_are_signed_per_standard_webhooks_with_rotation(
    nursery: trio.Nursery, start_daemon: DaemonFactory, store_section: dict[str, Any]
) -> None:
    old, new = new_secret(), new_secret()
    receiver = Receiver([new])  # the receiver already moved to the new secret
    await receiver.start(nursery)
    with trio.fail_after(30):
        daemon = await start_daemon(merge(store_section, config(
            [endpoint(receiver, [old, new], events=["message.new", "message.unread_offline"])]
        )))
        async with api(daemon) as http:
            cid = await conversation(http)
            message = await send(http, cid, "alice", "hello")
            await until(lambda: len(receiver.received) >= 2)
            by_type = {r.body["type"]: r for r in receiver.received}
            assert set(by_type) == {"message.new", "message.unread_offline"}
            new_msg = by_type["message.new"]
            # Two signatures (rotation); the receiver's secret verifies one of them.
            assert len(new_msg.headers["webhook-signature"].split(" ")) == 2
            assert new_msg.verified_with == (0,)
            assert new_msg.body["data"]["message_id"] == message["id"]
            assert new_msg.body["data"]["seq"] == message["seq"]
            assert new_msg.body["data"]["body"] == "hello" and new_msg.body["data"]["conversation_id"] == cid
            offline = by_type["message.unread_offline"].body["data"]
            assert offline["recipients"] == ["bob"] and offline["message_id"] == message["id"]
            # The same message sent again (same client id) is no new fact: nothing more is queued
            # (deliveries are queued in the message's transaction, so the jobs say it at once).
            await send(http, cid, "alice", "hello")
            jobs = (await http.get("/jobs", params={"kind": "webhook.deliver"})).json()["jobs"]
            assert len(jobs) == 2
            await until_async(http, lambda found: len(found) >= 2)
            found = await attempts(http)
            assert all(a["status"] == 200 and a["error"] is None for a in found)
            assert {a["webhook_id"] for a in found} == set(receiver.ids())
            listed = (await http.get("/webhooks")).json()["endpoints"]
            assert [e["id"] for e in listed] == ["app"]
            assert listed[0]["source"] == "config" and listed[0]["secrets"] == 2 and "whsec" not in str(listed)


async def test_receiver_down_then_back_loses_nothing_and_failures_are_recorded(
    nursery: trio.Nursery, start_daemon: DaemonFactory, store_section: dict[str, Any]
) -> None:
    secret = new_secret()
    receiver = Receiver([secret])
    await receiver.start(nursery)
    with trio.fail_after(40):
        daemon = await start_daemon(
            merge(store_section, config(
                [endpoint(receiver, [secret], events=["message.new"])],
                max_attempts=50, max_response_bytes=2000, excerpt_chars=4096,
            ))
        )
        async with api(daemon) as http:
            cid = await conversation(http)
            # Down: the port is closed.
            receiver.stop()
            sent = [await send(http, cid, "alice", f"m{i}") for i in range(5)]
            await until_async(http, lambda found: sum(1 for a in found if a["status"] is None) >= 5)
            # Back, but answering 500 with a body, then slow beyond webhooks.timeout_s.
            await receiver.start(nursery)
            receiver.status, receiver.body = 500, b"x" * 5000
            await until_async(http, lambda found: any(a["status"] == 500 for a in found))
            receiver.status, receiver.body, receiver.delay_s = 200, b'{"ok":true}', 1.5
            await until_async(http, lambda found: any("timeout_s" in (a["error"] or "") for a in found))
            receiver.delay_s = 0
            await until(lambda: len(set(receiver.ids())) >= 5)
            found = await attempts(http)
            errors = [a for a in found if a["status"] == 500]
            assert errors[0]["response"] == "x" * 2000  # no more than webhooks.max_response_bytes is read
            assert {r.body["data"]["message_id"] for r in receiver.received} == {m["id"] for m in sent}
            # One webhook-id per delivery, the same on every attempt.
            ids_per_delivery: dict[str, set[str]] = {}
            for a in found:
                ids_per_delivery.setdefault(a["delivery_id"], set()).add(a["webhook_id"])
            assert len(ids_per_delivery) == 5 and all(len(ids) == 1 for ids in ids_per_delivery.values())
            one = found[0]
            answer = await http.get(f"/webhooks/deliveries/{one['delivery_id']}/attempts")
            assert {a["delivery_id"] for a in answer.json()["attempts"]} == {one["delivery_id"]}
            assert len(answer.json()["attempts"]) >= 2


async def until_async(http: httpx.AsyncClient, check: Callable[[list[dict[str, Any]]], bool]) -> None:
    while not check(await attempts(http)):
        await trio.sleep(0.05)


async def test_endpoint_disabled_after_failures_then_enabled_and_replayed(
    nursery: trio.Nursery, start_daemon: DaemonFactory, store_section: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    disabled_metric = ("realtimed_webhook_endpoints_disabled_total", {"endpoint": "made"})
    disabled_before = REGISTRY.get_sample_value(*disabled_metric) or 0.0
    secret = new_secret()
    receiver = Receiver([secret])
    receiver.status = 503
    receiver.retry_after = "0"
    await receiver.start(nursery)
    with trio.fail_after(30):
        daemon = await start_daemon(merge(store_section, config([], disable_after_failures=3, max_attempts=10)))
        async with api(daemon) as http:
            made = await http.post(
                "/webhooks", json={"id": "made", "url": receiver.url, "secrets": [secret], "events": ["message.new"]}
            )
            assert made.status_code == 200, made.text
            again = await http.post("/webhooks", json={"id": "made", "url": receiver.url, "secrets": [secret]})
            assert again.status_code == 409
            bad = await http.post("/webhooks", json={"id": "x", "url": "ftp://a", "secrets": [secret]})
            assert bad.status_code == 400 and bad.json()["error"]["field"] == "url"
            cid = await conversation(http)
            await send(http, cid, "alice", "one")
            await until_async_endpoint(http, "made", lambda ep: ep["disabled_at"] is not None)
            ep = (await http.get("/webhooks/made")).json()["endpoint"]
            assert ep["consecutive_failures"] == 3
            assert REGISTRY.get_sample_value(*disabled_metric) == disabled_before + 1
            assert "webhook endpoint made disabled after 3 consecutive failed attempts" in caplog.text
            found = await attempts(http, "made")
            assert [a["status"] for a in found] == [503, 503, 503]
            # Disabled: the delivery fails without another attempt.
            await until_job(http, found[0]["delivery_id"], "failed")
            assert len(await attempts(http, "made")) == 3
            assert receiver.received == []
            # Enabled again through the API; the receiver answers; the delivery is replayed.
            receiver.status = 200
            put = await http.put(
                "/webhooks/made",
                json={"url": receiver.url, "secrets": [secret], "enabled": True, "events": ["message.new"]},
            )
            assert put.status_code == 200 and put.json()["endpoint"]["disabled_at"] is None
            replayed = await http.post(f"/webhooks/deliveries/{found[0]['delivery_id']}/replay")
            assert replayed.status_code == 200, replayed.text
            await until(lambda: len(receiver.received) == 1)
            assert receiver.received[0].webhook_id == found[0]["webhook_id"]
            assert (await http.post("/webhooks/deliveries/nope/replay")).status_code == 404
            deleted = await http.delete("/webhooks/made")
            assert deleted.status_code == 200
            assert (await http.get("/webhooks/made")).status_code == 404


async def until_job(http: httpx.AsyncClient, job_id: str, status: str) -> None:
    while (await http.get(f"/jobs/{job_id}")).json()["job"]["status"] != status:
        await trio.sleep(0.05)


async def until_async_endpoint(http: httpx.AsyncClient, endpoint_id: str, check: Callable[[dict[str, Any]], bool]) -> None:
    while not check((await http.get(f"/webhooks/{endpoint_id}")).json()["endpoint"]):
        await trio.sleep(0.05)


async def test_loopback_and_private_targets_are_refused_unless_allowed(
    nursery: trio.Nursery, start_daemon: DaemonFactory
) -> None:
    secret = new_secret()
    receiver = Receiver([secret])
    await receiver.start(nursery)
    with trio.fail_after(30):
        daemon = await start_daemon(config(
            [endpoint(receiver, [secret], events=["message.new"]),
             {"id": "local", "url": f"http://localhost:{receiver.port}/x", "secrets": [secret]}],
            allow_private=False,
        ))
        async with api(daemon) as http:
            cid = await conversation(http)
            await send(http, cid, "alice", "one")
            await until_async(http, lambda found: len(found) == 1)
            found = await attempts(http)
            assert found[0]["status"] is None and "not a public address" in found[0]["error"]
            while not await attempts(http, "local"):
                await trio.sleep(0.05)
            local = await attempts(http, "local")
            assert "not a public address" in local[0]["error"]
            # Refused is final: the delivery failed after its one attempt.
            await until_job(http, found[0]["delivery_id"], "failed")
            assert len(await attempts(http)) == 1
        assert receiver.requests == 0


def test_public_address_check() -> None:
    for refused in (
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::",
    ):
        assert not is_public_address(refused), refused
    for allowed in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert is_public_address(allowed), allowed


def test_signature_matches_the_specification_example() -> None:
    # The example of the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign([secret], webhook_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


async def test_reload_replaces_configured_endpoints_and_keeps_api_ones(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    secret = new_secret()
    receiver = Receiver([secret])
    await receiver.start(nursery)
    path = tmp_path / "realtimed.toml"
    base = merge(BASE_CONFIG, {"server": {"state_dir": str(tmp_path / "state")}})
    app = endpoint(receiver, [secret], events=["message.new"])
    gone = {"id": "gone", "url": receiver.url, "secrets": [secret], "events": ["presence.online"]}
    first = merge(base, config([app, gone], disable_after_failures=1))
    path.write_text(toml_dumps(first))
    daemon = Daemon(load_config(path, env={}), config_path=path, handle_signals=False)
    with trio.fail_after(30):
        await nursery.start(daemon.run)
        async with api(daemon) as http:
            made = await http.post("/webhooks", json={"id": "kept", "url": receiver.url, "secrets": [secret]})
            assert made.status_code == 200
            assert (await http.delete("/webhooks/app")).status_code == 409
            receiver.status = 500
            await send(http, await conversation(http), "alice", "fails")
            await until_async_endpoint(http, "app", lambda ep: ep["disabled_at"] is not None)
            receiver.status = 200
            path.write_text(toml_dumps(merge(base, config([app], disable_after_failures=1))))
            assert await daemon.reload() is True

            async def listed() -> dict[str, dict[str, Any]]:
                return {e["id"]: e for e in (await http.get("/webhooks")).json()["endpoints"]}

            while "gone" in await listed():
                await trio.sleep(0.05)
            now = await listed()
            assert set(now) == {"app", "kept"}
            assert now["kept"]["source"] == "api"
            # The reload turned the configured endpoint disabled after failures back on.
            assert now["app"]["disabled_at"] is None and now["app"]["consecutive_failures"] == 0
        daemon.request_drain()
        await daemon.wait_stopped()


async def test_presence_room_notification_device_and_job_events(
    nursery: trio.Nursery, start_daemon: DaemonFactory
) -> None:
    from realtimed.jobs.runner import JobContext
    from tests.fixtures.clients import WsClient
    from tests.fixtures.tokens import token

    secret = new_secret()
    receiver = Receiver([secret])
    await receiver.start(nursery)

    def events() -> list[str]:
        return [r.body["type"] for r in receiver.received]

    async def wait_for(event: str) -> dict[str, Any]:
        await until(lambda: event in events())
        data: dict[str, Any] = next(r.body["data"] for r in receiver.received if r.body["type"] == event)
        return data

    with trio.fail_after(30):
        daemon = await start_daemon(merge(config([endpoint(receiver, [secret])]), {
            "presence": {"offline_grace_s": 0},
            "namespaces": [{"prefix": "live:", "public": True, "presence": True}],
        }))

        async def failing(ctx: JobContext) -> None:
            raise RuntimeError("broken on purpose")

        daemon.services.jobs.register("test.broken", failing)
        url = daemon.url().replace("http", "ws", 1) + "/ws"
        alice = await WsClient.connect(url, token=token("alice"))
        await alice.event("session.ready")
        assert (await wait_for("presence.online"))["user_id"] == "alice"
        await alice.ok("subscribe", {"room": "live:1"})
        assert await wait_for("room.joined") == {"room": "live:1", "user_id": "alice"}
        await alice.ok("unsubscribe", {"room": "live:1"})
        assert await wait_for("room.left") == {"room": "live:1", "user_id": "alice"}
        await alice.close()
        assert (await wait_for("presence.offline"))["user_id"] == "alice"
        async with api(daemon) as http:
            sent = await http.post("/notifications", json={
                "user_ids": ["bob"], "type": "new_follower", "vars": {"follower_name": "Alex"},
            })
            assert sent.status_code == 200, sent.text
            created = await wait_for("notification.new")
            assert created["user_id"] == "bob" and created["notification"]["type"] == "new_follower"
            await daemon.services.jobs.enqueue("test.broken", {}, max_attempts=1)
            dead = await wait_for("job.dead")
            assert dead["kind"] == "test.broken" and "broken on purpose" in dead["last_error"]
        async with httpx.AsyncClient(
            base_url=daemon.url() + "/api/v1", headers={"Authorization": f"Bearer {token('bob')}"}
        ) as client:
            nid = created["notification"]["id"]
            assert (await client.post(f"/notifications/{nid}/read")).status_code == 200
            assert (await wait_for("notification.read")) == {"user_id": "bob", "ids": [nid], "unread_count": 0}
            device = await client.post("/devices", json={"token": "tok-1", "platform": "android"})
            assert device.status_code == 200, device.text
            assert (await client.delete("/devices/tok-1")).status_code == 200
            assert await wait_for("device.removed") == {"user_id": "bob", "token": "tok-1", "reason": "unregistered"}
        # Every delivery verified with the receiver's secret.
        assert receiver.unverified == 0


def test_endpoint_mistakes_are_configuration_errors_naming_the_key() -> None:
    from realtimed.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(env={}, data={"webhooks": {"endpoints": [
            {"id": "a", "url": "https://example.com/h", "secrets": [new_secret()]},
            {"id": "a", "url": "ftp://example.com", "events": ["message.nope"], "secrets": ["plain", "x", "y"]},
            {"id": "b", "url": "https://user:pw@example.com/h", "secrets": ["whsec_c2hvcnQ="]},
        ]}})
    keys = {key for key, _ in caught.value.problems}
    assert keys == {
        "webhooks.endpoints[1].id", "webhooks.endpoints[1].url", "webhooks.endpoints[1].events[0]",
        "webhooks.endpoints[1].secrets", "webhooks.endpoints[1].secrets[0]", "webhooks.endpoints[1].secrets[1]",
        "webhooks.endpoints[1].secrets[2]", "webhooks.endpoints[2].url", "webhooks.endpoints[2].secrets[0]",
    }


async def test_redirects_are_not_followed(nursery: trio.Nursery, start_daemon: DaemonFactory) -> None:
    secret = new_secret()
    target, elsewhere = Receiver([secret]), Receiver([secret])
    await target.start(nursery)
    await elsewhere.start(nursery)
    target.status, target.location, target.body = 307, elsewhere.url, b"y" * 3000
    with trio.fail_after(30):
        daemon = await start_daemon(
            config([endpoint(target, [secret], events=["message.new"])], max_attempts=2, excerpt_chars=100)
        )
        async with api(daemon) as http:
            await send(http, await conversation(http), "alice", "one")
            await until_async(http, lambda found: len(found) == 2)
            assert [a["status"] for a in await attempts(http)] == [307, 307]
            assert all(a["error"] == "HTTP 307" for a in await attempts(http))
            assert all(a["response"] == "y" * 100 for a in await attempts(http))  # webhooks.excerpt_chars
        assert target.requests == 2 and elsewhere.requests == 0


async def test_https_endpoint_is_reached_at_the_pinned_address_with_its_own_name(
    nursery: trio.Nursery, start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    import ssl

    from tests.test_tls import make_cert

    cert, key = make_cert(tmp_path)  # a certificate for "localhost" only
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    secret = new_secret()
    receiver = Receiver([secret], tls=server)
    await receiver.start(nursery)
    with trio.fail_after(30):
        # The name resolves once; the connection goes to that address, and TLS still checks "localhost".
        daemon = await start_daemon(
            config([endpoint(receiver, [secret], events=["message.new"])], ca_file=str(cert))
        )
        async with api(daemon) as http:
            await send(http, await conversation(http), "alice", "over tls")
            await until(lambda: len(receiver.received) == 1)
            assert receiver.received[0].headers["host"] == f"localhost:{receiver.port}"
            assert receiver.received[0].body["data"]["body"] == "over tls"
