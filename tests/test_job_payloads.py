"""Typed job payloads: every kind's payload round-trips, the shapes stored by
earlier versions decode, and a payload that does not decode fails its job at
once with the field named.

The literal payloads below are what the previous version of realtimed stored;
they must keep decoding (jobs queued before an upgrade run after it) and the
payloads this version writes must keep that shape (a node not yet upgraded runs
them).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import orjson
import pytest
import trio
import trio.testing

from realtimed.clock import TrioWallClock
from realtimed.config import RetentionConfig
from realtimed.jobs import JobContext, JobType, PayloadError, register_builtin_kinds
from realtimed.jobs.builtin import (
    DEVICES_STALE,
    NOOP,
    RETENTION_JOBS,
    RETENTION_MESSAGES,
    RETENTION_NOTIFICATIONS,
    NoopPayload,
    RetentionPayload,
)
from realtimed.jobs.payload import opt_int, req_str
from realtimed.notify.checks import (
    ConversationCheck,
    GroupCheck,
    MessageCheck,
    NotificationCheck,
    decode_check,
    encode_check,
)
from realtimed.notify.jobs import (
    CHAT_OFFLINE,
    NOTIFY_DIGEST,
    NOTIFY_PUSH,
    NOTIFY_SEND,
    ChatOffline,
    NotifyDigest,
    NotifyPlan,
    NotifySend,
    PlanItem,
    offline_job_spec,
)
from realtimed.push.jobs import PUSH_SEND, PushSend
from tests import test_jobs
from tests.test_jobs import LIMIT_S, Watched, make_runner

# The job runner's fixtures (assigned, so that tests may name them as parameters).
clock = test_jobs.clock
wall = test_jobs.wall
store_config = test_jobs.store_config
store = test_jobs.store


@attrs.frozen
class Resize:
    image_id: str
    width: int = 640

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "width": self.width}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resize:
        return cls(image_id=req_str(data, "image_id"), width=opt_int(data, "width") or 640)


RESIZE: Final = JobType("test.resize", Resize)


def test_job_type_encodes_its_class_only_and_decodes_objects_only() -> None:
    assert RESIZE.encode(Resize("img", 10)) == {"image_id": "img", "width": 10}
    assert RESIZE.decode({"image_id": "img"}) == Resize("img")
    with pytest.raises(TypeError):
        RESIZE.encode(NoopPayload())  # type: ignore[arg-type]
    for bad, field in (([1], "payload"), ({"image_id": 5}, "image_id"), ({"image_id": "i", "width": True}, "width")):
        with pytest.raises(PayloadError) as info:
            RESIZE.decode(bad)  # type: ignore[arg-type]
        assert info.value.field == field


def test_builtin_payloads_round_trip_and_decode_the_old_shapes() -> None:
    for kind in (RETENTION_NOTIFICATIONS, RETENTION_JOBS, RETENTION_MESSAGES, DEVICES_STALE):
        for value in (RetentionPayload(), RetentionPayload(days=0.0), RetentionPayload(days=2.5)):
            assert kind.decode(kind.encode(value)) == value
        assert kind.decode({}) == RetentionPayload()
        assert kind.decode({"days": 3}) == RetentionPayload(days=3.0)
        assert kind.decode(None) == RetentionPayload()
        for days in ("3", -1, True, float("inf"), [1]):
            with pytest.raises(PayloadError, match="days: must be a non-negative number"):
                kind.decode({"days": days})
    assert NOOP.decode({"anything": [1, 2]}) == NoopPayload()
    assert NOOP.encode(NoopPayload()) == {}


async def test_runner_hands_the_decoded_payload_and_fails_one_that_does_not_decode(
    store: Watched, wall: TrioWallClock, clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(LIMIT_S):
        runner = make_runner(store, wall)
        got: list[Resize] = []

        async def resize(ctx: JobContext, payload: Resize) -> None:
            got.append(payload)

        runner.register(RESIZE, resize)
        register_builtin_kinds(runner, retention=RetentionConfig())
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            good = await runner.enqueue(RESIZE, Resize("img-1", 320))
            assert good.kind == "test.resize" and good.payload == {"image_id": "img-1", "width": 320}
            await store.wait_status(good.id, "succeeded")
            # Stored by something else (an older node, an operator, a cron entry): the handler never runs.
            bad = await runner.enqueue("test.resize", {"image_id": ["img-2"]})
            days = await runner.enqueue("retention.jobs", {"days": "ten"})
            failed = await store.wait_status(bad.id, "failed")
            failed_days = await store.wait_status(days.id, "failed")
            nursery.cancel_scope.cancel()
        assert got == [Resize("img-1", 320)]
        assert failed.attempts == 1 and failed.last_error == "DoNotRetry: invalid payload: image_id: must be a string"
        assert failed_days.attempts == 1
        assert failed_days.last_error == "DoNotRetry: invalid payload: days: must be a non-negative number"


# ---------------------------------------------------------------------------
# notify, chat and push kinds: what the previous version stored
# ---------------------------------------------------------------------------

T_SINCE = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T_UNTIL = datetime(2026, 3, 2, 9, 10, tzinfo=UTC)

OLD_NOTIFY_SEND: Final = {
    "user_ids": ["bob", "cy"],
    "type": "announcement",
    "vars": {"title": "Maintenance", "body": "at noon"},
    "data": {"link": "https://app.example"},
    "dedupe_key": None,
}
OLD_NOTIFY_PUSH: Final = {
    "type": "post_like",
    "vars": {"liker_name": "Ann", "post_id": "p1"},
    "data": {},
    "dedupe_key": "like:p1:ann",
    "request_id": "5f1c2a9b0d3e4f61",
    "items": [["bob", "n-1", 7], ["cy", None, None]],
}
OLD_NOTIFY_DIGEST: Final = {
    "user_id": "bob",
    "type": "post_like",
    "group_key": "post_like:p1",
    "since": "2026-03-02T09:00:00.000Z",
    "until": "2026-03-02T09:10:00.000Z",
    "vars": {"liker_name": "Ann", "post_id": "p1"},
    "data": {"notification_id": "n-1", "seq": 7, "type": "post_like"},
    "source": "inbox",
    "first_ref": "nn-1",
}
OLD_CHAT_DIGEST: Final = {
    "user_id": "bob",
    "type": "new_message",
    "group_key": "chat:c1",
    "since": "2026-03-02T09:00:00.000Z",
    "until": "2026-03-02T09:01:00.000Z",
    "vars": {"sender_name": "alice", "body": "hi", "conversation_id": "c1"},
    "data": {"type": "new_message", "conversation_id": "c1", "message_id": "m1", "seq": 3},
    "source": "chat",
    "first_ref": "mm1",
    "conversation_id": "c1",
}
# Chat queued it without message_id and seq, which the store added.
OLD_CHAT_OFFLINE: Final = {"conversation_id": "c1", "sender_id": "alice", "recipients": ["bob"], "message_id": "m1", "seq": 3}
OLD_PUSH_SENDS: Final = [
    {
        "message": {"notification": {"title": "New like", "body": "Ann liked your post"}, "data": {"seq": "7"}},
        "ref": "nn-1",
        "token": "tok-bob",
        "user_id": "bob",
        "check": {"kind": "notification", "user_id": "bob", "id": "n-1", "seq": 7},
    },
    {
        "message": {"notification": {"title": "alice", "body": "hi"}},
        "ref": "mm1",
        "token": "tok-bob",
        "user_id": "bob",
        "check": {"kind": "message", "user_id": "bob", "conversation_id": "c1", "seq": 3},
    },
    {
        "message": {"notification": {"title": "New likes"}},
        "ref": "ngjob1",
        "token": "tok-bob",
        "user_id": "bob",
        "check": {
            "kind": "group", "user_id": "bob", "group_key": "post_like:p1",
            "since": "2026-03-02T09:00:00.000Z", "until": "2026-03-02T09:10:00.000Z",
        },
    },
    {
        "message": {"notification": {"title": "alice"}},
        "ref": "mgjob2",
        "token": "tok-bob",
        "user_id": "bob",
        "check": {"kind": "conversation", "user_id": "bob", "conversation_id": "c1"},
    },
    {"message": {"notification": {"title": "Sale"}}, "ref": "p0a1b2c3d4e5f6a7b", "topic": "news"},
    {"message": {"notification": {"title": "Direct"}}, "ref": "p0a1b2c3d4e5f6a7c", "token": "tok-x"},
]


def test_old_notify_payloads_decode_and_encode_back_unchanged() -> None:
    send = NOTIFY_SEND.decode(OLD_NOTIFY_SEND)
    assert send == NotifySend(("bob", "cy"), "announcement", OLD_NOTIFY_SEND["vars"], {"link": "https://app.example"})
    plan = NOTIFY_PUSH.decode(OLD_NOTIFY_PUSH)
    assert plan.items == (PlanItem("bob", "n-1", 7, ("push",)), PlanItem("cy", None, None, ("push",)))
    assert (plan.dedupe_key, plan.request_id) == ("like:p1:ann", "5f1c2a9b0d3e4f61")
    digest = NOTIFY_DIGEST.decode(OLD_NOTIFY_DIGEST)
    assert (digest.since, digest.until, digest.source, digest.channels) == (T_SINCE, T_UNTIL, "inbox", ("push",))
    chat_digest = NOTIFY_DIGEST.decode(OLD_CHAT_DIGEST)
    assert (chat_digest.source, chat_digest.conversation_id) == ("chat", "c1")
    offline = CHAT_OFFLINE.decode(OLD_CHAT_OFFLINE)
    assert offline == ChatOffline("m1", ("bob",), 3, "c1", "alice")
    # What this version writes is what the previous one wrote (and reads).
    for kind, old in (
        (NOTIFY_SEND, OLD_NOTIFY_SEND),
        (NOTIFY_PUSH, OLD_NOTIFY_PUSH),
        (NOTIFY_DIGEST, OLD_NOTIFY_DIGEST),
        (NOTIFY_DIGEST, OLD_CHAT_DIGEST),
        (CHAT_OFFLINE, OLD_CHAT_OFFLINE),
    ):
        assert kind.encode(kind.decode(old)) == old, kind.kind


def test_chat_offline_reads_every_name_chat_used_for_the_recipients() -> None:
    base = {"message_id": "m1", "seq": 3}
    for key in ("recipient_ids", "user_ids", "recipients", "to"):
        assert CHAT_OFFLINE.decode({**base, key: ["bob", 7, "cy"]}).recipients == ("bob", "cy")
    assert CHAT_OFFLINE.decode({**base, "recipient_ids": "bob", "to": ["cy"]}).recipients == ("cy",)
    assert CHAT_OFFLINE.decode(base).recipients == ()
    # The spec chat queues with a message is completed by the store; the kind is named once.
    spec = offline_job_spec(conversation_id="c1", sender_id="alice", recipients=["bob"], dedupe_key="k")
    assert (spec.kind, spec.queue) == ("chat.offline", "default")
    assert CHAT_OFFLINE.decode({**spec.payload, "message_id": "m1", "seq": 3}) == ChatOffline(
        "m1", ("bob",), 3, "c1", "alice"
    )


def test_old_push_payloads_and_every_check_kind_decode_and_encode_back_unchanged() -> None:
    decoded = [PUSH_SEND.decode(old) for old in OLD_PUSH_SENDS]
    assert [type(p.check) for p in decoded] == [
        NotificationCheck, MessageCheck, GroupCheck, ConversationCheck, type(None), type(None),
    ]
    assert decoded[0].check == NotificationCheck("bob", "n-1", 7)
    assert decoded[2].check == GroupCheck("bob", "post_like:p1", T_SINCE, T_UNTIL)
    assert (decoded[4].topic, decoded[4].token, decoded[4].user_id) == ("news", None, None)
    for old, value in zip(OLD_PUSH_SENDS, decoded, strict=True):
        assert PUSH_SEND.encode(value) == old


def test_every_kind_round_trips() -> None:
    values: list[tuple[JobType[Any], Any]] = [
        (NOTIFY_SEND, NotifySend(("a",), "t", {"x": 1}, {"y": [1, {"z": None}]}, "k")),
        (NOTIFY_SEND, NotifySend((), "t")),
        (NOTIFY_PUSH, NotifyPlan("t", (PlanItem("a", "n1", 1, ("push", "email")), PlanItem("b")), {"v": "1"}, {}, None, "r")),
        (NOTIFY_PUSH, NotifyPlan("t", ())),
        (NOTIFY_DIGEST, NotifyDigest("a", "t", "t:g", T_SINCE, T_UNTIL, "nn1", "inbox", {}, {}, None, ("push", "sms"))),
        (NOTIFY_DIGEST, NotifyDigest("a", "t", "chat:c", T_SINCE, T_UNTIL, "mm1", "chat", conversation_id="c")),
        (CHAT_OFFLINE, ChatOffline("m1", ("a", "b"), 4, "c", "s", "Sam")),
        (CHAT_OFFLINE, ChatOffline("m1", ())),
        (PUSH_SEND, PushSend({"notification": {}}, "r", token="t", user_id="u", check=MessageCheck("u", "c", 2))),
        (PUSH_SEND, PushSend({}, "r", topic="news", check=ConversationCheck("u", "c"))),
        (RETENTION_JOBS, RetentionPayload(1.5)),
        (NOOP, NoopPayload()),
    ]
    for kind, value in values:
        stored = kind.encode(value)
        assert kind.decode(stored) == value, kind.kind
        # What is stored is plain JSON: it survives the store's encoding.
        assert kind.decode(orjson.loads(orjson.dumps(stored))) == value, kind.kind
    # Channels other than push are written only when they differ from what older nodes assume.
    assert NOTIFY_PUSH.encode(values[2][1])["items"] == [["a", "n1", 1, ["push", "email"]], ["b", None, None]]
    assert "channels" not in NOTIFY_DIGEST.encode(values[5][1])
    assert NOTIFY_DIGEST.encode(values[4][1])["channels"] == ["push", "sms"]


def test_check_union_round_trips_ignores_unknown_kinds_and_names_bad_fields() -> None:
    for check in (
        NotificationCheck("u", "n1", 3),
        MessageCheck("u", "c", 9),
        GroupCheck("u", "g", T_SINCE, T_UNTIL),
        ConversationCheck("u", "c"),
    ):
        assert decode_check(encode_check(check)) == check
    assert decode_check(None) is None
    assert decode_check({"kind": "from_a_newer_node", "anything": 1}) is None  # sent unchecked, as before
    for bad, field in (
        ({"kind": "notification", "user_id": "u", "id": "n1"}, "check.seq"),
        ({"kind": "notification", "user_id": "u", "id": "n1", "seq": "3"}, "check.seq"),
        ({"kind": "message", "user_id": 5, "conversation_id": "c", "seq": 1}, "check.user_id"),
        ({"kind": "group", "user_id": "u", "group_key": "g", "since": "yesterday", "until": "2026-03-02T09:10:00Z"},
         "check.since"),
        ({"kind": None}, "check.kind"),
        ("notification", "check"),
    ):
        with pytest.raises(PayloadError) as info:
            decode_check(bad)
        assert info.value.field == field, bad


def test_malformed_payloads_name_the_field() -> None:
    cases: list[tuple[JobType[Any], dict[str, Any], str]] = [
        (NOTIFY_SEND, {"type": "t"}, "user_ids"),
        (NOTIFY_SEND, {"user_ids": ["a", 1], "type": "t"}, "user_ids[1]"),
        (NOTIFY_SEND, {"user_ids": [], "type": "t", "vars": [1]}, "vars"),
        (NOTIFY_PUSH, {"type": "t"}, "items"),
        (NOTIFY_PUSH, {"type": "t", "items": [["a", None, None], "b"]}, "items[1]"),
        (NOTIFY_PUSH, {"type": "t", "items": [[None, None, None]]}, "items[0][0]"),
        (NOTIFY_PUSH, {"type": "t", "items": [["a", "n1", None]]}, "items[0][2]"),
        (NOTIFY_PUSH, {"type": "t", "items": [["a", None, None, []]]}, "items[0][3]"),
        (NOTIFY_PUSH, {"type": "t", "items": [["a", None, None, [1]]]}, "items[0][3][0]"),
        (NOTIFY_DIGEST, {**OLD_NOTIFY_DIGEST, "until": 5}, "until"),
        (NOTIFY_DIGEST, {k: v for k, v in OLD_CHAT_DIGEST.items() if k != "conversation_id"}, "conversation_id"),
        (CHAT_OFFLINE, {"recipients": ["b"]}, "message_id"),
        (CHAT_OFFLINE, {"message_id": "m1", "seq": "3"}, "seq"),
        (PUSH_SEND, {"message": {}, "ref": "r"}, "token"),
        (PUSH_SEND, {"message": {}, "token": "t", "topic": "x"}, "token"),
        (PUSH_SEND, {"message": "hi", "token": "t"}, "message"),
        (PUSH_SEND, {"message": {}, "token": "t", "check": {"kind": "message", "user_id": "u"}}, "check.conversation_id"),
    ]
    for kind, payload, field in cases:
        with pytest.raises(PayloadError) as info:
            kind.decode(payload)
        assert info.value.field == field, (kind.kind, payload, info.value.message)
