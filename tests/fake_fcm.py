"""A fake Firebase Cloud Messaging that speaks FCM's real HTTP v1 API.

The test suite starts it on 127.0.0.1 (HTTPS with HTTP/2, through hypercorn,
with a self-signed certificate that the daemon trusts through ``push.ca_file``)
and points ``push.token_url``, ``push.fcm_url`` and ``push.iid_url`` at it.

What it serves, as Google does:

- ``POST /token``: the OAuth2 token endpoint. It checks the RS256 JWT
  assertion against the service account's public key (issuer, audience,
  scope, ``iat`` / ``exp``) and answers ``access_token`` / ``expires_in``.
- ``POST /v1/projects/<project>/messages:send``: checks the bearer token (issued
  here, not expired, not revoked: else 401 ``UNAUTHENTICATED``) and the message
  against the v1 schema (one target; known fields; string data; android
  priority and ttl; 4,096 bytes), then records it.
- ``POST /iid/v1:batchAdd`` and ``:batchRemove``: Instance ID topic management.

And it fails on request, in each of FCM's ways, with FCM's error bodies
(``error.details[]`` carrying ``google.firebase.fcm.v1.FcmError``):
``fail_next("UNAVAILABLE", retry_after="7")``, ``unregister(token)``,
``token_endpoint_down = True``, ``revoke_tokens()``.

Run alone (for bench/notify.py): ``python -m tests.fake_fcm --dir DIR`` prints
one JSON line with its URLs and files, and serves ``GET /_fake/stats``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import itertools
import json
import logging
import re
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import attrs
import jwt
import orjson
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from realtimed.clock import SystemClock, WallClock

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
MAX_PAYLOAD = 4096
_DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
_TOPIC = re.compile(r"^[a-zA-Z0-9\-_.~%]{1,900}$")

_MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "token", "topic", "condition"}
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_ANDROID_FIELDS = {"collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification", "fcm_options", "direct_boot_ok"}
_ANDROID_NOTIFICATION_FIELDS = {
    "title", "body", "icon", "color", "sound", "tag", "click_action", "body_loc_key", "body_loc_args", "title_loc_key",
    "title_loc_args", "channel_id", "ticker", "sticky", "event_time", "local_only", "notification_priority",
    "default_sound", "default_vibrate_timings", "default_light_settings", "vibrate_timings", "visibility",
    "notification_count", "light_settings", "image", "bypass_proxy_notification", "proxy",
}
_APNS_FIELDS = {"headers", "payload", "fcm_options", "live_activity_token"}
_WEBPUSH_FIELDS = {"headers", "data", "notification", "fcm_options"}

# name → (HTTP status, google status, message)
FAULTS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_TOKEN": (400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Messages sent'"),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
}

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def fcm_error(name: str) -> dict[str, Any]:
    """FCM's error body for one of ``FAULTS``."""
    status, google_status, message = FAULTS[name]
    code = "INVALID_ARGUMENT" if name == "INVALID_TOKEN" else name
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR, "errorCode": code}]
    if name == "INVALID_TOKEN":
        details.append({"@type": BAD_REQUEST, "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]})
    if name == "INVALID_ARGUMENT":
        details.append({"@type": BAD_REQUEST, "fieldViolations": [{"field": "message", "description": "Invalid message"}]})
    if name == "QUOTA_EXCEEDED":
        details.append({"@type": QUOTA_FAILURE, "violations": [{"subject": "project", "description": "Messages sent"}]})
    return {"error": {"code": status, "message": message, "status": google_status, "details": details}}


def bad_request(field: str, description: str) -> dict[str, Any]:
    return {
        "error": {
            "code": 400,
            "message": f"Invalid value at '{field}': {description}" if field else description,
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT"},
                {"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": description}]},
            ],
        }
    }


UNAUTHENTICATED = {
    "error": {
        "code": 401,
        "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
        "or other valid authentication credential.",
        "status": "UNAUTHENTICATED",
    }
}


@attrs.define
class Fault:
    name: str
    times: int
    retry_after: str | None = None
    token: str | None = None  # only sends to this token (None: any)


@attrs.frozen
class Received:
    """One request to messages:send."""

    at: float  # trio time
    wall: datetime.datetime  # the fake's wall clock
    status: int
    target: str  # the token, or "/topics/<name>"
    message: dict[str, Any]
    access_token: str


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-fcm")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "fake-fcm-cert.pem", folder / "fake-fcm-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


_RSA_KEY: rsa.RSAPrivateKey | None = None


def _service_key() -> rsa.RSAPrivateKey:
    global _RSA_KEY
    if _RSA_KEY is None:
        _RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _RSA_KEY


class FakeFcm:
    """The fake; ``await nursery.start(fake.serve, folder)`` starts it and
    returns its base URL. Times are Trio times (it follows a MockClock)."""

    def __init__(
        self,
        *,
        project_id: str = "demo-project",
        client_email: str = "realtimed@demo-project.iam.gserviceaccount.com",
        clock: WallClock | None = None,
        token_ttl_s: float = 3600.0,
    ) -> None:
        self.project_id = project_id
        self.client_email = client_email
        self.clock = clock or SystemClock()
        self.token_ttl_s = token_ttl_s
        self.key = _service_key()
        self.base_url = ""
        self.ca_file: Path | None = None
        self.key_file: Path | None = None
        self.issued: dict[str, float] = {}  # access token → expiry (trio time)
        self.token_requests: list[float] = []
        self.token_failures = 0
        self.token_endpoint_down = False
        self.requests: list[Received] = []
        self.faults: deque[Fault] = deque()
        self.unregistered: set[str] = set()
        self.topics: dict[str, set[str]] = {}
        self.iid_requests: list[dict[str, Any]] = []
        self.latency_s = 0.0
        self._ids = itertools.count(1)
        self._changed = trio.Event()

    # -- what the tests read ----------------------------------------------------------------

    @property
    def delivered(self) -> list[Received]:
        """Sends FCM accepted."""
        return [r for r in self.requests if r.status == 200]

    def delivered_to(self, token: str) -> list[Received]:
        return [r for r in self.delivered if r.target == token]

    def attempts_to(self, token: str) -> list[Received]:
        return [r for r in self.requests if r.target == token]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked after each request the
        fake answers (no polling, so a MockClock is not kept busy)."""
        while not predicate():
            await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- what the tests steer ---------------------------------------------------------------

    def fail_next(self, name: str, *, times: int = 1, retry_after: str | None = None, token: str | None = None) -> None:
        """The next ``times`` sends (to ``token``, if given) fail as ``name`` (a key of ``FAULTS``)."""
        if name not in FAULTS:
            raise ValueError(name)
        self.faults.append(Fault(name, times, retry_after, token))

    def unregister(self, token: str) -> None:
        """``token`` answers 404 UNREGISTERED from now on."""
        self.unregistered.add(token)

    def revoke_tokens(self) -> None:
        """Every access token issued so far is refused from now on."""
        self.issued.clear()

    def write_key_file(self, folder: Path) -> Path:
        """A service-account key file whose token_uri is this fake's."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        info = {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": "fake-key-1",
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1234567890",
            "token_uri": f"{self.base_url}/token",
        }
        path = folder / "service-account.json"
        path.write_text(json.dumps(info))
        self.key_file = path
        return path

    def push_config(self, folder: Path, **extra: Any) -> dict[str, Any]:
        """The ``[push]`` section that points realtimed at this fake."""
        section: dict[str, Any] = {
            "service_account_file": str(self.write_key_file(folder)),
            "fcm_url": self.base_url,
            "iid_url": f"{self.base_url}/iid-base",
            "ca_file": str(self.ca_file),
        }
        section.update(extra)
        return section

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, folder: Path, port: int = 0, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        cert, key = make_certificate(folder)
        self.ca_file = cert
        config = HypercornConfig()
        config.bind = [f"127.0.0.1:{port}"]
        config.certfile = str(cert)
        config.keyfile = str(key)
        config.keep_alive_timeout = 24 * 3600.0
        config.accesslog = None
        config.errorlog = logging.getLogger("fake_fcm")
        config.h2_max_concurrent_streams = 1000
        config.keep_alive_max_requests = 1 << 62

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, self, config)
            self.base_url = binds[0]
            task_status.started(self.base_url)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        status, answer, extra = await self._route(method, path, headers, body)
        out_headers = [(b"content-type", b"application/json; charset=UTF-8")]
        out_headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": orjson.dumps(answer)})

    async def _route(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and path == "/token":
            return self._token(headers, body)
        if method == "POST" and path == f"/v1/projects/{self.project_id}/messages:send":
            return await self._send(headers, body)
        if method == "POST" and path.startswith("/v1/projects/") and path.endswith("/messages:send"):
            return 403, {"error": {"code": 403, "message": "Permission denied on project", "status": "PERMISSION_DENIED"}}, {}
        if method == "POST" and path in ("/iid-base/iid/v1:batchAdd", "/iid-base/iid/v1:batchRemove"):
            return self._iid(path.rsplit(":", 1)[1], headers, body)
        if method == "GET" and path == "/_fake/stats":
            delivered = self.delivered
            return 200, {
                "delivered": len(delivered),
                "requests": len(self.requests),
                "first_at": delivered[0].at if delivered else None,
                "last_at": delivered[-1].at if delivered else None,
                "tokens_issued": len(self.token_requests),
            }, {}
        return 404, {"error": {"code": 404, "message": f"no route {method} {path}", "status": "NOT_FOUND"}}, {}

    # -- OAuth2 -----------------------------------------------------------------------------

    def _token(self, headers: Mapping[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        self.token_requests.append(trio.current_time())
        self._note()
        if self.token_endpoint_down:
            self.token_failures += 1
            return 503, {"error": "temporarily_unavailable", "error_description": "try again later"}, {}
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}, {}
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.key.public_key(),
                algorithms=["RS256"],
                audience=f"{self.base_url}/token",
                issuer=self.client_email,
                options={"require": ["iat", "exp", "iss", "aud"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            return 400, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}, {}
        now = self.clock.now().timestamp()
        if not (claims["iat"] - 60 <= now <= claims["exp"] + 60) or claims["exp"] - claims["iat"] > 3600:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT: Token must be a short-lived token"}, {}
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope"}, {}
        access = f"ya29.fake-{next(self._ids)}"
        self.issued[access] = trio.current_time() + self.token_ttl_s
        return 200, {"access_token": access, "expires_in": int(self.token_ttl_s), "token_type": "Bearer"}, {}

    def _bearer_ok(self, headers: Mapping[str, str]) -> str | None:
        scheme, _, access = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer":
            return None
        expiry = self.issued.get(access)
        if expiry is None or trio.current_time() >= expiry:
            return None
        return access

    # -- messages:send ----------------------------------------------------------------------

    async def _send(self, headers: Mapping[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        access = self._bearer_ok(headers)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        message = request.get("message") if isinstance(request, dict) else None
        target = ""
        if isinstance(message, dict):
            target = message.get("token") or (f"/topics/{message['topic']}" if message.get("topic") else "")
        if access is None:
            self.requests.append(Received(trio.current_time(), self.clock.now(), 401, str(target), message or {}, ""))
            self._note()
            return 401, UNAUTHENTICATED, {"www-authenticate": 'Bearer realm="https://accounts.google.com/"'}
        if self.latency_s:
            await trio.sleep(self.latency_s)
        status, answer, extra = self._check_and_answer(request, message)
        self.requests.append(Received(trio.current_time(), self.clock.now(), status, str(target), message or {}, access))
        self._note()
        return status, answer, extra

    def _check_and_answer(self, request: Any, message: Any) -> tuple[int, Any, dict[str, str]]:
        problem = self._schema_problem(request, message)
        if problem is not None:
            return 400, bad_request(*problem), {}
        assert isinstance(message, dict)
        token = message.get("token")
        for fault in list(self.faults):
            if fault.token is not None and fault.token != token:
                continue
            fault.times -= 1
            if fault.times <= 0:
                self.faults.remove(fault)
            status = FAULTS[fault.name][0]
            extra = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
            return status, fcm_error(fault.name), extra
        if token is not None and token in self.unregistered:
            return 404, fcm_error("UNREGISTERED"), {}
        if token is not None and (token.startswith("bad:") or " " in token):
            return 400, fcm_error("INVALID_TOKEN"), {}
        return 200, {"name": f"projects/{self.project_id}/messages/{next(self._ids)}"}, {}

    def _schema_problem(self, request: Any, message: Any) -> tuple[str, str] | None:
        if not isinstance(request, dict):
            return "", "Invalid JSON payload received."
        for key in request:
            if key not in ("message", "validate_only"):
                return "", f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
        if not isinstance(message, dict):
            return "message", "message is required"
        for key in message:
            if key not in _MESSAGE_FIELDS:
                return "message", f'Invalid JSON payload received. Unknown name "{key}" at \'message\': Cannot find field.'
        targets = [k for k in ("token", "topic", "condition") if message.get(k)]
        if len(targets) != 1:
            return "message", "Exactly one of token, topic or condition must be set"
        if message.get("topic") is not None and not _TOPIC.match(str(message["topic"])):
            return "message.topic", "Invalid topic name"
        size = len(orjson.dumps({k: v for k, v in message.items() if k not in ("token", "topic", "condition")}))
        if size > MAX_PAYLOAD:
            return "message", f"Message is too big ({size} bytes; the limit is {MAX_PAYLOAD})"
        problem = _string_map(message.get("data"), "message.data")
        if problem is not None:
            return problem
        for key in message.get("data") or {}:
            if key in ("from", "message_type", "notification") or key.lower().startswith(("google", "gcm")):
                return "message.data", f"Invalid data key {key!r}"
        note = message.get("notification")
        if note is not None:
            if not isinstance(note, dict) or not set(note) <= _NOTIFICATION_FIELDS:
                return "message.notification", "unknown field"
            if not all(isinstance(v, str) for v in note.values()):
                return "message.notification", "values must be strings"
        android = message.get("android")
        if android is not None:
            if not isinstance(android, dict) or not set(android) <= _ANDROID_FIELDS:
                return "message.android", "unknown field"
            if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
                return "message.android.priority", "must be NORMAL or HIGH"
            if "ttl" in android and not (isinstance(android["ttl"], str) and _DURATION.match(android["ttl"])):
                return "message.android.ttl", "Illegal duration format"
            note = android.get("notification")
            if note is not None and (not isinstance(note, dict) or not set(note) <= _ANDROID_NOTIFICATION_FIELDS):
                return "message.android.notification", "unknown field"
            problem = _string_map(android.get("data"), "message.android.data")
            if problem is not None:
                return problem
        apns = message.get("apns")
        if apns is not None:
            if not isinstance(apns, dict) or not set(apns) <= _APNS_FIELDS:
                return "message.apns", "unknown field"
            problem = _string_map(apns.get("headers"), "message.apns.headers")
            if problem is not None:
                return problem
            payload = apns.get("payload")
            if payload is not None and (not isinstance(payload, dict) or not isinstance(payload.get("aps", {}), dict)):
                return "message.apns.payload", "aps must be an object"
        webpush = message.get("webpush")
        if webpush is not None:
            if not isinstance(webpush, dict) or not set(webpush) <= _WEBPUSH_FIELDS:
                return "message.webpush", "unknown field"
            for field in ("headers", "data"):
                problem = _string_map(webpush.get(field), f"message.webpush.{field}")
                if problem is not None:
                    return problem
        return None

    # -- Instance ID ------------------------------------------------------------------------

    def _iid(self, op: str, headers: Mapping[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        if headers.get("access_token_auth") != "true" or self._bearer_ok(headers) is None:
            return 401, {"error": "Unauthorized"}, {}
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, {"error": "InvalidJson"}, {}
        to = request.get("to") if isinstance(request, dict) else None
        tokens = request.get("registration_tokens") if isinstance(request, dict) else None
        if not isinstance(to, str) or not to.startswith("/topics/") or not _TOPIC.match(to[len("/topics/"):]):
            return 400, {"error": "InvalidParameters: to"}, {}
        if not isinstance(tokens, list) or not 1 <= len(tokens) <= 1000:
            return 400, {"error": "InvalidParameters: registration_tokens"}, {}
        topic = to[len("/topics/"):]
        self.iid_requests.append({"op": op, "topic": topic, "tokens": list(tokens)})
        self._note()
        members = self.topics.setdefault(topic, set())
        results: list[dict[str, str]] = []
        for token in tokens:
            if not isinstance(token, str) or token in self.unregistered:
                results.append({"error": "NOT_FOUND"})
            elif token.startswith("bad:"):
                results.append({"error": "INVALID_ARGUMENT"})
            else:
                (members.add if op == "batchAdd" else members.discard)(token)
                results.append({})
        return 200, {"results": results}, {}


def _string_map(value: Any, field: str) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return field, "must be a map"
    for key, item in value.items():
        if not isinstance(item, str):
            return f"{field}[{key}]", "Invalid value: must be a string"
    return None


async def _main(folder: Path, port: int, latency_s: float) -> None:
    fake = FakeFcm()
    fake.latency_s = latency_s
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve, folder, port)
        key_file = fake.write_key_file(folder)
        print(json.dumps({"url": url, "ca_file": str(fake.ca_file), "key_file": str(key_file)}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a fake FCM HTTP v1 server")
    parser.add_argument("--dir", type=Path, required=True, help="folder for its certificate and key file")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering each send")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        trio.run(_main, args.dir, args.port, args.latency_ms / 1000)
    except KeyboardInterrupt:
        pass
