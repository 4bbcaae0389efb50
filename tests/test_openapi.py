"""The OpenAPI documents against the app that serves them.

- Every route of the app's URL map is described in exactly one of the two
  documents (the server one, the client one), and every described operation is a
  route; ``POST /api/v1/ops/{op}`` is described once per op of the client REST.
- Each operation has a unique ``operationId``, a typed 200 answer, typed error
  answers and the credential of its door.
- Every ``Route`` a capability module declares is served (a route left out of
  its module's ``routes()`` would be neither served nor described).
- The bounds a request type's schema states are the bounds its check applies: a
  value at a bound is accepted, one just past it is refused naming the field.
- Over a real socket: a bad path variable is refused before the body is read,
  as before the routes were typed; both documents need no credential.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, cast

import httpx
import pytest
import trio

from realtimed import protocol
from realtimed.api.routes import (
    CLIENT_PREFIX,
    SERVER_PREFIX,
    Fields,
    Kind,
    RequestParts,
    Route,
    openapi_path,
    wire_fields,
)
from realtimed.config import Config
from realtimed.errors import ApiError, NotFound, ValidationFailed
from realtimed.http.app import capability_routes, create_app
from realtimed.http.openapi import DOCUMENT_DOORS, build_documents, op_operation_id
from realtimed.services import Services
from tests.fake_fcm import FakeFcm
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token

# Routes of the URL map that no document describes, each with why. The operator's
# endpoints are in the server document; [[http.static]] folders add routes only when
# configured (none here).
NOT_DESCRIBED: Final[Mapping[tuple[str, str], str]] = {
    ("GET", "/dev/token"): "development only: exists on a loopback listener with the development secret",
    ("GET", "/console"): "the operator console's page (a web page, not an operation)",
    ("GET", "/console/"): "the operator console's page",
    ("GET", "/console/console.js"): "the operator console's script",
    ("GET", "/console/console.css"): "the operator console's style sheet",
    ("GET", "/email/unsubscribe/<token>"): "an HTML page for people, reached from an email's link (docs/protocol.md)",
    ("POST", "/email/unsubscribe/<token>"): "RFC 8058 one-click unsubscribe, a form post from mail clients",
}
# The modules whose routes() the app serves (realtimed/http/app.py, capability_routes).
ROUTE_MODULES: Final = (
    "realtimed.http.app",
    "realtimed.http.openapi",
    "realtimed.http.server_api",
    "realtimed.http.jobs_api",
    "realtimed.http.console",
    "realtimed.http.client_api",
    "realtimed.chat",
    "realtimed.presence",
    "realtimed.notify.http",
    "realtimed.notify.log_http",
    "realtimed.email.http",
    "realtimed.push.http",
    "realtimed.webhooks.http",
    "realtimed.feeds.http",
)
OPS_RULE: Final = f"{CLIENT_PREFIX}/ops/<op>"
REST_OPS: Final = sorted(protocol.OPS - protocol.SOCKET_ONLY_OPS)
OPERATOR_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
DOCUMENT_PATHS: Final = frozenset({f"{SERVER_PREFIX}/openapi.json", f"{CLIENT_PREFIX}/openapi.json"})
METHODS: Final = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    return build_documents(capability_routes(), Config())


def _operations(doc: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert method in METHODS, (method, path)
            yield path, method, operation


def _served() -> set[tuple[str, str]]:
    # Building the app reads only the configuration; no service runs here.
    app = create_app(cast(Services, SimpleNamespace(config=Config())))
    served: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            served.add((method, rule.rule))
    return served


def test_every_route_is_in_exactly_one_document(documents: dict[str, dict[str, Any]]) -> None:
    described = {
        name: {(method.upper(), path) for path, method, _ in _operations(doc)} for name, doc in documents.items()
    }
    seen: set[tuple[str, str]] = set()
    served = _served()
    assert served, "the app serves nothing"
    for method, rule in sorted(served):
        if (method, rule) in NOT_DESCRIBED:
            assert all((method, openapi_path(rule)) not in ops for ops in described.values())
            continue
        if rule == OPS_RULE:
            # One operation per op; each in the client document only.
            expected = {(method, openapi_path(rule.replace("<op>", op))) for op in REST_OPS}
        else:
            expected = {(method, openapi_path(rule))}
        holders = [name for name, ops in described.items() if expected <= ops]
        assert len(holders) == 1, f"{method} {rule} is described in {holders or 'no document'}"
        assert all(not expected & ops for name, ops in described.items() if name not in holders), (method, rule)
        seen |= expected
    # Nothing described that the app does not serve.
    assert set().union(*described.values()) == seen
    # The doors sort themselves: the server document has /server/v1 and the operator's
    # endpoints, the client document /api/v1.
    assert all(path.startswith(SERVER_PREFIX) or path in OPERATOR_PATHS for _, path in described["server"])
    assert all(path.startswith(CLIENT_PREFIX) for _, path in described["client"])
    # The routes the server API had before (and the jobs routes) are all there.
    for label in ("POST /server/v1/publish", "GET /server/v1/jobs", "POST /server/v1/jobs/{job_id}/retry"):
        method, path = label.split(" ")
        assert (method, path) in described["server"], label


def _typed(schema: Any) -> bool:
    """A schema that says what the answer is: a reference, a combination, or a type with its shape."""
    if not isinstance(schema, dict) or not schema:
        return False
    if "$ref" in schema or "oneOf" in schema or "anyOf" in schema or "allOf" in schema:
        return True
    if schema.get("type") == "object":
        return "properties" in schema or "additionalProperties" in schema
    return "type" in schema


def test_each_operation_is_named_typed_and_guarded(documents: dict[str, dict[str, Any]]) -> None:
    operation_ids: list[str] = []
    for name, doc in documents.items():
        schemes = doc["components"]["securitySchemes"]
        for path, method, operation in _operations(doc):
            label = f"{method.upper()} {path}"
            operation_ids.append(operation["operationId"])
            assert operation["summary"] and operation["tags"], label
            ok = operation["responses"]["200"]["content"]
            assert len(ok) == 1, label
            ((content_type, media),) = ok.items()
            assert _typed(media["schema"]), f"{label}: its 200 answer is untyped: {media['schema']}"
            for status, answer in operation["responses"].items():
                if status != "200":
                    assert 400 <= int(status) < 600, label
                    assert _typed(answer["content"]["application/json"]["schema"]), (label, status)
            security = [next(iter(s)) for s in operation["security"]]
            assert set(security) <= set(schemes), label
            if path in DOCUMENT_PATHS or path in OPERATOR_PATHS:
                assert security == [], label
            elif path == f"{CLIENT_PREFIX}/events":
                assert security == ["userToken", "userTokenQuery"] and content_type == "text/event-stream"
            elif name == "server":
                assert security == ["apiKey"], label
                assert "401" in operation["responses"], label
            else:
                assert security == ["userToken"], label
                assert {"401", "403", "429"} <= set(operation["responses"]), label
            if "requestBody" in operation or operation.get("parameters"):
                assert "400" in operation["responses"], label
            for parameter in operation.get("parameters", []):
                assert _typed(parameter["schema"]), (label, parameter["name"])
    assert len(operation_ids) == len(set(operation_ids)), "operationIds are not unique"
    for op in REST_OPS:
        assert op_operation_id(op) in operation_ids
    # Each document names the schemes it uses, and only its door's.
    assert set(documents["server"]["components"]["securitySchemes"]) == {"apiKey"}
    assert set(documents["client"]["components"]["securitySchemes"]) == {"userToken", "userTokenQuery"}
    assert set(DOCUMENT_DOORS) == set(documents)


def test_op_operations_are_the_op_specs(documents: dict[str, dict[str, Any]]) -> None:
    paths = documents["client"]["paths"]
    for op in REST_OPS:
        operation = paths[f"{CLIENT_PREFIX}/ops/{op}"]["post"]
        spec = protocol.OP_SPECS[op]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == spec.data
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == spec.reply


def test_every_declared_route_is_served() -> None:
    served = {id(r) for r in capability_routes()}
    declared: list[str] = []
    for module_name in ROUTE_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if isinstance(value, Route):
                declared.append(f"{module_name}.{name}")
                assert id(value) in served, f"{module_name}.{name} is not in its module's routes()"
    assert len(declared) == len(served)


# -- the schema's bounds are the check's ---------------------------------------------------------


def _fields() -> Iterator[tuple[str, str, str, Kind]]:
    """(route, field, where, kind) of every field of every typed request."""
    for served in capability_routes():
        if isinstance(served.accepts, Fields):
            for _, wire_name, declared in wire_fields(served.accepts.cls):
                if not declared.kind.spread:
                    yield f"{served.method} {served.rule}", wire_name, declared.where, declared.kind


def _parts(cfg: Config, path: Mapping[str, str] | None = None) -> RequestParts:
    async def no_body() -> dict[str, Any]:
        raise AssertionError("a single field does not read the body")

    return RequestParts(cfg=cfg, path=path or {}, query={}, read_body=no_body)


def _accepts(kind: Kind, name: str, value: Any, cfg: Config, where: str = "body") -> bool:
    try:
        kind.parse({name: value}, name, _parts(cfg))
    except NotFound:
        assert where == "path", name  # an id that cannot exist is simply not found
        return False
    except ApiError as exc:
        assert isinstance(exc, ValidationFailed) and exc.field is not None, exc
        # The field at fault is named (a path's notification id is "id", as it always was).
        assert exc.field in (name, "id") or exc.field.startswith(f"{name}["), (name, exc.to_dict())
        return False
    return True


def _item(schema: dict[str, Any], i: int) -> str:
    """The i-th distinct valid item of a list field (user ids, room names, tokens)."""
    return f"u{i}"


def _bounds() -> Iterator[tuple[str, str, str, Kind, dict[str, Any]]]:
    cfg = Config()
    for label, name, where, kind in _fields():
        schema = kind.schema(cfg)
        if any(k in schema for k in ("maxLength", "maxItems", "maximum")):
            yield label, name, where, kind, schema


BOUNDED: Final = list(_bounds())


@pytest.mark.parametrize(("label", "name", "where", "kind", "schema"), BOUNDED, ids=[f"{b[0]} {b[1]}" for b in BOUNDED])
def test_a_fields_schema_bounds_are_its_checks(label: str, name: str, where: str, kind: Kind, schema: dict[str, Any]) -> None:
    cfg = Config()
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    (kind_of,) = [t for t in types if t != "null"]
    as_text = where == "query" and kind_of == "integer"  # a query parameter arrives as text
    # A check after the length (an RFC 3339 time) refuses "xxx" for its own reason:
    # only the refusal past the bound is the length's.
    checked_further = getattr(kind, "then", None) is not None and "pattern" not in schema
    if kind_of == "string":
        longest = "x" * schema["maxLength"]
        if not checked_further:
            assert _accepts(kind, name, longest, cfg, where), (label, name)
        assert not _accepts(kind, name, longest + "x", cfg, where), (label, name)
        if schema.get("minLength", 0) >= 1:
            assert not _accepts(kind, name, "", cfg, where) or where == "query", (label, name)
    elif kind_of == "array":
        most = schema["maxItems"]
        assert _accepts(kind, name, [_item(schema, i) for i in range(most)], cfg), (label, name)
        assert not _accepts(kind, name, [_item(schema, i) for i in range(most + 1)], cfg), (label, name)
        least = schema.get("minItems", 0)
        if least >= 1:
            assert not _accepts(kind, name, [], cfg), (label, name)
    else:
        top, bottom = schema["maximum"], schema["minimum"]
        step = 1 if kind_of == "integer" else 0.5
        for value, expected in ((top, True), (bottom, True), (top + step, False), (bottom - step, False)):
            given = str(value) if as_text else value
            assert _accepts(kind, name, given, cfg) is expected, (label, name, value)


def test_a_configured_limit_is_stated_as_configured() -> None:
    cfg = Config()
    bigger = build_documents(capability_routes(), _with_max_recipients(cfg, 7))
    body = bigger["server"]["paths"]["/server/v1/notifications"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["user_ids"]["maxItems"] == 7


def _with_max_recipients(cfg: Config, most: int) -> Config:
    import attrs

    return attrs.evolve(cfg, notify=attrs.evolve(cfg.notify, max_recipients=most))


# -- over a real socket ------------------------------------------------------------------------


async def test_the_order_of_checks_is_kept_and_the_documents_need_no_credential(
    start_daemon: DaemonFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        fcm = FakeFcm()
        await nursery.start(fcm.serve, tmp_path)
        daemon = await start_daemon({"push": fcm.push_config(tmp_path)})
        server = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=daemon.url()) as http:
            # A bad path variable is refused before the body is read (not: "body is not valid JSON").
            answer = await http.put("/server/v1/users/%01/contacts", headers=server, content=b"{nope")
            assert answer.status_code == 400 and answer.json()["error"]["field"] == "user_id", answer.text
            # The body is read once the path is good.
            answer = await http.put("/server/v1/users/alice/contacts", headers=server, content=b"{nope")
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "BAD_REQUEST", answer.text
            # A rule across fields comes before the fields: two targets name tokens, whatever the rest.
            answer = await http.post("/server/v1/push", headers=server, json={"tokens": ["t"], "topic": "x", "title": 5})
            assert answer.status_code == 400 and answer.json()["error"]["field"] == "tokens", answer.text
            # Then the message before its target: a bad title, then a bad token list.
            answer = await http.post("/server/v1/push", headers=server, json={"tokens": [""], "title": 5})
            assert answer.status_code == 400 and answer.json()["error"]["field"] == "title", answer.text
            answer = await http.post("/server/v1/push", headers=server, json={"tokens": [""]})
            assert answer.status_code == 400 and answer.json()["error"]["field"] == "tokens[0]", answer.text
            # Both documents are served without a credential, and each is the app's.
            for path, door in (("/server/v1/openapi.json", "server"), ("/api/v1/openapi.json", "client")):
                got = await http.get(path)
                assert got.status_code == 200, got.text
                assert got.json()["info"]["title"] == f"realtimed {door} API"
            # A user's token is not charged for the client document, and not needed.
            user = {"Authorization": f"Bearer {token('doc-reader', ttl=600)}"}
            for _ in range(3):
                assert (await http.get("/api/v1/openapi.json", headers=user)).status_code == 200


def test_a_preferences_entry_read_can_be_sent_back(documents: dict[str, dict[str, Any]]) -> None:
    """docs/protocol.md 8.3: an entry of GET /notifications/preferences may be PUT as it is."""
    import jsonschema

    doc = documents["client"]
    item = doc["paths"][f"{CLIENT_PREFIX}/notifications/preferences"]
    body = item["put"]["requestBody"]["content"]["application/json"]["schema"]
    read = {"type": "chat.message", "in_app": True, "push": False, "sms": True, "channels": ["in_app", "sms"]}
    schema = {**body, "components": doc.get("components", {})}
    jsonschema.validate({"types": [read]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"types": [{**read, "sms": "yes"}]}, schema)


# -- what the documents say the HTTP edge answers -----------------------------------------------


def test_every_operation_lists_the_edges_413_and_431(documents: dict[str, dict[str, Any]]) -> None:
    """A body over http.max_body_bytes and a head over gateway.max_head_bytes are answered to any request."""
    for _, doc in documents.items():
        for path, method, operation in _operations(doc):
            for status in ("413", "431"):
                answer = operation["responses"].get(status)
                assert answer is not None, (method, path, status)
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def _request_schema(doc: Mapping[str, Any], path: str, method: str) -> dict[str, Any]:
    body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return {**body, "components": doc["components"]}


def test_an_optional_body_field_may_be_null(documents: dict[str, dict[str, Any]]) -> None:
    """docs/protocol.md 4.1: a null field counts as absent, so ban_s: null is valid (and accepted)."""
    import jsonschema

    schema = _request_schema(documents["server"], "/server/v1/users/{user_id}/disconnect", "post")
    jsonschema.validate({"ban_s": None, "session_id": None}, schema)
    jsonschema.validate({"ban_s": 60}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"ban_s": "60"}, schema)
    # Exactly one target: a null one is not given; a field of the message may be null too.
    push = _request_schema(documents["server"], "/server/v1/push", "post")
    jsonschema.validate({"tokens": ["t"], "topic": None, "title": None}, push)
    for refused in ({"tokens": ["t"], "topic": "news"}, {"tokens": None, "topic": None}, {"title": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, push)
    # A required field stays required and not null.
    publish = _request_schema(documents["server"], "/server/v1/publish", "post")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"room": None, "event": "e", "data": {}}, publish)


def test_scheduled_for_is_a_date_time(documents: dict[str, dict[str, Any]]) -> None:
    schema = _request_schema(documents["server"], "/server/v1/notifications", "post")
    assert schema["properties"]["scheduled_for"]["format"] == "date-time"


def test_an_sse_records_data_is_the_json_of_its_event(documents: dict[str, dict[str, Any]]) -> None:
    """The schema of text/event-stream is that of one record: its data is text holding the event's JSON."""
    import json

    import jsonschema

    answer = documents["client"]["paths"][f"{CLIENT_PREFIX}/events"]["get"]["responses"]["200"]["content"]
    schema = answer["text/event-stream"]["schema"]
    record = {"event": "job.progress", "id": "c1", "data": json.dumps({"event": "job.progress", "room": "job:1", "seq": 1, "data": {}})}
    jsonschema.validate(record, schema)
    data = schema["properties"]["data"]
    assert data["type"] == "string" and data["contentMediaType"] == "application/json"
    jsonschema.validate(json.loads(record["data"]), data["contentSchema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"data": "x", "id": 5}, schema)


async def test_allow_names_only_the_methods_a_path_serves(start_daemon: DaemonFactory) -> None:
    """A fixed path is not an id of its sibling rule: DELETE is not served at /notifications/preferences."""
    with trio.fail_after(20):
        # notification.delete at one call: a 405 at the fixed path is not charged to it (docs/protocol.md 8.3).
        limits = {"notification.delete": {"per": 1, "window_s": 3600}}
        daemon = await start_daemon({"gateway": {"op_limits": limits}})
        user = {"Authorization": f"Bearer {token('allow-reader', ttl=600)}"}
        async with httpx.AsyncClient(base_url=daemon.url(), headers=user) as http:
            for method, path, allow in (
                ("POST", "/notifications/preferences", "GET, HEAD, PATCH, PUT"),
                ("DELETE", "/notifications/preferences", "GET, HEAD, PATCH, PUT"),
                ("DELETE", "/notifications/preferences", "GET, HEAD, PATCH, PUT"),
                ("DELETE", "/notifications/read-all", "POST"),
                ("DELETE", "/notifications/unread-count", "GET, HEAD"),
                ("PUT", "/notifications/unread-count", "GET, HEAD"),
            ):
                answer = await http.request(method, CLIENT_PREFIX + path)
                assert answer.status_code == 405, (method, path, answer.text)
                assert answer.headers["Allow"] == allow, (method, path)
                assert answer.json()["error"]["code"] == "BAD_REQUEST"
            # The rule with a variable still serves its own ids.
            answer = await http.delete(f"{CLIENT_PREFIX}/notifications/n-unknown")
            assert answer.status_code != 405, answer.text
            # And the fixed path still serves what it serves.
            assert (await http.get(f"{CLIENT_PREFIX}/notifications/unread-count")).status_code == 200


def test_webhook_ids_and_answers_are_as_checked(documents: dict[str, dict[str, Any]]) -> None:
    """An endpoint id has the pattern its check applies; an unknown delivery's 404 is listed."""
    import jsonschema

    from realtimed.config import webhook_endpoint_problems

    paths = documents["server"]["paths"]
    body = _request_schema(documents["server"], "/server/v1/webhooks", "post")
    (path_id,) = [p["schema"] for p in paths["/server/v1/webhooks/{endpoint_id}"]["put"]["parameters"] if p["in"] == "path"]
    for endpoint_id in ("hooks-1", "-hooks", "a b", "x" * 65, "a.b_c"):
        problems = webhook_endpoint_problems(id=endpoint_id, url="https://example.com/h", events=[], secrets=["s"])
        checked = not [field for field, _ in problems if field == "id"]
        try:
            jsonschema.validate({"id": endpoint_id, "url": "https://example.com/h", "secrets": ["s"]}, body)
            jsonschema.validate(endpoint_id, path_id)
        except jsonschema.ValidationError:
            assert not checked, endpoint_id
        else:
            assert checked, endpoint_id
    assert "404" in paths["/server/v1/webhooks/deliveries/{delivery_id}/attempts"]["get"]["responses"]
    # The URL: http(s), at most 2000 characters, as the check says.
    checker = jsonschema.Draft202012Validator(body, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    for url in ("", "ftp://example.com/h", "https://example.com/" + "x" * 2000):
        assert not checker.is_valid({"id": "h", "url": url, "secrets": ["s"]}), url
        assert [f for f, _ in webhook_endpoint_problems(id="h", url=url, events=[], secrets=["s"]) if f == "url"], url


async def test_a_webhooks_null_fields_count_as_absent(start_daemon: DaemonFactory) -> None:
    """docs/protocol.md 4.1 on the webhook routes too: events and enabled null take their defaults."""
    import jsonschema

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = {"id": "nulls", "url": "https://example.com/h", "secrets": [secret], "events": None, "enabled": None}
    doc = build_documents(capability_routes(), Config())["server"]
    jsonschema.validate(body, _request_schema(doc, "/server/v1/webhooks", "post"))
    jsonschema.validate(body, _request_schema(doc, "/server/v1/webhooks/{endpoint_id}", "put"))
    with pytest.raises(jsonschema.ValidationError):  # POST names the endpoint
        jsonschema.validate({**body, "id": None}, _request_schema(doc, "/server/v1/webhooks", "post"))
    with trio.fail_after(20):
        daemon = await start_daemon()
        server = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=daemon.url() + SERVER_PREFIX, headers=server) as http:
            made = await http.post("/webhooks", json=body)
            assert made.status_code == 200, made.text
            assert made.json()["endpoint"]["enabled"] is True and made.json()["endpoint"]["events"] == []
            replaced = await http.put("/webhooks/nulls", json={**body, "id": None, "enabled": False})
            assert replaced.status_code == 200 and replaced.json()["endpoint"]["enabled"] is False, replaced.text
