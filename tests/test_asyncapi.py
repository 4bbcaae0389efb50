"""docs/asyncapi.yaml and docs/protocol.md, checked against the code.

- The committed AsyncAPI file is what ``realtimed/protocol.py`` generates, and the
  AsyncAPI parser (``@asyncapi/parser``, run with Node) accepts it.
- Each op's data schema names exactly the fields of its typed value, and every
  bound it states is the validator's: a value at it is accepted, one just past
  it refused, naming the field.
- docs/protocol.md names every op, event, error code and close code, and only
  configuration keys that exist.
- Every frame a real daemon sends while a scenario runs every op (replies,
  errors, the events they cause, and the SSE records) matches its schema, and
  the scenario meets every event.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import jsonschema
import pytest
import trio

from realtimed import protocol
from realtimed.config import WEBHOOK_EVENTS, reference_rows
from realtimed.errors import ApiError
from realtimed.gateway.sse import encode_cursor
from realtimed.jobs.builtin import BUILTIN_CRON_SCHEDULES
from realtimed.protocol import CLOSE_CODES, ERROR_CODES, EVENT_SPECS, OP_SPECS, TYPE_SCHEMAS
from realtimed.protocol_docs import asyncapi_document, asyncapi_yaml, event_message, message_for_frame
from tests.fixtures.clients import WsClient
from tests.fixtures.daemon import API_KEY, DaemonFactory
from tests.fixtures.tokens import token
from tests.test_gateway import ws_url
from tests.test_sse import sse

ROOT = Path(__file__).resolve().parent.parent
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
JS = ROOT / "tests" / "js"
SERVER = {"Authorization": f"Bearer {API_KEY}"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_committed_asyncapi_is_generated() -> None:
    assert ASYNCAPI.read_text(encoding="utf-8") == asyncapi_yaml(), (
        "docs/asyncapi.yaml is stale: run scripts/asyncapi.py --write"
    )


def _skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _same_numbers(value: Any) -> Any:
    """JSON as JavaScript reads it: integers beyond 2**53 lose precision."""
    if isinstance(value, dict):
        return {k: _same_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_numbers(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return float(value)
    return value


def test_asyncapi_parser_accepts_the_document() -> None:
    node = shutil.which("node")
    if node is None:
        _skip_or_fail("node is not installed (the AsyncAPI parser runs on Node)")
    if not (JS / "node_modules" / "@asyncapi" / "parser").is_dir():
        _skip_or_fail("tests/js has no node_modules: run `npm ci --ignore-scripts` in tests/js (scripts/test does)")
    assert node is not None
    result = subprocess.run(
        [node, str(JS / "check_asyncapi.mjs"), str(ASYNCAPI), "--json"],
        capture_output=True,
        check=False,
        timeout=90,
    )
    diagnostics = result.stderr.decode()
    assert result.returncode == 0, f"the AsyncAPI parser found errors:\n{diagnostics}"
    assert "Error " not in diagnostics, diagnostics
    # The YAML reads back as exactly the generated document.
    assert _same_numbers(json.loads(result.stdout)) == _same_numbers(asyncapi_document())


# -- op schemas against the typed values and the validators -------------------------------------


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its ``$ref`` / single ``allOf`` wrappers resolved (one level of the wire)."""
    while True:
        if "$ref" in schema:
            schema = TYPE_SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
        elif "allOf" in schema and len(schema["allOf"]) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def _example(schema: dict[str, Any]) -> Any:
    """The smallest value a schema allows (its lower bounds, its first choice)."""
    schema = _resolve(schema)
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if "oneOf" in schema:
        return _example(schema["oneOf"][0])
    if kind == "object" or "properties" in schema:
        required = list(schema.get("required", []))
        for alternative in schema.get("anyOf", [])[:1]:
            required += alternative["required"]
        return {name: _example(schema["properties"][name]) for name in required}
    if kind == "string":
        if "pattern" in schema and schema["pattern"].startswith("^[Hh][Tt]"):
            return "https://example.com/a.png"
        return "x" * max(1, schema.get("minLength", 1))
    if kind == "integer":
        return schema.get("minimum", 0)
    if kind == "boolean":
        return True
    if kind == "array":
        return [_example(schema["items"]) for _ in range(schema.get("minItems", 0))]
    return {}


def _too_long(schema: dict[str, Any], length: int) -> str:
    if "pattern" in schema and schema["pattern"].startswith("^[Hh][Tt]"):
        return "https://" + "x" * (length - len("https://"))
    return "x" * length


def _bad_values(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Values just outside what the schema states."""
    schema = _resolve(schema)
    kind = schema.get("type")
    if kind == "string" or (isinstance(kind, list) and "string" in kind):
        yield "a number for a string", 5
        if "enum" in schema:
            yield "outside the enum", "not-one-of-them"
        if "maxLength" in schema:
            yield "one character too long", _too_long(schema, schema["maxLength"] + 1)
        if schema.get("minLength", 0) >= 1:
            yield "empty", ""
        if schema.get("pattern", "").startswith("^[^\\u0000"):
            yield "a control character", "a\x01b"
        if "Hh" in schema.get("pattern", ""):
            yield "not a web URL", "javascript:alert(1)"
        if schema is TYPE_SCHEMAS["Room"]:
            yield "an empty segment", "a::b"
    elif kind == "integer":
        yield "a string for an integer", "1"
        yield "a boolean for an integer", True
        if "minimum" in schema:
            yield "below the minimum", schema["minimum"] - 1
        if "maximum" in schema:
            yield "above the maximum", schema["maximum"] + 1
    elif kind == "boolean":
        yield "a string for a boolean", "yes"
    elif kind == "array":
        yield "an object for a list", {}
        item = _example(schema["items"])
        if "maxItems" in schema:
            yield "one item too many", [item] * (schema["maxItems"] + 1)
        if schema.get("minItems", 0) >= 1:
            yield "no items", []
        for label, bad in _bad_values(schema["items"]):
            if label.startswith(("a number", "a control", "one character")):
                yield f"an item: {label}", [bad]
    elif kind == "object":
        yield "a string for an object", "x"


def _edge_values(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Values exactly at what the schema states."""
    schema = _resolve(schema)
    kind = schema.get("type")
    for value in schema.get("enum", []):
        yield f"enum value {value!r}", value
    if kind == "string" and "enum" not in schema:
        if "maxLength" in schema:
            yield "the longest", _too_long(schema, schema["maxLength"])
        if "minLength" in schema and "Hh" not in schema.get("pattern", ""):
            yield "the shortest", "x" * schema["minLength"]
    elif kind == "integer":
        for bound in ("minimum", "maximum"):
            if bound in schema:
                yield bound, schema[bound]
    elif kind == "array":
        if "maxItems" in schema:
            yield "the most items", [_example(schema["items"])] * schema["maxItems"]
        if "minItems" in schema:
            yield "the fewest items", [_example(schema["items"])] * schema["minItems"]


@pytest.mark.parametrize("op", sorted(OP_SPECS))
def test_op_schema_names_the_typed_value_fields(op: str) -> None:
    spec = OP_SPECS[op]
    fields = {f.name: f for f in attrs.fields(spec.value_type)}
    properties = spec.data.get("properties", {})
    assert set(properties) == set(fields), f"{op}: the data schema and {spec.value_type.__name__} differ"
    without_default = {name for name, f in fields.items() if f.default is attrs.NOTHING}
    required = set(spec.data.get("required", []))
    alternatives = {name for alt in spec.data.get("anyOf", []) for name in alt["required"]}
    assert required <= without_default, f"{op}: a field with a default is marked required"
    optional_on_the_wire = {name for name, prop in properties.items() if "absent" in prop.get("description", "")}
    assert without_default - required <= alternatives | optional_on_the_wire, f"{op}: a required field is not marked required"
    for name, prop in properties.items():
        default = fields[name].default
        if "default" in prop:
            assert prop["default"] == default, f"{op}.{name}: documented default {prop['default']!r} is {default!r}"
        elif default is not attrs.NOTHING and default is not None:
            pytest.fail(f"{op}.{name}: the default {default!r} is not documented")
    assert spec.summary, f"{op} has no summary"


def _fails_naming(op: str, data: dict[str, Any], field: str) -> None:
    try:
        protocol.validate(op, data)
    except ApiError as exc:
        named = getattr(exc, "field", None)
        assert named == field or exc.message.startswith(f"{field}"), (op, field, exc.message)
        return
    raise AssertionError(f"{op}: {field}={data!r} was accepted")


@pytest.mark.parametrize("op", sorted(OP_SPECS))
def test_op_schema_bounds_are_the_validator_bounds(op: str) -> None:
    """Values at each documented bound are accepted, values just past it refused naming the field."""
    schema = OP_SPECS[op].data
    base = _example(schema)
    protocol.validate(op, base)  # the smallest documented data is accepted
    for name, prop in schema.get("properties", {}).items():
        for label, edge in _edge_values(prop):
            try:
                protocol.validate(op, {**base, name: edge})
            except ApiError as exc:
                raise AssertionError(f"{op}.{name}: {label} is documented but refused: {exc.message}") from None
        if name in schema.get("required", []) or any(name in alt["required"] for alt in schema.get("anyOf", [])[:1]):
            _fails_naming(op, {k: v for k, v in base.items() if k != name}, name)
        for label, bad in _bad_values(prop):
            field = name if not label.startswith("an item") else f"{name}[0]"
            try:
                _fails_naming(op, {**base, name: bad}, field)
            except AssertionError as exc:
                raise AssertionError(f"{op}.{name}: {label}: {exc}") from None
        nested = _resolve(prop)
        if nested.get("type") == "object" and "properties" in nested:
            inner = _example(nested)
            for key, sub in nested["properties"].items():
                for label, bad in _bad_values(sub):
                    try:
                        _fails_naming(op, {**base, name: {**inner, key: bad}}, f"{name}.{key}")
                    except AssertionError as exc:
                        raise AssertionError(f"{op}.{name}.{key}: {label}: {exc}") from None


def test_close_codes_cover_every_code_the_server_sends() -> None:
    from realtimed import errors
    from realtimed.gateway.websocket import CLOSE_HEARTBEAT

    sent = {value for name, value in vars(errors).items() if name.startswith("CLOSE_")} | {CLOSE_HEARTBEAT}
    documented = {close.code for close in CLOSE_CODES}
    assert sent <= documented, f"close codes without documentation: {sorted(sent - documented)}"


def test_every_event_uses_a_reserved_prefix_and_app_names_do_not() -> None:
    for name in EVENT_SPECS:
        assert protocol.is_reserved_event(name), name
    for name in EVENT_SPECS:
        with pytest.raises(ApiError):
            protocol.validate_event_name(name)


# -- docs/protocol.md -------------------------------------------------------------------------

# Keys the edge hardening adds to the configuration beside this document.
def test_protocol_md_names_every_op_event_and_code() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for name in [*OP_SPECS, *EVENT_SPECS, *ERROR_CODES]:
        assert f"`{name}`" in text, f"docs/protocol.md does not mention `{name}`"
    for close in CLOSE_CODES:
        assert re.search(rf"^\| {close.code} \|", text, re.M), f"close code {close.code} is not in the table"
    assert "../" not in text, "docs/protocol.md must not point outside the repository"


def test_protocol_md_names_only_existing_config_keys() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    sections = {key.split(".")[0] for key, _, _ in reference_rows()}
    keys = {re.sub(r"\[\]", "", key) for key, _, _ in reference_rows()}
    cited = {
        m.group(1).replace("[]", "")
        for m in re.finditer(r"`\[?([a-z_]+(?:\[\])?\.[a-z0-9_.]+)\]?", text)
        if m.group(1).split(".")[0].removesuffix("[]") in sections
    }
    cited -= {*OP_SPECS, *EVENT_SPECS, *WEBHOOK_EVENTS, *BUILTIN_CRON_SCHEDULES}  # op, event and job kind names
    missing = cited - keys
    assert not missing, f"docs/protocol.md cites configuration keys that do not exist: {sorted(missing)}"


# -- live frames against the schemas ----------------------------------------------------------

NAMESPACES: list[dict[str, Any]] = [
    {"prefix": "lobby:", "public": True, "client_publish": True, "presence": True, "history_size": 10},
    {"prefix": "job:", "history_size": 10, "recovery_cap": 0},
]


def _closed(schema: Any) -> Any:
    """The schema with every listed object closed, so that an undocumented field fails too."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class FrameChecker:
    """Validates server frames against the AsyncAPI messages, and counts what it met.

    Objects are closed here (the document itself leaves them open, since clients
    ignore unknown fields), so a field the server sends but the document does not
    name fails too.
    """

    def __init__(self) -> None:
        document = _closed(asyncapi_document())
        self._components = document["components"]
        self._validators: dict[str, jsonschema.Draft7Validator] = {}
        self.met: set[str] = set()

    def check(self, frame: dict[str, Any], request_ops: dict[Any, str]) -> None:
        key = message_for_frame(frame, request_ops)
        validator = self._validators.get(key)
        if validator is None:
            payload = self._components["messages"][key]["payload"]
            validator = jsonschema.Draft7Validator({**payload, "components": self._components})
            self._validators[key] = validator
        errors = sorted(validator.iter_errors(frame), key=lambda e: list(e.path))
        assert not errors, f"{key}: {frame}\n" + "\n".join(f"  {list(e.path)}: {e.message}" for e in errors)
        self.met.add(key)


def watch(client: WsClient, checker: FrameChecker) -> None:
    """Check every frame the client receives; remember the op of every request it sends."""
    request_ops: dict[Any, str] = {"auth": "auth"}  # WsClient.connect sends its auth frame with id "auth"
    send, recv = client.send, client.recv

    async def sending(obj: Any) -> None:
        if isinstance(obj, dict) and "id" in obj and "op" in obj:
            request_ops[obj["id"]] = obj["op"]
        await send(obj)

    async def receiving(timeout: float = 5) -> dict[str, Any]:
        frame = await recv(timeout)
        checker.check(frame, request_ops)
        return frame

    client.send = sending  # type: ignore[method-assign]
    client.recv = receiving  # type: ignore[method-assign]


async def test_frames_of_a_live_session_match_their_schemas(start_daemon: DaemonFactory) -> None:
    checker = FrameChecker()
    with trio.fail_after(60):
        daemon = await start_daemon(
            {
                "namespaces": NAMESPACES,
                "gateway": {"expiring_notice_s": 60.0},
                "presence": {"throttle_s": 0.0},
                "chat": {"typing_per_s": 100.0},
            }
        )
        url = ws_url(daemon)
        # Alice's token expires in 62 s: session.expiring comes about 2 s after she connects.
        alice = await WsClient.connect(url, token=token("alice", ttl=62, rooms=["job:*"]), how="frame")
        watch(alice, checker)
        await alice.reply("auth")
        await alice.event("session.ready")
        bob = await WsClient.connect(url, token=token("bob"))
        watch(bob, checker)
        await bob.event("session.ready")

        assert "server_time" in await alice.ok("ping")
        conv = (await alice.ok("conversation.open", {"user_id": "bob"}))["conversation"]
        cid = conv["id"]
        await bob.event("conversation.updated")
        await alice.send({"op": "typing.start", "data": {"conversation_id": cid}})
        await bob.event("typing.updated")
        await alice.ok("typing.stop", {"conversation_id": cid})
        sent = (await alice.ok("message.send", {"conversation_id": cid, "client_id": "k1", "body": "hi"}))["message"]
        await bob.event("message.new")
        await alice.ok("message.edit", {"message_id": sent["id"], "body": "hello"})
        await bob.event("message.updated")
        await bob.ok("message.read", {"conversation_id": cid, "seq": sent["seq"]})
        await alice.event("receipt.updated")
        await bob.event("conversation.state")
        second = (await alice.ok("message.send", {"conversation_id": cid, "client_id": "k2", "body": "2"}))["message"]
        await alice.ok("message.delete", {"message_id": second["id"]})
        await bob.event("message.deleted")
        await alice.ok("message.history", {"conversation_id": cid, "changed_since": 0})
        await alice.ok("conversation.list")
        await alice.ok("conversation.mute", {"conversation_id": cid, "muted": True})
        group = (await alice.ok("conversation.create", {"member_ids": ["bob", "carol"], "title": "g"}))["conversation"]
        await alice.ok("conversation.leave", {"conversation_id": group["id"]})
        await bob.ok("presence.set", {"status": "busy", "message": "in a call"})
        await alice.event("presence.updated")
        await alice.ok("presence.query", {"user_ids": ["bob", "zed"]})
        await bob.ok("user.block", {"user_id": "zed"})
        await bob.ok("user.unblock", {"user_id": "zed"})

        await alice.ok("subscribe", {"room": "lobby:1"})
        await bob.ok("subscribe", {"room": "lobby:1"})
        await alice.event("room.joined")
        await alice.ok("room.presence", {"room": "lobby:1"})
        await bob.ok("publish", {"room": "lobby:1", "event": "chat.line", "data": {"text": "hi"}})
        await alice.event("chat.line")
        await alice.ok("subscribe", {"room": "lobby:1", "since": {"seq": 0, "epoch": "old"}})
        await bob.ok("unsubscribe", {"room": "lobby:1"})
        await alice.event("room.left")

        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = await http.post(
                "/server/v1/notifications",
                json={"user_ids": ["alice"], "type": "announcement", "vars": {"title": "T", "body": "B"}},
            )
            assert answer.status_code == 200, answer.text
            answer = await http.post("/server/v1/users/events", json={"user_ids": ["alice"], "event": "app.hello"})
            assert answer.status_code == 200, answer.text
        note = (await alice.event("notification.new"))["data"]["notification"]
        await alice.event("app.hello")
        await alice.ok("notification.list", {"after_seq": 0})
        await alice.ok("notification.read", {"ids": [note["id"]]})
        await alice.event("notification.read")
        await alice.ok("notification.read_all")
        await alice.ok("notification.delete", {"ids": [note["id"]]})
        await alice.event("notification.deleted")

        # Activity feeds: a logged activity reaches the feed's room; the feed is read.
        await alice.ok("subscribe", {"room": "feed:user:alice"})
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            answer = await http.post("/server/v1/activities", json={"activities": [
                {"actor": "bob", "verb": "like", "object": "p1", "target": "t", "data": {"n": 1}, "feeds": ["user:alice"]}
            ]})
            assert answer.status_code == 200, answer.text
        await alice.event("feed.activity")
        await alice.ok("feed.activities", {"feed": "user:alice", "q": "like"})

        await alice.ok("typing.start", {"conversation_id": cid})
        # Error replies: a refused op, an unreadable frame.
        reply = await alice.request("message.send", {"conversation_id": cid, "client_id": "k3"})
        assert reply["error"]["field"] == "body"
        await alice.send("not json")
        await alice.reply(None)
        # Re-auth on the open socket answers the auth reply again.
        await alice.ok("auth", {"token": token("alice", ttl=62, rooms=["job:*"])})
        await alice.event("session.expiring", timeout=10)

        # The SSE door: session.ready, a publication with seq, room.reset, session.closed.
        async with sse(daemon, rooms="job:1") as stream:
            await stream.until("session.ready")
        async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
            await http.post("/server/v1/publish", json={"room": "job:1", "event": "job.progress", "data": {}})
        cursor = encode_cursor({"job:1": [0, "old"]})
        async with sse(daemon, rooms="job:1", last_id=cursor) as stream:
            for name in ("session.ready", "room.reset"):
                record = await stream.until(name)
                checker.check(record["frame"], {})
            async with httpx.AsyncClient(base_url=daemon.url(), headers=SERVER) as http:
                await http.post("/server/v1/publish", json={"room": "job:1", "event": "job.progress", "data": {}})
                record = await stream.until("job.progress")
                checker.check(record["frame"], {})
                await http.post("/server/v1/users/alice/disconnect", json={})
            checker.check((await stream.until("session.closed"))["frame"], {})

        bob_after = await WsClient.connect(url, token=token("bob"))
        watch(bob_after, checker)
        await bob_after.event("session.ready")
        daemon.request_drain()
        await bob_after.event("server.shutdown")

    assert {f"reply.{op}" for op in OP_SPECS} <= checker.met, sorted({f"reply.{op}" for op in OP_SPECS} - checker.met)
    events = {event_message(name) for name in EVENT_SPECS} | {"event.app", "error"}
    assert events <= checker.met, f"the scenario met no {sorted(events - checker.met)}"
