"""End-user JWTs and server API keys.

``TokenVerifier`` checks the JWTs of docs/protocol.md section 2. It is built from the
``[auth]`` section once (``TokenVerifier.from_config``) and replaced as a whole
on SIGHUP, so a reload never leaves a half-updated verifier in use.

What it promises:

- only the algorithms of the configured allow-list are accepted; ``none`` (in
  any spelling) never is;
- a key is used only with the algorithm family it belongs to: the HMAC secret
  comes from the configuration alone, so a public key can never be turned
  into an HMAC secret (algorithm confusion);
- keys come only from the configuration (the HMAC secret, PEM files) and the
  configured JWKS URL. The token's own ``jwk``, ``jku``, ``x5u`` and ``x5c``
  headers are ignored, so no request is ever made on a token's say; ``kid`` is
  only a lookup key among the JWKS keys;
- ``TokenExpired`` means the token would have been accepted but for its
  expiry; every other refusal is ``Unauthorized`` with the reason;
- one rule decides expiry everywhere: a token is valid until ``token_deadline``
  (``exp`` plus ``auth.leeway_s``). The verifier refuses it from then on, on
  every door (socket header, ``?token=``, ``auth`` frame, HTTP bearer, SSE), and
  the gateway and the SSE stream close an open session at that same moment, so
  a token accepted within the leeway is never answered ok and closed at once;
- a token over ``auth.max_token_bytes`` is refused before it is parsed, the
  same on every door.

Resource handling: the JWKS is fetched with httpx when a token needs it (the
first time, after ``JWKS_MAX_AGE_S``, and on an unknown ``kid`` at most once per
``jwks_refresh_min_s``); with no injected client each fetch opens and closes its
own, so the verifier holds nothing that needs closing.

Error handling: a failed JWKS fetch is logged and the keys already known stay
in use; tokens no known key verifies are refused with ``Unauthorized``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeAlias

import attrs
import httpx
import jwt
import orjson
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms
from jwt.api_jws import PyJWS
from jwt.types import SigOptions

from realtimed.clock import SystemClock, WallClock
from realtimed.config import ApiConfig, AuthConfig, positional_key_name
from realtimed.errors import ConfigError, TokenExpired, Unauthorized, ValidationFailed
from realtimed.protocol import is_valid_room, validate_room_pattern, validate_user_id

__all__ = [
    "HMAC_ALGORITHMS",
    "JWKS_MAX_AGE_S",
    "SUPPORTED_ALGORITHMS",
    "ApiKeys",
    "Claims",
    "PublicKey",
    "TokenVerifier",
    "load_public_keys",
    "mint_dev_token",
    "token_deadline",
]

log = logging.getLogger(__name__)

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

HMAC_ALGORITHMS: Final[frozenset[str]] = frozenset({"HS256", "HS384", "HS512"})

# The curve an ECDSA algorithm requires: a key on another curve is never tried.
_EC_CURVES: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_RSA_ALGORITHMS: Final[frozenset[str]] = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = HMAC_ALGORITHMS | _RSA_ALGORITHMS | set(_EC_CURVES) | {"EdDSA"}

JWKS_MAX_AGE_S: Final = 3600.0
"""Known JWKS keys are fetched again after this long, so that a withdrawn key stops working."""
_MAX_JWKS_BYTES: Final = 1 << 20
_ALGORITHMS: Final[Mapping[str, Algorithm]] = {
    name: alg for name, alg in get_default_algorithms().items() if name in SUPPORTED_ALGORITHMS
}
# Parses and checks the compact form only (base64url, header object, kid and
# crit); signatures are checked here with keys chosen by this module.
_JWS: Final = PyJWS()
_PARSE_ONLY: Final[SigOptions] = {"verify_signature": False}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def token_deadline(exp: datetime, leeway_s: float) -> datetime:
    """When a token whose ``exp`` is this stops being valid: ``exp`` plus the leeway.

    The one rule for expiry: ``TokenVerifier`` refuses a token (``TokenExpired``)
    from this moment on, and the gateway and the SSE stream close a session whose
    token reaches it with 4004. A deadline past the calendar's end is the end.
    """
    try:
        return exp + timedelta(seconds=leeway_s)
    except OverflowError:
        return datetime.max.replace(tzinfo=exp.tzinfo)


def _fits(alg: str, key: PublicKey) -> bool:
    """Whether ``key`` belongs to the family (and curve) of ``alg``."""
    if alg in _RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    curve = _EC_CURVES.get(alg)
    if curve is not None:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, curve)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


@attrs.frozen
class Claims:
    """The claims of a verified token.

    Attributes:
        sub: the user id.
        exp: when the token expires (None when the operator allows tokens without ``exp``).
        rooms: the app-room patterns the user may subscribe to.
        name: the display name, if the token has one.
        raw: every claim, as decoded.
        claim_rooms: the rooms the token's claims give (``auth.claim_rooms``):
            the session is in them from connect to close.
    """

    sub: str
    exp: datetime | None
    rooms: tuple[str, ...]
    name: str | None
    raw: dict[str, Any] = attrs.field(hash=False)
    claim_rooms: tuple[str, ...] = ()


@attrs.frozen
class _Key:
    """A public key from a PEM file (no ``kid``) or from the JWKS."""

    key: PublicKey
    kid: str | None = None
    alg: str | None = None  # the JWK's "alg": then only that algorithm may use it


class TokenVerifier:
    """Verifies end-user JWTs against the configured algorithms and keys.

    Args:
        algorithms: the allow-list; names outside ``SUPPORTED_ALGORITHMS`` are refused.
        hs_secret: the shared secret for HS256 / HS384 / HS512 ("" refuses them).
        public_keys: keys for the asymmetric algorithms (from PEM files).
        jwks_url: where to fetch more keys ("" for none).
        jwks_timeout_s: longest a JWKS fetch may take.
        jwks_refresh_min_s: least time between JWKS fetches.
        leeway_s: clock leeway for ``exp``, ``nbf`` and ``iat`` (see ``token_deadline``).
        max_token_bytes: longest token looked at; longer ones are refused unparsed.
        audience: the required ``aud`` (None: not checked).
        issuer: the required ``iss`` (None: not checked).
        require_exp: refuse tokens without ``exp``.
        http_client: the client for JWKS fetches (tests pass one with an
            ``httpx.MockTransport``); its owner closes it.
        transport: a transport for the verifier's own short-lived clients, when
            no ``http_client`` is given.
        clock: wall time for ``exp``, ``nbf`` and ``iat`` (default: the system clock).
        monotonic: time for the JWKS rate limit (default: ``trio.current_time``).

    Raises:
        ConfigError: an algorithm that is not supported, or an HMAC secret that
            is a PEM or SSH key.
    """

    def __init__(
        self,
        *,
        algorithms: Iterable[str],
        hs_secret: str = "",
        public_keys: Sequence[PublicKey] = (),
        jwks_url: str = "",
        jwks_timeout_s: float = 5.0,
        jwks_refresh_min_s: float = 60.0,
        leeway_s: float = 30.0,
        max_token_bytes: int = 8192,
        audience: str | None = None,
        issuer: str | None = None,
        require_exp: bool = True,
        claim_rooms: Sequence[tuple[str, str]] = (),
        max_claim_rooms: int = 32,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: WallClock | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self.algorithms: frozenset[str] = frozenset(algorithms)
        unsupported = sorted(self.algorithms - SUPPORTED_ALGORITHMS)
        if unsupported:
            raise ConfigError(
                [("auth.algorithms", f"unsupported algorithm(s): {', '.join(map(repr, unsupported))}")]
            )
        self._hs_key: bytes | None = None
        hs_allowed = sorted(self.algorithms & HMAC_ALGORITHMS)
        if hs_secret and hs_allowed:
            try:
                self._hs_key = _ALGORITHMS["HS256"].prepare_key(hs_secret)
            except jwt.InvalidKeyError as exc:
                raise ConfigError([("auth.hs256_secret", str(exc))]) from exc
            for alg in hs_allowed:
                short = _ALGORITHMS[alg].check_key_length(self._hs_key)
                if short:
                    log.warning("auth.hs256_secret: %s", short)
        elif hs_allowed:
            log.warning(
                "%s allowed but auth.hs256_secret is empty: such tokens are refused", "/".join(hs_allowed)
            )
        self._static_keys = tuple(_Key(key) for key in public_keys)
        self._jwks_url = jwks_url
        self._jwks_timeout_s = jwks_timeout_s
        self._jwks_refresh_min_s = jwks_refresh_min_s
        self._jwks_keys: tuple[_Key, ...] = ()
        self._jwks_fetched_at: float | None = None  # last successful fetch
        self._jwks_tried_at: float | None = None  # last attempt, successful or not
        self._jwks_lock = trio.Lock()
        self._leeway_s = leeway_s
        self._max_token_bytes = max_token_bytes
        self._audience = audience
        self._issuer = issuer
        self._require_exp = require_exp
        self._claim_rooms = tuple(claim_rooms)
        self._max_claim_rooms = max_claim_rooms
        self._http_client = http_client
        self._transport = transport
        self._clock: WallClock = clock or SystemClock()
        self._monotonic = monotonic or trio.current_time

    @classmethod
    def from_config(
        cls,
        cfg: AuthConfig,
        *,
        base_dir: Path | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: WallClock | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> TokenVerifier:
        """Build a verifier from the ``[auth]`` section, reading the PEM files now.

        Relative key file paths resolve against ``base_dir`` (default: the
        working directory).

        Raises:
            ConfigError: a key file cannot be read or holds no usable public key,
                or see the class.
        """
        return cls(
            algorithms=cfg.algorithms,
            hs_secret=cfg.hs256_secret,
            public_keys=load_public_keys(cfg.public_key_files, base_dir=base_dir),
            jwks_url=cfg.jwks_url,
            jwks_timeout_s=cfg.jwks_timeout_s,
            jwks_refresh_min_s=cfg.jwks_refresh_min_s,
            leeway_s=cfg.leeway_s,
            max_token_bytes=cfg.max_token_bytes,
            audience=cfg.audience or None,
            issuer=cfg.issuer or None,
            require_exp=cfg.require_exp,
            claim_rooms=[(entry.claim, entry.prefix) for entry in cfg.claim_rooms],
            max_claim_rooms=cfg.max_claim_rooms,
            http_client=http_client,
            transport=transport,
            clock=clock,
            monotonic=monotonic,
        )

    def deadline(self, exp: datetime | None) -> datetime | None:
        """When a token with this ``exp`` stops being valid (None: never); see ``token_deadline``."""
        return None if exp is None else token_deadline(exp, self._leeway_s)

    async def verify(self, token: str) -> Claims:
        """Verify a token and return its claims.

        Raises:
            TokenExpired: the token is valid but for having expired.
            Unauthorized: anything else is wrong; the message says what.
        """
        if type(token) is not str or not token:
            raise Unauthorized("no token")
        limit = self._max_token_bytes
        # A str is at least as many UTF-8 bytes as characters: encode only when it might matter.
        if len(token) > limit or (not token.isascii() and len(token.encode("utf-8", "surrogatepass")) > limit):
            raise Unauthorized(f"the token is over {limit} bytes (auth.max_token_bytes)")
        try:
            parts = _JWS.decode_complete(token, options=_PARSE_ONLY)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {exc}") from exc
        header: dict[str, Any] = parts["header"]
        alg = header.get("alg")
        if type(alg) is not str or not alg:
            raise Unauthorized("the token header names no algorithm")
        if alg.lower() == "none":
            raise Unauthorized("unsigned tokens (alg none) are refused")
        if alg not in self.algorithms:
            raise Unauthorized(f"algorithm {alg[:20]!r} is not allowed")
        signature: bytes = parts["signature"]
        if not signature:
            raise Unauthorized("the token has an empty signature")
        kid = header.get("kid")  # PyJWS has checked that it is a string when present
        keys = await self._keys_for(alg, kid)
        if not keys:
            which = f" with kid {kid[:64]!r}" if kid is not None else ""
            raise Unauthorized(f"no key to verify a {alg} token{which}")
        signing_input = token.rpartition(".")[0].encode("ascii")
        if not any(_verify_signature(alg, signing_input, key, signature) for key in keys):
            raise Unauthorized("the token signature is not valid")
        try:
            payload = orjson.loads(parts["payload"])
        except orjson.JSONDecodeError as exc:
            raise Unauthorized("the token payload is not JSON") from exc
        if type(payload) is not dict:
            raise Unauthorized("the token payload is not a JSON object")
        return self._check_claims(payload)

    # -- claims ----------------------------------------------------------------------------------

    def _check_claims(self, payload: dict[str, Any]) -> Claims:
        wall_now = self._clock.now()
        now = wall_now.timestamp()
        leeway = self._leeway_s
        sub = payload.get("sub")
        if sub is None:
            raise Unauthorized("the token has no sub claim")
        try:
            validate_user_id(sub, "sub")
        except ValidationFailed as exc:
            raise Unauthorized(f"token claim {exc.message}") from None
        if self._issuer is not None and payload.get("iss") != self._issuer:
            raise Unauthorized("the token issuer (iss) is not accepted")
        if self._audience is not None:
            aud = payload.get("aud")
            if not (aud == self._audience or (type(aud) is list and self._audience in aud)):
                raise Unauthorized("the token audience (aud) is not accepted")
        nbf = _numeric_date(payload, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise Unauthorized("the token is not valid yet (nbf)")
        iat = _numeric_date(payload, "iat")
        if iat is not None and iat > now + leeway:
            raise Unauthorized("the token was issued in the future (iat)")
        rooms = _rooms_claim(payload.get("rooms"))
        name = payload.get("name")
        if name is not None and type(name) is not str:
            raise Unauthorized("token claim name: must be a string")
        exp = _numeric_date(payload, "exp")
        expires_at: datetime | None = None
        if exp is None:
            if self._require_exp:
                raise Unauthorized("the token has no exp claim")
        else:
            try:
                expires_at = datetime.fromtimestamp(exp, UTC)
            except (OverflowError, OSError, ValueError):
                raise Unauthorized("token claim exp: out of range") from None
            # Last, so that TokenExpired means "valid, but expired".
            if wall_now >= token_deadline(expires_at, leeway):
                raise TokenExpired("the token has expired")
        claim_rooms = self._rooms_from_claims(payload) if self._claim_rooms else ()
        return Claims(sub=sub, exp=expires_at, rooms=rooms, name=name, raw=payload, claim_rooms=claim_rooms)

    def _rooms_from_claims(self, payload: dict[str, Any]) -> tuple[str, ...]:
        """The rooms of ``auth.claim_rooms``: ``<prefix><value>`` for each value of each claim.

        Raises:
            Unauthorized: a claim is not a string or a list of strings, a value
                does not make a valid room name, or they give more than
                ``auth.max_claim_rooms`` rooms.
        """
        out: dict[str, None] = {}
        for claim, prefix in self._claim_rooms:
            value = payload.get(claim)
            if value is None:
                continue
            values = [value] if type(value) is str else value
            if type(values) is not list or any(type(v) is not str for v in values):
                raise Unauthorized(f"token claim {claim}: must be a string or a list of strings")
            for item in values:
                room = prefix + item
                if not is_valid_room(room):
                    raise Unauthorized(f"token claim {claim}: {item[:64]!r} does not make a valid room name")
                out[room] = None
                if len(out) > self._max_claim_rooms:
                    raise Unauthorized(f"the token's claims give more than {self._max_claim_rooms} rooms (auth.max_claim_rooms)")
        return tuple(out)

    # -- keys ------------------------------------------------------------------------------------

    async def _keys_for(self, alg: str, kid: str | None) -> list[PublicKey | bytes]:
        if alg in HMAC_ALGORITHMS:
            # The one configured secret, whatever the kid says.
            return [self._hs_key] if self._hs_key is not None else []
        out: list[PublicKey | bytes] = [k.key for k in self._static_keys if _fits(alg, k.key)]
        if self._jwks_url:
            if self._jwks_wanted(kid):
                await self._refresh_jwks(kid)
            out.extend(
                k.key
                for k in self._jwks_keys
                if (kid is None or k.kid == kid) and (k.alg is None or k.alg == alg) and _fits(alg, k.key)
            )
        return out

    def _jwks_wanted(self, kid: str | None) -> bool:
        """Whether a fetch is due: none yet, the keys are old, or ``kid`` is unknown;
        never twice within ``jwks_refresh_min_s``."""
        now = self._monotonic()
        if self._jwks_tried_at is not None and now - self._jwks_tried_at < self._jwks_refresh_min_s:
            return False
        if self._jwks_fetched_at is None or now - self._jwks_fetched_at >= JWKS_MAX_AGE_S:
            return True
        return kid is not None and all(k.kid != kid for k in self._jwks_keys)

    async def _refresh_jwks(self, kid: str | None) -> None:
        async with self._jwks_lock:
            # Another task may have fetched while this one waited.
            if not self._jwks_wanted(kid):
                return
            self._jwks_tried_at = self._monotonic()
            try:
                body = await self._fetch_jwks()
                keys = _parse_jwks(body)
            except _JwksError as exc:
                log.warning(
                    "JWKS %s: %s; %d known keys stay in use", self._jwks_url, exc, len(self._jwks_keys)
                )
                return
            self._jwks_keys = keys
            self._jwks_fetched_at = self._monotonic()
            log.info("JWKS %s: %d signing keys", self._jwks_url, len(keys))

    async def _fetch_jwks(self) -> bytes:
        try:
            with trio.fail_after(self._jwks_timeout_s):
                if self._http_client is not None:
                    return await _get_capped(self._http_client, self._jwks_url, self._jwks_timeout_s)
                async with httpx.AsyncClient(transport=self._transport, follow_redirects=True) as client:
                    return await _get_capped(client, self._jwks_url, self._jwks_timeout_s)
        except trio.TooSlowError:
            raise _JwksError(f"no answer within {self._jwks_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise _JwksError(f"fetch failed: {exc!r}") from exc


class _JwksError(Exception):
    pass


async def _get_capped(client: httpx.AsyncClient, url: str, timeout_s: float) -> bytes:
    async with client.stream(
        "GET", url, headers={"Accept": "application/json"}, timeout=timeout_s
    ) as response:
        if response.status_code != 200:
            raise _JwksError(f"HTTP {response.status_code}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > _MAX_JWKS_BYTES:
                raise _JwksError(f"larger than {_MAX_JWKS_BYTES} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _parse_jwks(body: bytes) -> tuple[_Key, ...]:
    """The signing keys of a JWKS document; keys that cannot be used are skipped.

    Symmetric (``oct``) keys are always skipped: an HMAC secret comes only from
    the configuration.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _JwksError("not JSON") from exc
    if type(doc) is not dict or type(doc.get("keys")) is not list:
        raise _JwksError('not a JWKS document (no "keys" list)')
    keys: list[_Key] = []
    for i, jwk in enumerate(doc["keys"]):
        if type(jwk) is not dict or jwk.get("use", "sig") != "sig":
            continue
        kty = jwk.get("kty")
        try:
            if kty == "RSA":
                key: Any = RSAAlgorithm.from_jwk(jwk)
            elif kty == "EC":
                key = ECAlgorithm.from_jwk(jwk)
            elif kty == "OKP":
                key = OKPAlgorithm.from_jwk(jwk)
            else:
                continue
        except (jwt.InvalidKeyError, ValueError, TypeError, KeyError, UnsupportedAlgorithm) as exc:
            log.warning("JWKS key %d (kid %r) skipped: %s", i, jwk.get("kid"), exc)
            continue
        public = _public(key)
        if public is None:
            continue
        kid = jwk.get("kid")
        alg = jwk.get("alg")
        keys.append(_Key(public, kid if type(kid) is str else None, alg if type(alg) is str else None))
    return tuple(keys)


def _public(key: object) -> PublicKey | None:
    """The public half of a key, or None for a key of another kind."""
    if isinstance(
        key,
        rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey,
    ):
        key = key.public_key()
    if isinstance(
        key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
    ):
        return key
    return None


def _verify_signature(alg: str, signing_input: bytes, key: PublicKey | bytes, signature: bytes) -> bool:
    try:
        return bool(_ALGORITHMS[alg].verify(signing_input, key, signature))
    except (InvalidSignature, ValueError, TypeError):
        # A signature of the wrong length or shape for this key.
        return False


def _numeric_date(payload: Mapping[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise Unauthorized(f"token claim {claim}: must be a number of seconds since the epoch")
    return float(value)


def _rooms_claim(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if type(value) is not list:
        raise Unauthorized("token claim rooms: must be a list of room patterns")
    try:
        return tuple(validate_room_pattern(item, f"rooms[{i}]") for i, item in enumerate(value))
    except ValidationFailed as exc:
        raise Unauthorized(f"token claim {exc.message}") from None


def load_public_keys(paths: Iterable[str], *, base_dir: Path | None = None) -> list[PublicKey]:
    """Read PEM public keys (``PUBLIC KEY``, ``RSA PUBLIC KEY`` or ``CERTIFICATE``
    blocks; a file may hold several).

    Raises:
        ConfigError: one problem per file that cannot be read, holds a private
            key, or holds no usable public key.
    """
    keys: list[PublicKey] = []
    problems: list[tuple[str, str]] = []
    for i, name in enumerate(paths):
        where = f"auth.public_key_files[{i}]"
        path = Path(name).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            text = path.read_bytes()
        except OSError as exc:
            problems.append((where, f"cannot read {path}: {exc.strerror or exc}"))
            continue
        found = 0
        for match in _PEM_BLOCK.finditer(text):
            label = match.group(1).decode()
            try:
                if label == "CERTIFICATE":
                    loaded: object = x509.load_pem_x509_certificate(match.group(0)).public_key()
                elif label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                    loaded = serialization.load_pem_public_key(match.group(0))
                elif "PRIVATE KEY" in label:
                    problems.append((where, f"{path} holds a private key: give the public key only"))
                    break
                else:
                    continue
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                problems.append((where, f"{path}: unreadable {label}: {exc}"))
                break
            public = _public(loaded)
            if public is None:
                problems.append((where, f"{path}: not an RSA, EC or Ed25519/Ed448 key"))
                break
            keys.append(public)
            found += 1
        else:
            if not found:
                problems.append((where, f"{path} holds no PEM public key"))
    if problems:
        raise ConfigError(problems)
    return keys


def mint_dev_token(
    secret: str,
    *,
    sub: str,
    ttl_s: float,
    rooms: Sequence[str] = (),
    name: str | None = None,
    now: datetime,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token for development (``realtimed token``).

    Raises:
        ValueError: an empty secret, a bad ``sub`` or room pattern, or a
            lifetime that is not positive.
    """
    if not secret:
        raise ValueError("an HS256 secret is required")
    if not ttl_s > 0:
        raise ValueError("ttl_s must be positive")
    try:
        validate_user_id(sub, "sub")
        patterns = [validate_room_pattern(room, f"rooms[{i}]") for i, room in enumerate(rooms)]
    except ValidationFailed as exc:
        raise ValueError(exc.message) from None
    issued = int(now.timestamp())
    payload: dict[str, Any] = {
        "sub": sub,
        "iat": issued,
        "exp": int((now + timedelta(seconds=ttl_s)).timestamp()),
    }
    if patterns:
        payload["rooms"] = patterns
    if name is not None:
        payload["name"] = name
    if audience is not None:
        payload["aud"] = audience
    if issuer is not None:
        payload["iss"] = issuer
    return jwt.encode(payload, secret, algorithm="HS256")


class ApiKeys:
    """The server API keys, each with its name, checked in constant time.

    Every configured key is compared, without stopping at a match, and the
    comparison is between SHA-256 digests so that its time says nothing about
    the keys' lengths either. A key given without a name (a bare string) is
    named by its position, ``keys[0]``, ``keys[1]``, ...
    """

    def __init__(self, keys: Iterable[str | tuple[str, str]]) -> None:
        entries: list[tuple[str, bytes]] = []
        for i, item in enumerate(keys):
            name, key = item if isinstance(item, tuple) else (positional_key_name(i), item)
            if key:
                entries.append((name, _digest(key)))
        self._entries: tuple[tuple[str, bytes], ...] = tuple(entries)

    @classmethod
    def from_config(cls, cfg: ApiConfig) -> ApiKeys:
        return cls((entry.name, entry.key) for entry in cfg.keys)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._entries)

    def identify(self, presented: str) -> str | None:
        """The name of the key ``presented`` is, or None when it is none of them."""
        candidate = _digest(presented)
        found: str | None = None
        for name, digest in self._entries:
            if hmac.compare_digest(digest, candidate) and found is None:
                found = name
        return found if presented else None

    def check(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys."""
        return self.identify(presented) is not None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
