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
from typing import Any, Final

import attrs
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
