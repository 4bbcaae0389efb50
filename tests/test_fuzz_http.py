"""Schemathesis over the daemon's own OpenAPI documents.

The daemon runs in this test's Trio nursery on a real socket; schemathesis loads
each document, the server one from ``/server/v1/openapi.json`` and the client one
from ``/api/v1/openapi.json``, and sends its requests (with ``requests``, in a
worker thread, so the daemon keeps serving) to every documented operation with
the right credential: the development API key on the server API, a user's JWT on
the client REST. Every answer must pass the ``not_a_server_error`` check (no 5xx)
and ``ignored_auth`` (without the credential, or with a wrong one, the operation
answers 401). Generation is bounded and deterministic: a fixed seed, a fixed
number of examples per operation, and a timeout on every request so that a hang
fails instead of stalling the suite. What it found is pinned down in
tests/test_fuzz_regressions.py.
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
from schemathesis.specs.openapi.checks import ignored_auth, response_schema_conformance

from tests.fake_fcm import FakeFcm
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

# A request that takes longer than this has hung (the daemon answers in milliseconds).
REQUEST_TIMEOUT_S: Final = 5.0
EXAMPLES_PER_OPERATION: Final = 10
# Each op of POST /api/v1/ops/{op} is one operation of the client document; its data
# is checked by the op's own validator, which tests/test_fuzz_protocol.py fuzzes
# for every op, so here a few examples each try the HTTP door around it.
EXAMPLES_PER_OP: Final = 4
OPS_PREFIX: Final = "/api/v1/ops/"
FUZZ_SEED: Final = 20_240_601
# The SSE streams answer a valid request with a stream that never ends, which a
# request/response fuzzer can only read as a hang; tests/test_sse.py covers the client's
# (its Last-Event-ID parsing is fuzzed in tests/test_fuzz_protocol.py), tests/test_console.py
# the console's stats stream (which takes no parameter).
NOT_FUZZED: Final = frozenset({("GET", "/api/v1/events"), ("GET", "/server/v1/stats/stream")})



def _settings(examples: int) -> settings:
    return settings(
        derandomize=True,
        database=None,
        max_examples=examples,
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

    @_settings(EXAMPLES_PER_OP if operation.path.startswith(OPS_PREFIX) else EXAMPLES_PER_OPERATION)
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(
            response,
            checks=[not_a_server_error, ignored_auth, response_schema_conformance],
            headers=headers,
            transport_kwargs={"base_url": base_url, "session": session, "timeout": REQUEST_TIMEOUT_S},
        )

    run()


def _fuzz(schema_urls: list[str], base_url: str) -> list[str]:
    """Run every operation's examples of each document (in a worker thread); returns the labels fuzzed."""
    fuzzed: list[str] = []
    with requests.Session() as session:
        for schema_url in schema_urls:
            schema = schemathesis.openapi.from_url(
                schema_url, config=schemathesis.Config(seed=FUZZ_SEED), timeout=REQUEST_TIMEOUT_S
            )
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
        documents = [f"{base_url}/server/v1/openapi.json", f"{base_url}/api/v1/openapi.json"]
        fuzzed = await trio.to_thread.run_sync(_fuzz, documents, base_url, abandon_on_cancel=True)
    # Both doors were fuzzed, each operation with its own credential: the server API,
    # the jobs routes, the client REST and each op of POST /api/v1/ops/{op}.
    for label in ("POST /server/v1/publish", "GET /server/v1/jobs", "GET /api/v1/notifications", "POST /api/v1/ops/message.send"):
        assert label in fuzzed, fuzzed
    assert len(fuzzed) >= 70, fuzzed


async def test_each_document_names_its_doors_credential(start_daemon: DaemonFactory) -> None:
    with trio.fail_after(20):
        daemon = await start_daemon()
        async with httpx.AsyncClient(base_url=daemon.url()) as client:
            # Both documents are fetched without a credential.
            server = await client.get("/server/v1/openapi.json")
            user = await client.get("/api/v1/openapi.json")
    assert server.status_code == 200 and user.status_code == 200, (server.text, user.text)
    server_doc, client_doc = server.json(), user.json()
    # Each document names its own door's schemes, and only those.
    assert set(server_doc["components"]["securitySchemes"]) == {"apiKey"}
    assert set(client_doc["components"]["securitySchemes"]) == {"userToken", "userTokenQuery"}
    schemes = {**server_doc["components"]["securitySchemes"], **client_doc["components"]["securitySchemes"]}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["userToken"]["scheme"] == "bearer" and schemes["userToken"]["bearerFormat"] == "JWT"
    assert schemes["userTokenQuery"] == {**schemes["userTokenQuery"], "type": "apiKey", "in": "query", "name": "token"}
    for doc, prefix in ((server_doc, "/server/v1/"), (client_doc, "/api/v1/")):
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                if path.endswith("/openapi.json") or path in ("/healthz", "/readyz", "/metrics"):
                    expected: list[dict[str, Any]] = []
                elif path == "/api/v1/events":
                    expected = [{"userToken": []}, {"userTokenQuery": []}]
                elif path.startswith("/server/v1/"):
                    expected = [{"apiKey": []}]
                else:
                    expected = [{"userToken": []}]
                assert path.startswith(prefix) or not expected, (method, path)
                assert operation["security"] == expected, (method, path)
