"""Typed routes of the HTTP doors: one description per operation.

A capability describes each of its routes with ``@route(...)`` on its handler
and hands them to the app factory from its ``routes()`` function (nothing is
registered by importing a module). From that one description come both what
the route does on the wire and its operation in the OpenAPI document of its
door (``realtimed.http.openapi``):

- ``accepts``: the request type. Either an attrs class whose attributes are
  declared with ``wire(kind, where)`` (``where`` is ``path``, ``query`` or
  ``body``), or an ``OpInput`` that reads an op's ``data`` from the request and
  validates it with the op's own validator (``realtimed.protocol.OP_SPECS``).
  Each ``Kind`` holds a field's check (the very helper the route used before,
  so each failure names the same field with the same message) and the JSON
  Schema of what it accepts. Fields are read in the order they are declared,
  and the body is read (``json_body``) only when the first body field is
  reached, so a bad path variable is refused before a body is parsed.
- ``answers``: the response type. An attrs class whose attributes are declared
  with ``out(schema)`` (the handler returns an instance; its attribute names
  are the answer's keys), or a ``Schema`` for an answer a service builds (the
  handler returns the dict), or ``OpReply(op)`` for an op's reply.
- ``errors``: the error statuses the route itself may answer; the door's own
  (401 and 429, and for the client door 403 and 503) and those of its input (400,
  413) are added by the document.

``guards`` run before the input is read (a capability that is not running
answers 503 before its body is looked at, as it did before).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, TypeAlias

import attrs
import orjson
from quart import Response, current_app, request

from realtimed import protocol
from realtimed.api import validate
from realtimed.config import Config
from realtimed.errors import BadRequest, ValidationFailed
from realtimed.protocol import OP_SPECS, JsonSchema
from realtimed.services import Services

__all__ = [
    "CLIENT_PREFIX",
    "SERVER_PREFIX",
    "Answer",
    "AnyJson",
    "Checked",
    "Choice",
    "Door",
    "Empty",
    "EventName",
    "ExactlyOne",
    "Fields",
    "Input",
    "Kind",
    "Named",
    "Number",
    "OpCall",
    "OpData",
    "OpInput",
    "OpReply",
    "OptionalTextList",
    "QueryChoice",
    "QueryInt",
    "QueryText",
    "Raw",
    "Reply",
    "RequestParts",
    "Room",
    "RoomList",
    "Route",
    "Schema",
    "Text",
    "TextList",
    "UserId",
    "WholeBody",
    "Wire",
    "bearer_token",
    "json_body",
    "json_response",
    "list_of",
    "openapi_path",
    "out",
    "query_bool",
    "query_csv",
    "query_int",
    "query_text",
    "route",
    "services",
    "wire",
    "wire_fields",
    "without_fields",
]

SERVER_PREFIX: Final = "/server/v1"
CLIENT_PREFIX: Final = "/api/v1"

Door: TypeAlias = Literal["server", "client", "ops"]
"""``server``: /server/v1 (API key); ``client``: /api/v1 (user token); ``ops``: /healthz and the like."""
Where: TypeAlias = Literal["path", "query", "body"]

DOOR_PREFIX: Final[Mapping[str, str]] = {"server": SERVER_PREFIX, "client": CLIENT_PREFIX, "ops": ""}
JSON: Final = "application/json"


# -- request helpers ---------------------------------------------------------------------------


def services() -> Services:
    """The daemon's services, from inside a request."""
    svc: Services = current_app.extensions["realtimed"]
    return svc


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status=status, headers=headers, content_type=JSON)


async def json_body() -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``.

    Every HTTP door parses its body here, so a field nesting deeper than
    ``gateway.max_json_depth`` is refused (``VALIDATION_ERROR`` naming it) before
    any route sees it.
    """
    raw = await request.get_data(cache=False)
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValidationFailed("body", "must be a JSON object")
    protocol.check_json_depth(data, services().config.gateway.max_json_depth, raw=raw)
    return data


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


# -- the parts of a request an input reads -----------------------------------------------------


@attrs.define
class RequestParts:
    """What an input type reads: the path variables, the query, and the body,
    read (and parsed as a JSON object) only when first asked for."""

    cfg: Config
    path: Mapping[str, str]
    query: Mapping[str, str]
    read_body: Callable[[], Awaitable[dict[str, Any]]]
    _body: dict[str, Any] | None = None

    async def body(self) -> dict[str, Any]:
        if self._body is None:
            self._body = await self.read_body()
        return self._body

    async def source(self, where: Where) -> Mapping[str, Any]:
        if where == "path":
            return self.path
        if where == "query":
            return self.query
        return await self.body()


# -- field kinds -------------------------------------------------------------------------------


class Kind:
    """A wire field: how it is read and checked, and the JSON Schema of what it accepts.

    ``parse`` raises ``ValidationFailed`` naming the field (or another
    ``ApiError``); ``schema`` may depend on the configuration (a configured
    limit is stated in the document). A kind used only to describe an answer
    (``out``) need not parse.
    """

    #: the field must be given (it is in the schema's ``required``)
    required: bool = True
    #: the field's properties are the object's own (a body spread over several keys)
    spread: bool = False

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        raise NotImplementedError(f"{type(self).__name__} describes an answer only")

    def schema(self, cfg: Config) -> JsonSchema:
        raise NotImplementedError

    def components(self) -> Iterable[Named]:
        """Named schemas this kind refers to (they go into ``components.schemas``)."""
        return ()


def _described(schema: JsonSchema, description: str) -> JsonSchema:
    return {**schema, "description": description} if description else schema


def _ref(name: str) -> JsonSchema:
    return {"$ref": f"#/components/schemas/{name}"}


@attrs.frozen
class Schema(Kind):
    """A schema as it is: an answer's field, or a whole answer a service builds."""

    json: JsonSchema
    description: str = ""
    content_type: str = JSON
    required: bool = True
    named: tuple[Named, ...] = ()

    def schema(self, cfg: Config) -> JsonSchema:
        return _described(self.json, self.description)

    def components(self) -> Iterable[Named]:
        for named in self.named:
            yield from named.components()


@attrs.frozen
class Named(Kind):
    """A record of the HTTP doors, described once in ``components.schemas`` and referred to."""

    name: str
    json: JsonSchema
    named: tuple[Named, ...] = ()

    @property
    def ref(self) -> JsonSchema:
        return _ref(self.name)

    def schema(self, cfg: Config) -> JsonSchema:
        return self.ref

    def components(self) -> Iterable[Named]:
        yield self
        for named in self.named:
            yield from named.components()


def list_of(item: Named | JsonSchema, description: str = "") -> Schema:
    """An answer's list of records (a ``Named`` one goes into ``components.schemas``)."""
    if isinstance(item, Named):
        return Schema({"type": "array", "items": item.ref}, description, named=(item,))
    return Schema({"type": "array", "items": item}, description)


@attrs.frozen
class Raw(Kind):
    """A value taken as it is (``default`` when absent); its checks, if any, are the handler's."""

    json: JsonSchema = attrs.field(factory=lambda: {"type": "string"})
    description: str = ""
    required: bool = False
    default: Any = None

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        return source.get(name, self.default)

    def schema(self, cfg: Config) -> JsonSchema:
        return _described(self.json, self.description)


@attrs.frozen
class Checked(Kind):
    """A field checked by ``check(source, name)``, described by ``json``: a check
    of the capability's own, written beside its schema."""

    check: Callable[[Mapping[str, Any], str], Any]
    json: JsonSchema
    required: bool = False
    description: str = ""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        return self.check(source, name)

    def schema(self, cfg: Config) -> JsonSchema:
        return _described(self.json, self.description)


@attrs.frozen
class WholeBody(Kind):
    """The whole body, handed over as it is: a service checks it (``json`` says what it accepts)."""

    json: JsonSchema
    spread: bool = True

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        return source

    def schema(self, cfg: Config) -> JsonSchema:
        return self.json


@attrs.frozen
class AnyJson(Kind):
    """Any JSON value; absent: ``{}`` (a null stays null, as it did)."""

    description: str = "any JSON value; absent: {}"
    required: bool = False

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        return source.get(name, {})

    def schema(self, cfg: Config) -> JsonSchema:
        return {"description": self.description}


@attrs.frozen
class Text(Kind):
    """A string of ``min_len`` to ``max_len`` characters (``validate.string``)."""

    max_len: int = 200
    min_len: int = 1
    required: bool = True
    description: str = ""
    pattern: str | None = None  # stated in the schema only: the check is ``then``'s
    then: Callable[[str, str], Any] | None = None  # (value, field) → value, a further check
    format: str | None = None  # stated in the schema only (``date-time``): the check is ``then``'s

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = validate.string(source, name, min_len=self.min_len, max_len=self.max_len, required=self.required)
        if value is not None and self.then is not None:
            return self.then(value, name)
        return value

    def schema(self, cfg: Config) -> JsonSchema:
        out: JsonSchema = {"type": "string", "minLength": self.min_len, "maxLength": self.max_len}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.format is not None:
            out["format"] = self.format
        return _described(out, self.description)


Limit: TypeAlias = int | Callable[[Config], int]


def _limit(value: Limit, cfg: Config) -> int:
    return value if isinstance(value, int) else value(cfg)


@attrs.frozen
class TextList(Kind):
    """A list of ``min_items`` to ``max_items`` strings of 1 to ``max_len`` characters,
    without repeats (``validate.string_list``); ``each`` checks each item further."""

    max_items: Limit
    max_len: int = 200
    min_items: int = 1
    description: str = ""
    each: Callable[[str, str], Any] | None = None  # (item, "field[i]") → raises
    items: JsonSchema | None = None  # the items' schema when ``each`` narrows them

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        values = validate.string_list(
            source, name, min_items=self.min_items, max_items=_limit(self.max_items, parts.cfg), max_len=self.max_len
        )
        if self.each is not None:
            for i, item in enumerate(values):
                self.each(item, f"{name}[{i}]")
        return values

    def schema(self, cfg: Config) -> JsonSchema:
        items = self.items or {"type": "string", "minLength": 1, "maxLength": self.max_len}
        out: JsonSchema = {
            "type": "array",
            "items": items,
            "minItems": self.min_items,
            "maxItems": _limit(self.max_items, cfg),
        }
        return _described(out, self.description)


@attrs.frozen
class OptionalTextList(TextList):
    """A ``TextList`` that may be absent (None)."""

    required: bool = False

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        if source.get(name) is None:
            return None
        return super().parse(source, name, parts)


@attrs.frozen
class Number(Kind):
    """A number (``integer``: an integer) from ``lo`` to ``hi`` (``validate.number``)."""

    lo: float
    hi: float
    integer: bool = False
    required: bool = False
    description: str = ""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        return validate.number(source, name, lo=self.lo, hi=self.hi, required=self.required, integer=self.integer)

    def schema(self, cfg: Config) -> JsonSchema:
        return _described(
            {"type": "integer" if self.integer else "number", "minimum": self.lo, "maximum": self.hi}, self.description
        )


@attrs.frozen
class Choice(Kind):
    """One of ``values``; absent takes ``default`` (no default: required)."""

    values: tuple[str, ...]
    message: str
    default: str | None = None
    description: str = ""

    @property
    def required(self) -> bool:  # type: ignore[override]
        return self.default is None

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = source.get(name)
        if value is None and self.default is not None:
            value = self.default
        if value not in self.values:
            raise ValidationFailed(name, self.message)
        return value

    def schema(self, cfg: Config) -> JsonSchema:
        out: JsonSchema = {"type": "string", "enum": list(self.values)}
        if self.default is not None:
            out["default"] = self.default
        return _described(out, self.description)


@attrs.frozen
class QueryInt(Kind):
    """An integer query parameter from ``lo`` to ``hi``; absent or empty: ``default``."""

    default: int
    lo: int
    hi: int
    description: str = ""
    required: bool = False

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        return validate.query_int(source, name, default=self.default, lo=self.lo, hi=self.hi)

    def schema(self, cfg: Config) -> JsonSchema:
        return _described(
            {"type": "integer", "minimum": self.lo, "maximum": self.hi, "default": self.default}, self.description
        )


@attrs.frozen
class QueryText(Kind):
    """A query parameter of at most ``max_len`` characters; absent or empty: None."""

    max_len: int
    description: str = ""
    required: bool = False

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = source.get(name) or None
        if value is not None and len(value) > self.max_len:
            raise ValidationFailed(name, f"must be at most {self.max_len} characters")
        return value

    def schema(self, cfg: Config) -> JsonSchema:
        return _described({"type": "string", "maxLength": self.max_len}, self.description)


@attrs.frozen
class QueryChoice(Kind):
    """A query parameter that is one of ``values``; absent or empty: None."""

    values: tuple[str, ...]
    description: str = ""
    required: bool = False

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = source.get(name) or None
        if value is not None and value not in self.values:
            raise ValidationFailed(name, f"must be one of {', '.join(self.values)}")
        return value

    def schema(self, cfg: Config) -> JsonSchema:
        return _described({"type": "string", "enum": list(self.values)}, self.description)


# -- kinds of the wire protocol's own values ---------------------------------------------------


@attrs.frozen
class Room(Kind):
    """A room name (``protocol.validate_room``); ``text_first``: first a string of 1 to
    200 characters (``validate.string``), as the server API's bodies check it."""

    text_first: bool = True
    description: str = ""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = validate.string(source, name) if self.text_first else source.get(name)
        return protocol.validate_room(value, name)

    def schema(self, cfg: Config) -> JsonSchema:
        return {"allOf": [_ref("Room")], "description": self.description} if self.description else _ref("Room")


@attrs.frozen
class RoomList(Kind):
    """Up to ``max_items`` room names, without repeats; each failure names ``field[i]``."""

    max_items: int
    description: str = ""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        rooms = validate.string_list(source, name, max_items=self.max_items)
        for i, room in enumerate(rooms):
            protocol.validate_room(room, f"{name}[{i}]")
        return rooms

    def schema(self, cfg: Config) -> JsonSchema:
        return _described({"type": "array", "items": _ref("Room"), "minItems": 1, "maxItems": self.max_items}, self.description)


_RESERVED: Final = "^(" + "|".join(re.escape(p.rstrip(".")) for p in protocol.RESERVED_EVENT_PREFIXES) + r")\."


@attrs.frozen
class EventName(Kind):
    """An app event name of the server API: 1 to 100 characters outside the reserved prefixes."""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        event = validate.string(source, name, max_len=protocol.MAX_EVENT_CHARS)
        assert event is not None
        if protocol.is_reserved_event(event):
            raise ValidationFailed(name, f"{event!r} uses a reserved prefix")
        return event

    def schema(self, cfg: Config) -> JsonSchema:
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": protocol.MAX_EVENT_CHARS,
            "not": {"pattern": _RESERVED},
            "description": "an app event name, outside the reserved prefixes",
        }


@attrs.frozen
class UserId(Kind):
    """A user id (``protocol.validate_user_id``); absent: ``is required``."""

    description: str = ""

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        value = source.get(name)
        if value is None:
            raise ValidationFailed(name, "is required")
        return protocol.validate_user_id(value, name)

    def schema(self, cfg: Config) -> JsonSchema:
        return {"allOf": [_ref("UserId")], "description": self.description} if self.description else _ref("UserId")


# -- request types -----------------------------------------------------------------------------

_WIRE: Final = "realtimed.wire"


@attrs.frozen
class Wire:
    """How an attribute of a request or response type is on the wire."""

    kind: Kind
    where: Where
    name: str | None
    omit_none: bool = False


def wire(kind: Kind, where: Where = "body", *, name: str | None = None) -> Any:
    """An attribute of a request type: read from ``where`` under ``name`` (default: the attribute's)."""
    return attrs.field(metadata={_WIRE: Wire(kind, where, name)})


def out(schema: Kind | JsonSchema, *, omit_none: bool = False, description: str = "", name: str | None = None) -> Any:
    """An attribute of a response type; ``omit_none``: left out of the answer when None."""
    kind = schema if isinstance(schema, Kind) else Schema(schema, description)
    return attrs.field(metadata={_WIRE: Wire(kind, "body", name, omit_none)})


def wire_fields(cls: type[Any]) -> list[tuple[str, str, Wire]]:
    """(attribute, wire name, declaration) of a request or response type, in declaration order."""
    fields: list[tuple[str, str, Wire]] = []
    for attribute in attrs.fields(cls):
        declared = attribute.metadata.get(_WIRE)
        if not isinstance(declared, Wire):
            raise TypeError(f"{cls.__name__}.{attribute.name} is not declared with wire() or out()")
        fields.append((attribute.name, declared.name or attribute.name, declared))
    return fields


@attrs.frozen
class ExactlyOne:
    """A rule of a request type: exactly one of ``names`` is given (``empty_counts``: an
    empty string counts as given). Checked before any field; ``field`` is the one named."""

    names: tuple[str, ...]
    where: Where
    message: str
    field: str
    empty_counts: bool = True

    def check(self, source: Mapping[str, Any]) -> None:
        given = [n for n in self.names if (source.get(n) is not None if self.empty_counts else bool(source.get(n)))]
        if len(given) != 1:
            raise ValidationFailed(self.field, self.message)


class Input(Protocol):
    """A request type: what a route reads, and its description."""

    @property
    def path_names(self) -> frozenset[str]: ...

    async def parse(self, parts: RequestParts) -> Any: ...

    def parameters(self, cfg: Config) -> list[JsonSchema]: ...

    def body(self, cfg: Config) -> tuple[JsonSchema, bool] | None:
        """The body's schema and whether a body is required; None: the body is not read."""
        ...

    def components(self) -> Iterable[Named]: ...


def _parameter(name: str, where: str, schema: JsonSchema, required: bool) -> JsonSchema:
    out: JsonSchema = {"name": name, "in": where, "required": required or where == "path", "schema": schema}
    if "description" in schema:
        out["description"] = schema["description"]
    return out


@attrs.frozen
class Fields:
    """The request type of an attrs class declared with ``wire``."""

    cls: type[Any]

    @property
    def path_names(self) -> frozenset[str]:
        return frozenset(wire_name for _, wire_name, w in wire_fields(self.cls) if w.where == "path")

    def _rules(self) -> tuple[ExactlyOne, ...]:
        rules: tuple[ExactlyOne, ...] = getattr(self.cls, "__wire_rules__", ())
        return rules

    async def parse(self, parts: RequestParts) -> Any:
        for rule in self._rules():
            rule.check(await parts.source(rule.where))
        values: dict[str, Any] = {}
        for attribute, wire_name, declared in wire_fields(self.cls):
            source = await parts.source(declared.where)
            values[attribute] = declared.kind.parse(source, wire_name, parts)
        return self.cls(**values)

    def parameters(self, cfg: Config) -> list[JsonSchema]:
        params = []
        for _, wire_name, declared in wire_fields(self.cls):
            if declared.where != "body":
                schema = declared.kind.schema(cfg)
                params.append(_parameter(wire_name, declared.where, schema, declared.kind.required))
        return params

    def body(self, cfg: Config) -> tuple[JsonSchema, bool] | None:
        fields = [(n, w) for _, n, w in wire_fields(self.cls) if w.where == "body"]
        if not fields:
            return None
        schema = _object_schema(fields, cfg, optional_may_be_null=True)
        for rule in self._rules():
            if rule.where == "body":
                # Given: present and not null (a null field counts as absent).
                schema["oneOf"] = [{"required": [n], "properties": {n: {"not": {"type": "null"}}}} for n in rule.names]
        return schema, bool(schema.get("required")) or bool(self._rules())

    def components(self) -> Iterable[Named]:
        for _, _, declared in wire_fields(self.cls):
            yield from declared.kind.components()


def _or_null(schema: JsonSchema) -> JsonSchema:
    """``schema``, or null."""
    kind = schema.get("type")
    if isinstance(kind, list):
        return schema if "null" in kind else {**schema, "type": [*kind, "null"]}
    if isinstance(kind, str) and "enum" not in schema and "const" not in schema:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _object_schema(
    fields: Sequence[tuple[str, Wire]], cfg: Config, description: str = "", *, optional_may_be_null: bool = False
) -> JsonSchema:
    """The object of ``fields``; ``optional_may_be_null``: an optional field may be null (a request's
    field that is null counts as absent, docs/protocol.md section 4.1)."""
    properties: dict[str, JsonSchema] = {}
    required: list[str] = []
    extra: dict[str, Any] = {}
    for wire_name, declared in fields:
        schema = declared.kind.schema(cfg)
        if declared.kind.spread:
            spread_required = schema.get("required", [])
            properties.update(
                (name, _or_null(item) if optional_may_be_null and name not in spread_required else item)
                for name, item in schema.get("properties", {}).items()
            )
            required += spread_required
            extra.update({k: v for k, v in schema.items() if k not in ("type", "properties", "required")})
            continue
        if declared.kind.required and not declared.omit_none:
            required.append(wire_name)
        elif optional_may_be_null:
            schema = _or_null(schema)
        properties[wire_name] = schema
    out: JsonSchema = {"type": "object"}
    if description:
        out["description"] = description
    if required:
        out["required"] = required
    out["properties"] = properties
    out.update(extra)
    return out


# -- op-backed request types -------------------------------------------------------------------

QueryReader: TypeAlias = Callable[[str | None, str], Any]
"""Reads one query parameter (its raw text, its name) into an op field; None leaves it out."""


def query_int(raw: str | None, name: str) -> int | None:
    """An integer, or None when absent or empty (bounds are the op's)."""
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValidationFailed(name, "must be an integer") from None


def query_bool(raw: str | None, name: str) -> bool | None:
    """``1``/``true``/``yes`` or ``0``/``false``/``no``; None when absent or empty."""
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ValidationFailed(name, "must be true or false")


def query_text(raw: str | None, name: str) -> str | None:
    """The text, or None when absent or empty."""
    return raw or None


def query_csv(raw: str | None, name: str) -> list[str]:
    """A comma-separated list (empty items dropped); absent: an empty list."""
    return [item for item in (raw or "").split(",") if item]


@attrs.frozen
class OpCall:
    """A validated op: its name and its typed value (``OP_SPECS[op].value_type``)."""

    op: str
    value: Any


@attrs.frozen
class OpInput:
    """A request whose fields are an op's ``data``, validated by the op's validator.

    The data is built from the body (``body``), then the query parameters (each
    read by its ``QueryReader``, in order), then the path variables named in
    ``path`` (which win). ``choose`` picks the op from the data when the route
    serves several (``ops``).
    """

    ops: tuple[str, ...]
    path: tuple[str, ...] = ()
    query: Mapping[str, QueryReader] = attrs.field(factory=dict)
    reads_body: bool = False
    choose: Callable[[Mapping[str, Any]], str] | None = None

    @property
    def path_names(self) -> frozenset[str]:
        return frozenset(self.path)

    async def parse(self, parts: RequestParts) -> OpCall:
        data: dict[str, Any] = dict(await parts.body()) if self.reads_body else {}
        for name, reader in self.query.items():
            value = reader(parts.query.get(name), name)
            if value is not None:
                data[name] = value
        for name in self.path:
            data[name] = parts.path[name]
        op = self.choose(data) if self.choose is not None else self.ops[0]
        value = protocol.validate(op, data, max_message_bytes=parts.cfg.chat.max_message_bytes)
        return OpCall(op, value)

    def _data(self, op: str) -> JsonSchema:
        return OP_SPECS[op].data

    def parameters(self, cfg: Config) -> list[JsonSchema]:
        data = self._data(self.ops[0])
        properties = data.get("properties", {})
        required = set(data.get("required", ()))
        params = [_parameter(name, "path", properties[name], True) for name in self.path]
        for name, reader in self.query.items():
            schema = properties[name]
            param = _parameter(name, "query", schema, name in required)
            if reader is query_csv:
                param.update(style="form", explode=False)
            params.append(param)
        return params

    def body(self, cfg: Config) -> tuple[JsonSchema, bool] | None:
        if not self.reads_body:
            return None
        schemas = [without_fields(self._data(op), (*self.path, *self.query)) for op in self.ops]
        required = all(bool(s.get("required")) or "anyOf" in s for s in schemas)
        if len(schemas) == 1:
            return schemas[0], required
        return {"anyOf": schemas}, required

    def components(self) -> Iterable[Named]:
        return ()


def without_fields(schema: JsonSchema, names: Iterable[str]) -> JsonSchema:
    """An object schema without some of its properties (those the path or query carries)."""
    out = copy.deepcopy(schema)
    for name in names:
        out.get("properties", {}).pop(name, None)
        if name in out.get("required", []):
            out["required"] = [n for n in out["required"] if n != name]
    if "required" in out and not out["required"]:
        del out["required"]
    return out


@attrs.frozen
class OpData(Kind):
    """The rest of a body as an op's ``data`` (``exclude``: keys that are not the op's),
    with the path variables of ``path`` added, validated by the op's validator.
    Its properties are the body's own (``spread``)."""

    op: str
    path: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    spread: bool = True

    def parse(self, source: Mapping[str, Any], name: str, parts: RequestParts) -> Any:
        data = {k: v for k, v in source.items() if k not in self.exclude}
        for variable in self.path:
            data[variable] = parts.path[variable]
        return protocol.validate(self.op, data, max_message_bytes=parts.cfg.chat.max_message_bytes)

    def schema(self, cfg: Config) -> JsonSchema:
        return without_fields(OP_SPECS[self.op].data, (*self.path, *self.exclude))


# -- response types ----------------------------------------------------------------------------


@attrs.frozen
class Empty:
    """Done; nothing more to say."""


class Answer(Protocol):
    """A response type: the schema of the 200 answer, and how a handler's result is sent."""

    @property
    def content_type(self) -> str: ...

    def schema(self, cfg: Config) -> JsonSchema: ...

    def encode(self, result: Any) -> Response: ...

    def components(self) -> Iterable[Named]: ...


@attrs.frozen
class Reply:
    """The response type of an attrs class declared with ``out``: the handler returns an instance."""

    cls: type[Any]
    content_type: str = JSON

    def schema(self, cfg: Config) -> JsonSchema:
        doc = " ".join((self.cls.__doc__ or "").strip().split("\n\n")[0].split())
        return _object_schema([(n, w) for _, n, w in wire_fields(self.cls)], cfg, doc)

    def encode(self, result: Any) -> Response:
        if isinstance(result, Response):
            return result
        if not isinstance(result, self.cls):
            raise TypeError(f"a route answering {self.cls.__name__} returned {type(result).__name__}")
        body: dict[str, Any] = {}
        for attribute, wire_name, declared in wire_fields(self.cls):
            value = getattr(result, attribute)
            if value is None and declared.omit_none:
                continue
            body[wire_name] = value
        return json_response(body)

    def components(self) -> Iterable[Named]:
        for _, _, declared in wire_fields(self.cls):
            yield from declared.kind.components()


@attrs.frozen
class _SchemaAnswer:
    kind: Schema | Named

    @property
    def content_type(self) -> str:
        return self.kind.content_type if isinstance(self.kind, Schema) else JSON

    def schema(self, cfg: Config) -> JsonSchema:
        return self.kind.schema(cfg)

    def encode(self, result: Any) -> Response:
        if isinstance(result, Response):
            return result
        return json_response(result)

    def components(self) -> Iterable[Named]:
        return self.kind.components()


def OpReply(*ops: str) -> Schema:
    """The reply of an op (``OP_SPECS[op].reply``); of several ops, any of theirs."""
    replies: list[JsonSchema] = []
    for op in ops:
        if OP_SPECS[op].reply not in replies:
            replies.append(OP_SPECS[op].reply)
    return Schema(replies[0] if len(replies) == 1 else {"anyOf": replies})


def _answer(answers: type[Any] | Schema | Named) -> Answer:
    if isinstance(answers, (Schema, Named)):
        return _SchemaAnswer(answers)
    return Reply(answers)


# -- routes ------------------------------------------------------------------------------------

Handler: TypeAlias = Callable[..., Awaitable[Any]]
_VARIABLE: Final = re.compile(r"<(?:[^:>]+:)?([^>]+)>")


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: ``/rooms/<path:room>`` → ``/rooms/{room}``."""
    return _VARIABLE.sub(r"{\1}", rule)


@attrs.frozen
class Route:
    """One operation of an HTTP door. Build it with ``@route``.

    Attributes:
        method, path: the HTTP method and the werkzeug rule under the door's prefix.
        door: ``server``, ``client`` or ``ops``.
        operation_id, summary, tag: the operation's name, line and group in the document.
        handler: called with the parsed input (or the path variables when there is none).
        accepts: the request type (None: the route reads nothing but its path).
        answers: the response type.
        errors: the error statuses the route itself answers (beyond its door's and its input's).
        guards: called before the input is read.
        security: the credentials the document names (None: the door's).
        described: parameters the handler reads itself, described only (the SSE stream).
        op_family: the route runs any op of the client REST (``{op}``): one operation per op.
        error_schema: the schema of error answers when they are not the error body (readiness).
    """

    method: str
    path: str
    door: Door
    operation_id: str
    summary: str
    tag: str
    handler: Handler
    accepts: Input | None
    answers: Answer
    errors: tuple[int, ...] = ()
    guards: tuple[Callable[[], object], ...] = ()
    security: tuple[str, ...] | None = None
    described: tuple[JsonSchema, ...] = ()
    op_family: bool = False
    error_schema: JsonSchema | None = None

    @property
    def rule(self) -> str:
        return DOOR_PREFIX[self.door] + self.path

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(_VARIABLE.findall(self.path))

    async def view(self, **path: str) -> Response:
        """The view the app serves: guards, then the input, then the handler, then the answer."""
        for guard in self.guards:
            guard()
        if self.accepts is None:
            result = await self.handler(**path)
        else:
            parts = RequestParts(cfg=services().config, path=path, query=request.args, read_body=json_body)
            result = await self.handler(await self.accepts.parse(parts))
        return self.answers.encode(result)

    def components(self) -> Iterable[Named]:
        if self.accepts is not None:
            yield from self.accepts.components()
        yield from self.answers.components()


def route(
    method: str,
    path: str,
    *,
    door: Door,
    operation_id: str,
    summary: str,
    tag: str,
    answers: type[Any] | Schema | Named,
    accepts: type[Any] | Input | None = None,
    errors: tuple[int, ...] = (),
    guards: tuple[Callable[[], object], ...] = (),
    security: tuple[str, ...] | None = None,
    described: tuple[JsonSchema, ...] = (),
    op_family: bool = False,
    error_schema: JsonSchema | None = None,
) -> Callable[[Handler], Route]:
    """Describe a handler as a route (see the module's docstring); registers nothing."""
    request_type: Input | None = Fields(accepts) if isinstance(accepts, type) else accepts

    def describe(handler: Handler) -> Route:
        described_route = Route(
            method=method,
            path=path,
            door=door,
            operation_id=operation_id,
            summary=summary,
            tag=tag,
            handler=handler,
            accepts=request_type,
            answers=_answer(answers),
            errors=errors,
            guards=guards,
            security=security,
            described=described,
            op_family=op_family,
            error_schema=error_schema,
        )
        if request_type is not None and request_type.path_names != described_route.variables:
            raise TypeError(
                f"{operation_id}: the path has {sorted(described_route.variables)}, "
                f"the request type reads {sorted(request_type.path_names)}"
            )
        return described_route

    return describe

