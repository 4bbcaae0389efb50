"""What sockets that come and go leave behind on a node: nothing that grows with them.

Each test opens and closes many sessions and counts the entries of a structure
that once kept one per session for good (found by ``bench/soak.py --tracemalloc``).
"""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from realtimed.gateway import gateway as gateway_module
from tests.fixtures.daemon import DaemonFactory
from tests.fixtures.tokens import token

CYCLES = 40


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.25)


async def test_token_timers_of_closed_sessions_do_not_pile_up(
    start_daemon: DaemonFactory, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each session arms two timers (session.expiring, then the 4004 close) a token's lifetime
    # ahead; a closed session's stayed in the heap until then (a day with day-long tokens).
    monkeypatch.setattr(gateway_module, "_EXPIRY_SLACK", 8)
    with trio.fail_after(3600):
        # Nothing else ticks meanwhile (each timer wake-up is an autojump waited out in real time).
        daemon = await start_daemon({
            "jobs": {"enabled": False}, "gateway": {"heartbeat_s": 3600.0},
            "presence": {"away_after_s": 86400.0}, "broker": {"history_sweep_s": 3600.0},
        })
        gateway = daemon.services.gateway
        url = daemon.url().replace("http", "ws", 1) + "/ws?token="
        async with open_websocket_url(url + token("keeper", ttl=600)) as keeper:
            assert orjson.loads(await keeper.get_message())["event"] == "session.ready"
            for i in range(CYCLES):
                async with open_websocket_url(url + token(f"churn{i}", ttl=3600)) as ws:
                    assert orjson.loads(await ws.get_message())["event"] == "session.ready"
            while len(gateway.sessions) > 1:
                await trio.sleep(0.01)
            # The live sessions' timers (three at most each) over the slack, against two per cycle before.
            assert len(gateway._expiry) <= 8 + 3 * 2 + 2
            # The live session kept its timers: its token still ends it, with notice.
            assert orjson.loads(await keeper.get_message())["event"] == "session.expiring"
            with pytest.raises(ConnectionClosed) as closed:
                await keeper.get_message()
            assert closed.value.reason.code == 4004
