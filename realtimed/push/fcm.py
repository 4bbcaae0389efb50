"""The FCM HTTP v1 client: OAuth2 access tokens, ``messages:send``, topic management.

Access tokens: an RS256 JWT assertion signed with the service account's key is
exchanged at the token endpoint (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``)
for a bearer token that lives about an hour. ``AccessTokens`` caches it and
fetches the next one ``token_refresh_margin_s`` before it expires (at most half
its life early). One refresh runs at a time: while the current token is still
valid every other sender keeps using it; when there is none, they wait for the
one refresh. A send that gets 401 ``UNAUTHENTICATED`` drops the token and tries
once more with a fresh one.

Sending: one HTTP/2 connection carries up to ``push.concurrency`` requests at
once (FCM v1 has no batch send). While ``run`` runs, ``messages:send`` goes
through ``H2Sender`` (h2 on a Trio TLS stream, ALPN ``h2``; ``push.h2_sender``),
which costs a fraction of httpx's CPU per request; the token endpoint, Instance
ID, ``push.http2 = false``, plain-http endpoints and servers that do not choose
``h2`` go through httpx. ``send`` never raises for FCM's answer; it
returns a ``FcmResult`` whose ``kind`` says what to do:

=====================  =============================================  ==========================
kind                   FCM said                                       the caller
=====================  =============================================  ==========================
``ok``                 200                                            done
``unregistered``       404 ``UNREGISTERED``                           deactivates the token
``invalid_token``      400 ``INVALID_ARGUMENT`` on ``message.token``  deactivates the token
``bad_payload``        400 ``INVALID_ARGUMENT`` on anything else      fails the job, keeps token
``too_large``          (refused here, never sent)                     fails the job, keeps token
``sender_id_mismatch`` 403 ``SENDER_ID_MISMATCH``                     alarm, fails, keeps token
``third_party_auth``   401 ``THIRD_PARTY_AUTH_ERROR`` (APNs/web key)  alarm, fails, keeps token
``forbidden``          401/403 without an FCM error code              alarm, fails
``quota``              429 ``QUOTA_EXCEEDED``                         retries after Retry-After
``unavailable``        503 ``UNAVAILABLE``                            retries (Retry-After or backoff)
``internal``           500 ``INTERNAL``                               retries (Retry-After or backoff)
``network``            no answer (connect, TLS, timeout)              retries with backoff
``token_unavailable``  the token endpoint did not give a token        retries with backoff
=====================  =============================================  ==========================

A 429 slows down every sender of this node: no request leaves until its
Retry-After (or ``push.quota_retry_s``) has passed.
"""

from __future__ import annotations

import email.utils
import logging
import math
import ssl
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

import attrs
import httpx
import jwt
import orjson
import trio
from prometheus_client import Counter, Gauge, Histogram

from realtimed.clock import WallClock
from realtimed.config import PushConfig
from realtimed.errors import ConfigError, Unavailable
from realtimed.metrics import REGISTRY
from realtimed.push.h2sender import H2NotNegotiated, H2Sender, H2TransportError
from realtimed.push.messages import check_message

__all__ = [
    "FCM_SCOPE",
    "AccessTokens",
    "FcmClient",
    "FcmResult",
    "ServiceAccount",
    "TokenUnavailable",
    "classify",
]

log = logging.getLogger(__name__)

FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_TOKEN_URL: Final = "https://oauth2.googleapis.com/token"
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S: Final = 3600
FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE: Final = "type.googleapis.com/google.rpc.BadRequest"
IID_BATCH_MAX: Final = 1000

RETRY_KINDS: Final = frozenset({"quota", "unavailable", "internal", "network", "token_unavailable"})
DEACTIVATE_KINDS: Final = frozenset({"unregistered", "invalid_token"})
ALARM_KINDS: Final = frozenset({"sender_id_mismatch", "third_party_auth", "forbidden"})

PUSH_SENDS: Final = Counter(
    "realtimed_push_sends",
    "FCM sends by outcome (ok, unregistered, invalid_token, bad_payload, too_large, quota, unavailable, internal, "
    "network, token_unavailable, sender_id_mismatch, third_party_auth, forbidden) and FCM error code",
    ["outcome", "error_code"],
    registry=REGISTRY,
)
PUSH_ALARMS: Final = Counter(
    "realtimed_push_alarms",
    "FCM answers that need an operator (SENDER_ID_MISMATCH, THIRD_PARTY_AUTH_ERROR, a refused key or token)",
    ["reason"],
    registry=REGISTRY,
)
PUSH_LATENCY: Final = Histogram(
    "realtimed_push_latency_seconds",
    "one messages:send request, from sending to FCM's answer",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
PUSH_IN_FLIGHT: Final = Gauge("realtimed_push_in_flight", "FCM requests in flight", registry=REGISTRY)
PUSH_SLOWDOWNS: Final = Counter(
    "realtimed_push_slowdowns", "429 answers that paused every sender of this node", registry=REGISTRY
)
TOKEN_REFRESHES: Final = Counter(
    "realtimed_push_token_refreshes", "OAuth2 access-token requests by outcome", ["outcome"], registry=REGISTRY
)


class TokenUnavailable(Exception):
    """No access token could be had: the token endpoint is down or refused the key."""


# ---------------------------------------------------------------------------
# Service account and access tokens
# ---------------------------------------------------------------------------


@attrs.frozen(repr=False)
class ServiceAccount:
    """The fields of a Google service-account key file that matter here."""

    project_id: str
    client_email: str
    private_key: str
    private_key_id: str
    token_uri: str

    def __repr__(self) -> str:  # never show the key
        return f"ServiceAccount({self.client_email!r}, project {self.project_id!r})"

    @classmethod
    def from_file(cls, path: str | Path) -> ServiceAccount:
        """Read a key file; raises ``ConfigError`` naming ``push.service_account_file``."""
        key = "push.service_account_file"
        try:
            raw = orjson.loads(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError([(key, f"cannot read {path}: {exc.strerror or exc}")]) from exc
        except orjson.JSONDecodeError as exc:
            raise ConfigError([(key, f"{path} is not JSON: {exc}")]) from exc
        if not isinstance(raw, dict) or raw.get("type", "service_account") != "service_account":
            raise ConfigError([(key, f"{path} is not a service-account key file")])
        missing = [f for f in ("client_email", "private_key") if not isinstance(raw.get(f), str) or not raw[f]]
        if missing:
            raise ConfigError([(key, f"{path} has no {', '.join(missing)}")])
        return cls(
            project_id=str(raw.get("project_id") or ""),
            client_email=raw["client_email"],
            private_key=raw["private_key"],
            private_key_id=str(raw.get("private_key_id") or ""),
            token_uri=str(raw.get("token_uri") or DEFAULT_TOKEN_URL),
        )


class AccessTokens:
    """The cached OAuth2 access token for FCM, refreshed early, one refresh at a time.

    Expiry is kept in Trio time (the token's ``expires_in``); the assertion's
    ``iat`` and ``exp`` come from the wall clock.
    """

    def __init__(
        self,
        account: ServiceAccount,
        *,
        http: httpx.AsyncClient,
        token_url: str,
        clock: WallClock,
        margin_s: float,
        timeout_s: float,
    ) -> None:
        self.account = account
        self.token_url = token_url
        self._http = http
        self._clock = clock
        self._margin_s = margin_s
        self._timeout_s = timeout_s
        self._token: str | None = None
        self._expires_at = -math.inf
        self._refresh_at = -math.inf
        self._lock = trio.Lock()
        self.refreshes = 0

    def _valid(self, now: float) -> bool:
        return self._token is not None and now < self._expires_at

    async def get(self) -> str:
        """A valid access token; raises ``TokenUnavailable`` when none can be had."""
        now = trio.current_time()
        if self._valid(now) and (now < self._refresh_at or self._lock.locked()):
            assert self._token is not None
            return self._token
        async with self._lock:
            now = trio.current_time()
            if self._valid(now) and now < self._refresh_at:
                assert self._token is not None
                return self._token
            try:
                return await self._refresh()
            except TokenUnavailable as exc:
                if self._valid(trio.current_time()):
                    log.warning("access token refresh failed (%s); the current token is valid a while longer", exc)
                    assert self._token is not None
                    return self._token
                raise

    def invalidate(self, token: str) -> None:
        """FCM refused ``token``: the next ``get`` fetches a new one."""
        if token == self._token:
            self._token = None
            self._expires_at = self._refresh_at = -math.inf

    def _assertion(self) -> str:
        now = int(self._clock.now().timestamp())
        claims = {
            "iss": self.account.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        }
        headers = {"kid": self.account.private_key_id} if self.account.private_key_id else None
        try:
            return jwt.encode(claims, self.account.private_key, algorithm="RS256", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            PUSH_ALARMS.labels("bad_private_key").inc()
            raise TokenUnavailable(f"cannot sign with the service account's private key: {exc}") from exc

    async def _refresh(self) -> str:
        form = {"grant_type": JWT_BEARER, "assertion": self._assertion()}
        try:
            with trio.fail_after(self._timeout_s):
                response = await self._http.post(self.token_url, data=form)
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            TOKEN_REFRESHES.labels("unreachable").inc()
            raise TokenUnavailable(f"token endpoint unreachable: {type(exc).__name__}: {exc}") from exc
        body = _json(response)
        if response.status_code != 200:
            error = str(body.get("error") or f"HTTP {response.status_code}")
            detail = str(body.get("error_description") or "")
            if 400 <= response.status_code < 500:
                TOKEN_REFRESHES.labels("refused").inc()
                PUSH_ALARMS.labels("token_refused").inc()
            else:
                TOKEN_REFRESHES.labels("unavailable").inc()
            raise TokenUnavailable(f"token endpoint answered {response.status_code} {error} {detail}".strip())
        token = body.get("access_token")
        expires_in = body.get("expires_in", ASSERTION_LIFETIME_S)
        if not isinstance(token, str) or not token or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            TOKEN_REFRESHES.labels("unavailable").inc()
            raise TokenUnavailable("token endpoint answered without access_token / expires_in")
        now = trio.current_time()
        self._token = token
        self._expires_at = now + float(expires_in)
        self._refresh_at = self._expires_at - min(self._margin_s, float(expires_in) / 2)
        self.refreshes += 1
        TOKEN_REFRESHES.labels("ok").inc()
        log.info("FCM access token for %s refreshed; valid %.0f s", self.account.client_email, float(expires_in))
        return token


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@attrs.frozen
class FcmResult:
    """What became of one send (see the module's table)."""

    kind: str
    status: int = 0
    code: str = ""
    message: str = ""
    retry_after: float | None = None
    name: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @property
    def retry(self) -> bool:
        return self.kind in RETRY_KINDS

    @property
    def deactivate(self) -> bool:
        return self.kind in DEACTIVATE_KINDS

    @property
    def alarm(self) -> bool:
        return self.kind in ALARM_KINDS

    def describe(self) -> str:
        parts = [self.kind]
        if self.status:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(self.code)
        if self.message:
            parts.append(self.message)
        return ": ".join(parts[:1]) + (" (" + ", ".join(parts[1:]) + ")" if len(parts) > 1 else "")


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def classify(status: int, body: Mapping[str, Any], retry_after: float | None = None) -> FcmResult:
    """Read FCM's answer: the ``FcmError`` code in ``error.details`` first, then the status."""
    if status == 200:
        return FcmResult("ok", status, name=str(body.get("name", "")))
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    assert isinstance(error, Mapping)
    message = str(error.get("message", ""))
    google_status = str(error.get("status", ""))
    fcm_code = ""
    fields: list[str] = []
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, Mapping):
            continue
        if detail.get("@type") == FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
            fcm_code = detail["errorCode"]
        if detail.get("@type") == BAD_REQUEST_TYPE:
            for violation in detail.get("fieldViolations") or []:
                if isinstance(violation, Mapping) and isinstance(violation.get("field"), str):
                    fields.append(violation["field"])
    code = fcm_code or google_status

    def result(kind: str) -> FcmResult:
        return FcmResult(kind, status, code, message, retry_after)

    if fcm_code == "UNREGISTERED":
        return result("unregistered")
    if fcm_code == "INVALID_ARGUMENT" or (not fcm_code and status == 400):
        token_field = "message.token" in fields
        token_text = "registration token" in message.lower()
        return result("invalid_token" if token_field or token_text else "bad_payload")
    if fcm_code == "SENDER_ID_MISMATCH":
        return result("sender_id_mismatch")
    if fcm_code == "THIRD_PARTY_AUTH_ERROR":
        return result("third_party_auth")
    if fcm_code == "QUOTA_EXCEEDED" or status == 429:
        return result("quota")
    if fcm_code == "UNAVAILABLE" or status == 503:
        return result("unavailable")
    if fcm_code == "INTERNAL" or status >= 500:
        return result("internal")
    if status == 401:
        return result("unauthenticated")
    if status in (403, 404):
        # Without an FCM code: the project, the API or the key is wrong.
        return result("forbidden")
    return result("bad_payload")


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


_JSON_UTF8: Final = b"application/json; charset=UTF-8"


def _json_bytes(content: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _json(response: httpx.Response) -> dict[str, Any]:
    return _json_bytes(response.content)


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(ca_file)
    return ctx


class FcmClient(trio.abc.AsyncResource):
    """Sends to FCM HTTP v1 and manages topic subscriptions through Instance ID.

    Resource handling:
        One ``httpx.AsyncClient`` (HTTP/2, kept-alive connections) for the token
        endpoint, Instance ID and, when the lean sender is off, FCM; ``aclose``
        closes it (idempotent). ``run`` owns the nursery of the ``H2Sender``'s
        connection readers and closes the sender when it ends. At most
        ``push.concurrency`` FCM requests are in flight.

    Error handling:
        ``send`` turns every answer and every transport failure into a
        ``FcmResult`` and counts it (``realtimed_push_sends``); alarms go to
        ``realtimed_push_alarms``. Topic calls raise ``Unavailable`` when FCM
        or the token endpoint cannot be reached.
    """

    def __init__(
        self,
        cfg: PushConfig,
        account: ServiceAccount,
        *,
        clock: WallClock,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.account = account
        self.project_id = cfg.project_id or account.project_id
        if not self.project_id:
            raise ConfigError([("push.project_id", "not set, and the key file names no project_id")])
        self._clock = clock
        timeout = httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s)
        limits = httpx.Limits(max_connections=max(cfg.concurrency, 10), max_keepalive_connections=10)
        self._http = httpx.AsyncClient(
            http2=cfg.http2,
            verify=_ssl_context(cfg.ca_file),
            timeout=timeout,
            limits=limits,
            transport=transport,
        )
        self.tokens = AccessTokens(
            account,
            http=self._http,
            token_url=cfg.token_url or account.token_uri,
            clock=clock,
            margin_s=cfg.token_refresh_margin_s,
            timeout_s=cfg.token_timeout_s,
        )
        self.send_url = f"{cfg.fcm_url.rstrip('/')}/v1/projects/{quote(self.project_id, safe='')}/messages:send"
        self._iid_url = cfg.iid_url.rstrip("/")
        self._send_path = urlsplit(self.send_url).path
        self._h2: H2Sender | None = None
        self._limiter = trio.CapacityLimiter(cfg.concurrency)
        self._resume_at = -math.inf
        self._closed = False

    async def run(self, *, task_status: trio.TaskStatus[FcmClient] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the lean HTTP/2 sender (its connection readers live here) until cancelled."""
        target = urlsplit(self.cfg.fcm_url)
        if not (self.cfg.h2_sender and self.cfg.http2 and target.scheme == "https" and target.hostname):
            task_status.started(self)
            await trio.sleep_forever()
        assert target.hostname is not None
        async with trio.open_nursery() as nursery:
            sender = H2Sender(
                host=target.hostname,
                port=target.port or 443,
                ssl_context=_ssl_context(self.cfg.ca_file),
                nursery=nursery,
                connect_timeout_s=self.cfg.connect_timeout_s,
                request_timeout_s=self.cfg.request_timeout_s,
                max_body_bytes=self.cfg.max_response_bytes,
            )
            try:
                self._h2 = sender
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                self._h2 = None
                await sender.aclose()

    @property
    def paused_for(self) -> float:
        """Seconds until senders may send again after a 429 (0 when not paused)."""
        return max(0.0, self._resume_at - trio.current_time())

    def slow_down(self, seconds: float) -> None:
        """Hold every sender of this node for ``seconds`` from now."""
        resume = trio.current_time() + seconds
        if resume > self._resume_at:
            self._resume_at = resume
            PUSH_SLOWDOWNS.inc()
            log.warning("FCM quota exceeded: every push sender waits %.1f s", seconds)

    async def _wait_resume(self) -> None:
        while trio.current_time() < self._resume_at:
            await trio.sleep_until(self._resume_at)

    async def send(self, message: Mapping[str, Any], *, token: str | None = None, topic: str | None = None) -> FcmResult:
        """Send one message to a device ``token`` or a ``topic``."""
        problem = check_message(message, to_topic=topic is not None)
        if problem is not None:
            return self._count(FcmResult("too_large" if "bytes" in problem else "bad_payload", message=problem))
        body = dict(message)
        if token is not None:
            body["token"] = token
        elif topic is not None:
            body["topic"] = topic
        payload = orjson.dumps({"message": body})
        for auth_try in (1, 2):
            await self._wait_resume()
            try:
                access = await self.tokens.get()
            except TokenUnavailable as exc:
                return self._count(FcmResult("token_unavailable", message=str(exc)))
            async with self._limiter:
                await self._wait_resume()  # a 429 may have come in while waiting for a slot
                result = await self._post(payload, access)
            if result.kind == "unauthenticated":
                self.tokens.invalidate(access)
                if auth_try == 1:
                    log.info("FCM refused the access token (%s); fetching a new one", result.message)
                    continue
                PUSH_ALARMS.labels("access_token_refused").inc()
                result = attrs.evolve(result, kind="token_unavailable")
            if result.kind == "quota":
                self.slow_down(result.retry_after if result.retry_after is not None else self.cfg.quota_retry_s)
            return self._count(result)
        raise AssertionError("unreachable")

    async def _post(self, payload: bytes, access: str) -> FcmResult:
        sender = self._h2
        if sender is not None:
            started = trio.current_time()
            PUSH_IN_FLIGHT.inc()
            try:
                answer = await sender.post(
                    self._send_path,
                    [(b"authorization", b"Bearer " + access.encode()), (b"content-type", _JSON_UTF8)],
                    payload,
                )
            except H2TransportError as exc:
                return FcmResult("network", message=f"{type(exc).__name__}: {exc}".rstrip(": "))
            except H2NotNegotiated as exc:
                log.info("FCM sends go through httpx: %s", exc)
                self._h2 = None
            else:
                raw_retry = answer.headers.get(b"retry-after")
                retry_after = retry_after_seconds(
                    raw_retry.decode("latin-1") if raw_retry is not None else None, self._clock.now()
                )
                return classify(answer.status, _json_bytes(answer.body), retry_after)
            finally:
                PUSH_IN_FLIGHT.dec()
                PUSH_LATENCY.observe(trio.current_time() - started)
        headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json; charset=UTF-8"}
        started = trio.current_time()
        PUSH_IN_FLIGHT.inc()
        try:
            response = await self._http.post(self.send_url, content=payload, headers=headers)
        except httpx.HTTPError as exc:
            return FcmResult("network", message=f"{type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            PUSH_IN_FLIGHT.dec()
            PUSH_LATENCY.observe(trio.current_time() - started)
        retry_after = retry_after_seconds(response.headers.get("Retry-After"), self._clock.now())
        return classify(response.status_code, _json(response), retry_after)

    def _count(self, result: FcmResult) -> FcmResult:
        PUSH_SENDS.labels(result.kind, result.code).inc()
        if result.alarm:
            PUSH_ALARMS.labels(result.code or result.kind).inc()
        return result

    # -- topics ------------------------------------------------------------------------------

    async def manage_topic(self, topic: str, tokens: Sequence[str], *, subscribe: bool) -> list[str | None]:
        """Subscribe (``batchAdd``) or unsubscribe (``batchRemove``) tokens; returns
        None per token that succeeded, else the error Instance ID gave for it.

        Raises:
            Unavailable: no access token, or Instance ID did not answer 200.
        """
        results: list[str | None] = []
        op = "batchAdd" if subscribe else "batchRemove"
        for start in range(0, len(tokens), IID_BATCH_MAX):
            chunk = list(tokens[start : start + IID_BATCH_MAX])
            results.extend(await self._iid_batch(op, topic, chunk))
        return results

    async def _iid_batch(self, op: str, topic: str, tokens: list[str]) -> list[str | None]:
        body = orjson.dumps({"to": f"/topics/{topic}", "registration_tokens": tokens})
        for auth_try in (1, 2):
            try:
                access = await self.tokens.get()
            except TokenUnavailable as exc:
                raise Unavailable(f"no FCM access token: {exc}") from exc
            headers = {
                "Authorization": f"Bearer {access}",
                "access_token_auth": "true",
                "Content-Type": "application/json",
            }
            try:
                response = await self._http.post(f"{self._iid_url}/iid/v1:{op}", content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise Unavailable(f"Instance ID unreachable: {type(exc).__name__}") from exc
            if response.status_code == 401 and auth_try == 1:
                self.tokens.invalidate(access)
                continue
            if response.status_code != 200:
                raise Unavailable(f"Instance ID {op} answered {response.status_code}")
            answer = _json(response).get("results")
            if not isinstance(answer, list) or len(answer) != len(tokens):
                raise Unavailable(f"Instance ID {op} answered without one result per token")
            return [
                str(item["error"]) if isinstance(item, Mapping) and item.get("error") else None for item in answer
            ]
        raise Unavailable("Instance ID refused the access token twice")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._http.aclose()
