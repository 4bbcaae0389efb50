"""Schemathesis over the daemon's own OpenAPI document.

The daemon runs in this test's Trio nursery on a real socket; schemathesis loads
the document from ``/server/v1/openapi.json`` and sends its requests (with
``requests``, in a worker thread, so the daemon keeps serving) to every
documented operation with the right credential: the development API key on the
server API, a user's JWT on the client REST. Every answer must pass the
``not_a_server_error`` check (no 5xx) and ``ignored_auth`` (without the credential,
or with a wrong one, the operation answers 401). Generation is bounded and
deterministic: a fixed seed, a fixed number of examples per operation, and a
timeout on every request so that a hang fails instead of stalling the suite.
What it found is pinned down in tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import httpx
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from tests.fake_fcm import FakeFcm
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

# A request that takes longer than this has hung (the daemon answers in milliseconds).
REQUEST_TIMEOUT_S: Final = 5.0
EXAMPLES_PER_OPERATION: Final = 10
FUZZ_SEED: Final = 20_240_601
# The SSE stream answers a valid request with a stream that never ends, which a
# request/response fuzzer can only read as a hang; tests/test_sse.py covers it, and
# its Last-Event-ID parsing is fuzzed in tests/test_fuzz_protocol.py.
NOT_FUZZED: Final = frozenset({("GET", "/api/v1/events")})

_FUZZ_SETTINGS: Final = settings(
    derandomize=True,
    database=None,
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)


def _credentials(path: str) -> dict[str, str]:
    if path.startswith("/server/v1/"):
        return {"Authorization": f"Bearer {API_KEY}"}
    return {"Authorization": f"Bearer {token('fuzz-user', ttl=3600, rooms=['*'])}"}


def _fuzz_operation(operation: schemathesis.APIOperation, base_url: str, session: requests.Session) -> None:
    headers = _credentials(operation.path)
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
    )

    @_FUZZ_SETTINGS
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(
            response,
            checks=[not_a_server_error, ignored_auth],
            headers=headers,
            transport_kwargs={"base_url": base_url, "session": session, "timeout": REQUEST_TIMEOUT_S},
        )

    run()


def _fuzz(schema_url: str, base_url: str) -> list[str]:
    """Run every operation's examples (in a worker thread); returns the labels fuzzed."""
    schema = schemathesis.openapi.from_url(
        schema_url, config=schemathesis.Config(seed=FUZZ_SEED), timeout=REQUEST_TIMEOUT_S
    )
    fuzzed: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if (operation.method.upper(), operation.path) in NOT_FUZZED:
                continue
            _fuzz_operation(operation, base_url, session)
            fuzzed.append(operation.label)
    return fuzzed


async def test_every_documented_operation_survives_schemathesis(
    start_daemon: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(120):
        # Push goes to a fake FCM, so that the push operations run rather than answer
        # 503 (push not configured).
        fcm = FakeFcm()
        await nursery.start(fcm.serve, tmp_path)
        daemon = await start_daemon(
            {"namespaces": [{"prefix": "job:", "history_size": 10}], "push": fcm.push_config(tmp_path)}
        )
        base_url = daemon.url()
        # abandon_on_cancel: a hang inside requests still fails this test at the deadline.
        fuzzed = await trio.to_thread.run_sync(
            _fuzz, f"{base_url}/server/v1/openapi.json", base_url, abandon_on_cancel=True
        )
    # Both doors were fuzzed, each operation with its own credential.
    assert "POST /server/v1/publish" in fuzzed and "GET /api/v1/notifications" in fuzzed
    assert len(fuzzed) >= 30, fuzzed


async def test_the_document_names_each_doors_credential(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            doc = (await client.get("/server/v1/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["userToken"]["scheme"] == "bearer" and schemes["userToken"]["bearerFormat"] == "JWT"
    assert schemes["userTokenQuery"] == {**schemes["userTokenQuery"], "type": "apiKey", "in": "query", "name": "token"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if path == "/server/v1/openapi.json":
                expected: list[dict[str, Any]] = []
            elif path == "/api/v1/events":
                expected = [{"userToken": []}, {"userTokenQuery": []}]
            elif path.startswith("/server/v1/"):
                expected = [{"apiKey": []}]
            else:
                expected = [{"userToken": []}]
            assert operation["security"] == expected, (method, path)
