"""JWT verification and API keys.

Every hostile token of the battery is refused with ``Unauthorized`` (``TokenExpired``
only where the token has merely expired), no key is ever fetched on a token's say,
and a valid control token of each algorithm family is accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import attrs
import httpx
import jwt
import orjson
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from realtimed.auth import (
    JWKS_MAX_AGE_S,
    ApiKeys,
    Claims,
    TokenVerifier,
    load_public_keys,
    mint_dev_token,
    token_deadline,
)
from realtimed.config import ApiConfig, AuthConfig
from realtimed.errors import ConfigError, TokenExpired, Unauthorized

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
AUDIENCE = "realtimed-tests"
ISSUER = "https://id.test/"
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
T = int(NOW.timestamp())
JWKS_URL = "https://id.test/.well-known/jwks.json"
ELSEWHERE = "https://attacker.test/keys"

# -- keys and tokens ------------------------------------------------------------------------------


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def attacker_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def jwks_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}.{b64(signature)}"


def hs_with(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps(payload))}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def claims(**changes: Any) -> dict[str, Any]:
    """Standard claims at NOW; a change to None removes the claim."""
    out: dict[str, Any] = {"sub": "alice", "iat": T, "exp": T + 3600, "aud": AUDIENCE, "iss": ISSUER}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def hs256(**changes: Any) -> str:
    return jwt.encode(claims(**changes), SECRET, algorithm="HS256")


def jwk_of(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        out: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(public))
    elif isinstance(public, ec.EllipticCurvePublicKey):
        out = json.loads(ECAlgorithm.to_jwk(public))
    else:
        out = json.loads(OKPAlgorithm.to_jwk(public))
    out.update(kid=kid, **extra)
    return out


def self_signed_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


# -- a JWKS endpoint and a verifier ---------------------------------------------------------------


class FixedClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


class Monotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@attrs.define
class KeyServer:
    """Serves JWKS_URL through an httpx.MockTransport and records every request."""

    keys: list[dict[str, Any]] = attrs.field(factory=list)
    status: int = 200
    requests: list[str] = attrs.field(factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if str(request.url) != JWKS_URL:
            return httpx.Response(404)
        if self.status != 200:
            return httpx.Response(self.status)
        return httpx.Response(200, json={"keys": self.keys})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def fetches(self) -> int:
        return sum(url == JWKS_URL for url in self.requests)


@pytest.fixture
def key_files(tmp_path: Path) -> list[str]:
    paths = []
    for name, key in (("rsa.pem", rsa_key()), ("ec.pem", ec_key())):
        path = tmp_path / name
        path.write_bytes(pem(key))
        paths.append(str(path))
    return paths


@pytest.fixture
def server() -> KeyServer:
    return KeyServer(
        keys=[jwk_of(jwks_ec_key(), "ec-1", alg="ES256", use="sig"), jwk_of(ed_key(), "ed-1")],
    )


VerifierFactory = Callable[..., TokenVerifier]


@pytest.fixture
def make_verifier(key_files: list[str], server: KeyServer) -> VerifierFactory:
    def make(*, monotonic: Callable[[], float] | None = None, **changes: Any) -> TokenVerifier:
        fields: dict[str, Any] = {
            "algorithms": ["HS256", "RS256", "ES256", "EdDSA"],
            "hs256_secret": SECRET,
            "public_key_files": key_files,
            "audience": AUDIENCE,
            "issuer": ISSUER,
        }
        fields.update(changes)
        return TokenVerifier.from_config(
            AuthConfig(**fields), transport=server.transport, clock=FixedClock(), monotonic=monotonic
        )

    return make


@pytest.fixture
def verifier(make_verifier: VerifierFactory) -> TokenVerifier:
    return make_verifier(jwks_url=JWKS_URL)


async def refused(verifier: TokenVerifier, token: str) -> Unauthorized:
    with trio.fail_after(10), pytest.raises(Unauthorized) as info:
        await verifier.verify(token)
    return info.value


async def refused_not_expired(verifier: TokenVerifier, token: str) -> Unauthorized:
    error = await refused(verifier, token)
    assert not isinstance(error, TokenExpired), error.message
    return error


# -- the battery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_any_spelling_is_refused(verifier: TokenVerifier, alg: str) -> None:
    error = await refused_not_expired(verifier, raw_token({"alg": alg, "typ": "JWT"}, claims()))
    assert "none" in error.message
    # Even with something that looks like a signature.
    await refused_not_expired(verifier, raw_token({"alg": alg}, claims(), b"x" * 32))


async def test_rsa_public_key_used_as_hmac_secret_is_refused(
    verifier: TokenVerifier, make_verifier: VerifierFactory
) -> None:
    forged = hs_with(pem(rsa_key()), {"alg": "HS256", "typ": "JWT"}, claims())
    error = await refused_not_expired(verifier, forged)
    assert "signature" in error.message
    # Without an HMAC secret configured nothing else ever stands in for one.
    no_secret = make_verifier(hs256_secret="")
    error = await refused_not_expired(no_secret, forged)
    assert "no key" in error.message
    # And a public key may not be configured as the secret.
    with pytest.raises(ConfigError):
        make_verifier(hs256_secret=pem(rsa_key()).decode())


async def test_key_of_another_family_is_never_tried(make_verifier: VerifierFactory, tmp_path: Path) -> None:
    only_ec = tmp_path / "only-ec.pem"
    only_ec.write_bytes(pem(ec_key()))
    verifier = make_verifier(public_key_files=[str(only_ec)])
    error = await refused_not_expired(verifier, jwt.encode(claims(), rsa_key(), algorithm="RS256"))
    assert "no key" in error.message


async def test_header_key_sources_are_ignored_and_never_fetched(
    verifier: TokenVerifier, server: KeyServer
) -> None:
    attacker = attacker_rsa_key()
    cert = self_signed_cert(attacker).public_bytes(serialization.Encoding.DER)
    tokens = {
        "jwk": jwt.encode(claims(), attacker, algorithm="RS256", headers={"jwk": jwk_of(attacker, "a")}),
        "jku": jwt.encode(claims(), attacker, algorithm="RS256", headers={"jku": ELSEWHERE, "kid": "k1"}),
        "x5u": jwt.encode(claims(), attacker, algorithm="RS256", headers={"x5u": ELSEWHERE}),
        "x5c": jwt.encode(
            claims(), attacker, algorithm="RS256", headers={"x5c": [base64.b64encode(cert).decode()]}
        ),
    }
    for name, token in tokens.items():
        error = await refused_not_expired(verifier, token)
        assert "signature" in error.message or "no key" in error.message, (name, error.message)
    assert server.requests, "the unknown kid should have refreshed the configured JWKS"
    assert set(server.requests) == {JWKS_URL}, server.requests


async def test_header_key_sources_without_jwks_make_no_request(
    make_verifier: VerifierFactory, server: KeyServer
) -> None:
    verifier = make_verifier()  # no jwks_url
    attacker = attacker_rsa_key()
    for header in ({"jku": ELSEWHERE, "kid": "k1"}, {"x5u": ELSEWHERE}, {"jwk": jwk_of(attacker, "a")}):
        await refused_not_expired(verifier, jwt.encode(claims(), attacker, algorithm="RS256", headers=header))
    assert server.requests == []


@pytest.mark.parametrize(
    "kid", ["../../../../../../dev/null", "../../etc/passwd", "/dev/null", "ec-1/../ec-1"]
)
async def test_kid_is_only_a_lookup_key(verifier: TokenVerifier, server: KeyServer, kid: str) -> None:
    # The empty key is what /dev/null would give a verifier that read kid as a path.
    error = await refused_not_expired(verifier, hs_with(b"", {"alg": "HS256", "kid": kid}, claims()))
    assert "signature" in error.message
    token = jwt.encode(claims(), attacker_rsa_key(), algorithm="RS256", headers={"kid": kid})
    await refused_not_expired(verifier, token)
    # No JWKS key has that kid; only the PEM key (which has none) is tried, and fails.
    token = jwt.encode(claims(), jwks_ec_key(), algorithm="ES256", headers={"kid": kid})
    error = await refused_not_expired(verifier, token)
    assert "signature" in error.message
    assert set(server.requests) <= {JWKS_URL}


async def test_empty_signature_is_refused(verifier: TokenVerifier) -> None:
    for token in (hs256(), jwt.encode(claims(), rsa_key(), algorithm="RS256")):
        error = await refused_not_expired(verifier, token.rsplit(".", 1)[0] + ".")
        assert "empty signature" in error.message


async def test_es256_with_r_and_s_zero_is_refused(verifier: TokenVerifier) -> None:
    token = raw_token({"alg": "ES256", "typ": "JWT"}, claims(), b"\x00" * 64)
    error = await refused_not_expired(verifier, token)
    assert "signature" in error.message
    # The refusal comes from pyjwt and cryptography themselves, not from a special case here.
    signing_input = token.rsplit(".", 1)[0].encode()
    es256 = ECAlgorithm(ECAlgorithm.SHA256)
    assert es256.verify(signing_input, ec_key().public_key(), b"\x00" * 64) is False
    signature = es256.sign(signing_input, ec_key())
    assert es256.verify(signing_input, ec_key().public_key(), signature) is True


async def test_signed_by_another_key_is_refused(verifier: TokenVerifier) -> None:
    await refused_not_expired(verifier, jwt.encode(claims(), attacker_rsa_key(), algorithm="RS256"))
    await refused_not_expired(
        verifier, jwt.encode(claims(), "another-secret-of-enough-length-xx", algorithm="HS256")
    )


async def test_expired_token_is_token_expired(verifier: TokenVerifier) -> None:
    with trio.fail_after(10), pytest.raises(TokenExpired):
        await verifier.verify(hs256(iat=T - 7200, exp=T - 3600))
    # Within the leeway (30 s) it still passes; just past it, it has expired.
    assert (await verifier.verify(hs256(exp=T - 29))).sub == "alice"
    with pytest.raises(TokenExpired):
        await verifier.verify(hs256(exp=T - 31))


def test_one_deadline_rule_for_expiry(make_verifier: VerifierFactory) -> None:
    verifier = make_verifier(leeway_s=30.0)
    exp = datetime.fromtimestamp(T - 29, UTC)
    assert verifier.deadline(exp) == token_deadline(exp, 30.0) == exp + timedelta(seconds=30)
    assert verifier.deadline(None) is None
    # A deadline past the calendar's end is the end, not an OverflowError.
    last = datetime.max.replace(tzinfo=UTC) - timedelta(seconds=1)
    assert token_deadline(last, 30.0) == datetime.max.replace(tzinfo=UTC)


async def test_exp_at_the_end_of_the_calendar_is_accepted(verifier: TokenVerifier) -> None:
    far = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
    with trio.fail_after(10):
        claims_ = await verifier.verify(hs256(exp=far))
    assert claims_.exp is not None and verifier.deadline(claims_.exp) == datetime.max.replace(tzinfo=UTC)


async def test_token_over_max_token_bytes_is_refused_unparsed(make_verifier: VerifierFactory) -> None:
    verifier = make_verifier(max_token_bytes=2048)
    fits = hs256(name="x" * 1000)
    assert len(fits) <= 2048
    assert (await verifier.verify(fits)).sub == "alice"
    error = await refused_not_expired(verifier, hs256(name="x" * 2000))
    assert "auth.max_token_bytes" in error.message
    # Counted in UTF-8 bytes, not characters: 700 two-byte characters are 1400 bytes.
    error = await refused_not_expired(verifier, "é" * 700 + "." + "a" * 700 + ".sig")
    assert "auth.max_token_bytes" in error.message
    # Refused before it is parsed: no "malformed token" for a too-long one.
    error = await refused_not_expired(verifier, "a" * 5000)
    assert "malformed" not in error.message


async def test_expired_and_otherwise_bad_is_unauthorized_not_expired(verifier: TokenVerifier) -> None:
    expired = {"iat": T - 7200, "exp": T - 3600}
    await refused_not_expired(
        verifier, jwt.encode(claims(**expired), "wrong-secret-wrong-secret-wrong-secret", algorithm="HS256")
    )
    await refused_not_expired(verifier, hs256(aud="someone-else", **expired))
    await refused_not_expired(verifier, hs256(iss="https://evil.test/", **expired))
    await refused_not_expired(verifier, hs256(sub=None, **expired))
    await refused_not_expired(verifier, hs256(rooms="job:1", **expired))
    await refused_not_expired(verifier, hs256(nbf=T + 3600, **expired))


async def test_not_yet_valid_is_refused(verifier: TokenVerifier) -> None:
    error = await refused_not_expired(verifier, hs256(nbf=T + 3600))
    assert "nbf" in error.message
    error = await refused_not_expired(verifier, hs256(iat=T + 3600))
    assert "iat" in error.message
    # The leeway applies.
    assert (await verifier.verify(hs256(nbf=T + 20, iat=T + 20))).sub == "alice"


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"aud": "someone-else"}, "aud"),
        ({"aud": ["someone-else", "another"]}, "aud"),
        ({"aud": None}, "aud"),
        ({"iss": "https://evil.test/"}, "iss"),
        ({"iss": None}, "iss"),
    ],
)
async def test_wrong_audience_or_issuer_is_refused(
    verifier: TokenVerifier, changes: dict[str, Any], word: str
) -> None:
    error = await refused_not_expired(verifier, hs256(**changes))
    assert word in error.message


async def test_audience_list_containing_ours_and_unchecked_when_unconfigured(
    verifier: TokenVerifier, make_verifier: VerifierFactory
) -> None:
    assert (await verifier.verify(hs256(aud=["other", AUDIENCE]))).sub == "alice"
    relaxed = make_verifier(audience="", issuer="")
    assert (await relaxed.verify(hs256(aud="anything", iss="anyone"))).sub == "alice"


@pytest.mark.parametrize("sub", [None, "", "u" * 129, 42, ["alice"], "ali\nce"])
async def test_bad_sub_is_refused(verifier: TokenVerifier, sub: Any) -> None:
    error = await refused_not_expired(verifier, hs256(sub=sub))
    assert "sub" in error.message


async def test_longest_sub_is_accepted(verifier: TokenVerifier) -> None:
    assert (await verifier.verify(hs256(sub="u" * 128))).sub == "u" * 128


async def test_exp_is_required_unless_allowed(
    verifier: TokenVerifier, make_verifier: VerifierFactory
) -> None:
    error = await refused_not_expired(verifier, hs256(exp=None))
    assert "exp" in error.message
    relaxed = make_verifier(require_exp=False)
    result = await relaxed.verify(hs256(exp=None))
    assert result.sub == "alice" and result.exp is None
    for bad in ("tomorrow", True, 1e300):
        await refused_not_expired(relaxed, hs256(exp=bad))


@pytest.mark.parametrize("rooms", ["job:1", [5], ["team:*:x"], ["bad room"], [""], {"job:1": True}])
async def test_bad_rooms_claim_is_refused(verifier: TokenVerifier, rooms: Any) -> None:
    error = await refused_not_expired(verifier, hs256(rooms=rooms))
    assert "rooms" in error.message


async def test_bad_name_claim_is_refused(verifier: TokenVerifier) -> None:
    await refused_not_expired(verifier, hs256(name=5))


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "not.a.token", "a.b", "a.b.c.d", "é.é.é", "eyJhbGciOiJIUzI1NiJ9.e30"],
)
async def test_garbage_is_refused(verifier: TokenVerifier, token: str) -> None:
    await refused_not_expired(verifier, token)


async def test_algorithm_outside_the_allow_list_is_refused(
    verifier: TokenVerifier, make_verifier: VerifierFactory
) -> None:
    error = await refused_not_expired(verifier, jwt.encode(claims(), SECRET + SECRET, algorithm="HS512"))
    assert "not allowed" in error.message
    hs_only = make_verifier(algorithms=["HS256"])
    error = await refused_not_expired(hs_only, jwt.encode(claims(), rsa_key(), algorithm="RS256"))
    assert "not allowed" in error.message


async def test_payload_that_is_not_an_object_is_refused(verifier: TokenVerifier) -> None:
    signing_input = f"{b64(orjson.dumps({'alg': 'HS256'}))}.{b64(b'[1, 2]')}"
    token = (
        f"{signing_input}.{b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())}"
    )
    await refused_not_expired(verifier, token)


async def test_unsupported_critical_header_is_refused(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"crit": ["exp-ext"], "exp-ext": 1})
    await refused_not_expired(verifier, token)


# -- valid control tokens -------------------------------------------------------------------------


async def test_hs256_control_token(verifier: TokenVerifier) -> None:
    with trio.fail_after(10):
        token = hs256(rooms=["job:42", "team:7:*"], name="Alice")
        result = await verifier.verify(token)
    assert result == Claims(
        sub="alice",
        exp=NOW + timedelta(hours=1),
        rooms=("job:42", "team:7:*"),
        name="Alice",
        raw=claims(rooms=["job:42", "team:7:*"], name="Alice"),
    )
    assert result.exp is not None and result.exp.tzinfo is not None


async def test_rs256_control_token_from_a_pem_file(make_verifier: VerifierFactory, server: KeyServer) -> None:
    verifier = make_verifier()
    with trio.fail_after(10):
        result = await verifier.verify(jwt.encode(claims(), rsa_key(), algorithm="RS256"))
        assert result.sub == "alice"
        # PEM keys carry no kid, so any kid still finds them.
        result = await verifier.verify(
            jwt.encode(claims(), rsa_key(), algorithm="RS256", headers={"kid": "x"})
        )
        assert result.sub == "alice"
        assert (await verifier.verify(jwt.encode(claims(), ec_key(), algorithm="ES256"))).sub == "alice"
    assert server.requests == []


async def test_es256_and_eddsa_control_tokens_from_a_jwks(verifier: TokenVerifier, server: KeyServer) -> None:
    with trio.fail_after(10):
        es = jwt.encode(claims(sub="bob"), jwks_ec_key(), algorithm="ES256", headers={"kid": "ec-1"})
        assert (await verifier.verify(es)).sub == "bob"
        ed = jwt.encode(claims(sub="carol"), ed_key(), algorithm="EdDSA", headers={"kid": "ed-1"})
        assert (await verifier.verify(ed)).sub == "carol"
        # Without a kid every JWKS key of the right family is tried.
        assert (await verifier.verify(jwt.encode(claims(), ed_key(), algorithm="EdDSA"))).sub == "alice"
    assert server.fetches() == 1, "the JWKS is cached"


async def test_jwks_through_an_injected_client(key_files: list[str], server: KeyServer) -> None:
    cfg = AuthConfig(algorithms=["ES256"], jwks_url=JWKS_URL, audience=AUDIENCE, issuer=ISSUER)
    async with httpx.AsyncClient(transport=server.transport) as client:
        verifier = TokenVerifier.from_config(cfg, http_client=client, clock=FixedClock())
        with trio.fail_after(10):
            token = jwt.encode(claims(), jwks_ec_key(), algorithm="ES256", headers={"kid": "ec-1"})
            assert (await verifier.verify(token)).sub == "alice"
    assert server.fetches() == 1


async def test_jwks_key_alg_binds_the_key(verifier: TokenVerifier, server: KeyServer) -> None:
    server.keys = [jwk_of(rsa_key(), "r-1", alg="RS512")]
    token = jwt.encode(claims(), rsa_key(), algorithm="RS256", headers={"kid": "r-1"})
    # The PEM file holds the same key, so take it out of the picture.
    jwks_only = TokenVerifier.from_config(
        AuthConfig(algorithms=["RS256"], jwks_url=JWKS_URL, audience=AUDIENCE, issuer=ISSUER),
        transport=server.transport,
        clock=FixedClock(),
    )
    error = await refused_not_expired(jwks_only, token)
    assert "no key" in error.message


async def test_symmetric_jwks_keys_are_never_hmac_secrets(server: KeyServer) -> None:
    secret = b"published-secret-published-secret!!"
    server.keys = [{"kty": "oct", "k": b64(secret), "kid": "h-1"}]
    verifier = TokenVerifier.from_config(
        AuthConfig(algorithms=["HS256"], jwks_url=JWKS_URL, audience=AUDIENCE, issuer=ISSUER),
        transport=server.transport,
        clock=FixedClock(),
    )
    error = await refused_not_expired(verifier, hs_with(secret, {"alg": "HS256", "kid": "h-1"}, claims()))
    assert "no key" in error.message


# -- JWKS refresh ---------------------------------------------------------------------------------


async def test_jwks_refresh_on_unknown_kid_is_rate_limited(
    make_verifier: VerifierFactory, server: KeyServer
) -> None:
    clock = Monotonic()
    verifier = make_verifier(jwks_url=JWKS_URL, jwks_refresh_min_s=60.0, monotonic=clock)
    rotated = ec.generate_private_key(ec.SECP256R1())
    with trio.fail_after(10):
        assert await verifier.verify(
            jwt.encode(claims(), jwks_ec_key(), algorithm="ES256", headers={"kid": "ec-1"})
        )
        assert server.fetches() == 1
        # The issuer rotates to a new key right after that fetch.
        server.keys.append(jwk_of(rotated, "ec-2"))
        new = jwt.encode(claims(), rotated, algorithm="ES256", headers={"kid": "ec-2"})
        clock.t += 10
        await refused_not_expired(verifier, new)
        assert server.fetches() == 1, "refreshed again within jwks_refresh_min_s"
        clock.t += 51  # 61 s after the first fetch
        assert (await verifier.verify(new)).sub == "alice"
        assert server.fetches() == 2
        # A flood of unknown kids costs one fetch per period, not one per token.
        for i in range(20):
            await refused_not_expired(
                verifier, jwt.encode(claims(), rotated, algorithm="ES256", headers={"kid": f"x{i}"})
            )
        assert server.fetches() == 2
        clock.t += 61
        for i in range(20):
            await refused_not_expired(
                verifier, jwt.encode(claims(), rotated, algorithm="ES256", headers={"kid": f"y{i}"})
            )
        assert server.fetches() == 3
        # Known kids never refresh.
        assert (await verifier.verify(new)).sub == "alice"
        assert server.fetches() == 3


async def test_concurrent_unknown_kids_share_one_fetch(verifier: TokenVerifier, server: KeyServer) -> None:
    token = jwt.encode(claims(), jwks_ec_key(), algorithm="ES256", headers={"kid": "ec-1"})
    results: list[Claims] = []

    async def one() -> None:
        results.append(await verifier.verify(token))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
    assert len(results) == 10 and server.fetches() == 1


async def test_jwks_failures_keep_known_keys(make_verifier: VerifierFactory, server: KeyServer) -> None:
    clock = Monotonic()
    verifier = make_verifier(jwks_url=JWKS_URL, monotonic=clock)
    token = jwt.encode(claims(), jwks_ec_key(), algorithm="ES256", headers={"kid": "ec-1"})
    with trio.fail_after(10):
        assert (await verifier.verify(token)).sub == "alice"
        # Old keys are fetched again; if the endpoint is down, the ones known stay in use.
        server.status = 503
        clock.t += JWKS_MAX_AGE_S + 1
        assert (await verifier.verify(token)).sub == "alice"
        assert server.fetches() == 2
        # Once it answers again, the new set replaces the old one: a withdrawn key stops working.
        server.status = 200
        server.keys = [jwk_of(ed_key(), "ed-1")]
        clock.t += JWKS_MAX_AGE_S + 1
        await refused_not_expired(verifier, token)
        assert server.fetches() == 3


async def test_jwks_down_from_the_start_refuses(make_verifier: VerifierFactory, server: KeyServer) -> None:
    server.status = 500
    verifier = make_verifier(jwks_url=JWKS_URL, public_key_files=[])
    token = jwt.encode(claims(), jwks_ec_key(), algorithm="ES256", headers={"kid": "ec-1"})
    error = await refused_not_expired(verifier, token)
    assert "no key" in error.message
    # Unusable documents are failures too.
    for body in (b"not json", b"[]", b'{"keys": 5}'):
        transport = httpx.MockTransport(lambda request, body=body: httpx.Response(200, content=body))
        broken = TokenVerifier.from_config(
            AuthConfig(algorithms=["ES256"], jwks_url=JWKS_URL), transport=transport, clock=FixedClock()
        )
        await refused_not_expired(broken, token)


async def test_jwks_fetch_timeout(server: KeyServer) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(30)
        raise AssertionError("not reached")

    verifier = TokenVerifier.from_config(
        AuthConfig(algorithms=["ES256"], jwks_url=JWKS_URL, jwks_timeout_s=0.1),
        transport=httpx.MockTransport(slow),
        clock=FixedClock(),
    )
    token = jwt.encode(claims(), jwks_ec_key(), algorithm="ES256", headers={"kid": "ec-1"})
    with trio.fail_after(5):
        error = await refused_not_expired(verifier, token)
    assert "no key" in error.message


# -- configuration --------------------------------------------------------------------------------


def test_key_file_problems_are_config_errors(tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(ConfigError) as info:
        load_public_keys([str(tmp_path / "missing.pem"), str(private), str(garbage)])
    assert [key for key, _ in info.value.problems] == [
        "auth.public_key_files[0]",
        "auth.public_key_files[1]",
        "auth.public_key_files[2]",
    ]


def test_certificates_and_relative_paths(tmp_path: Path) -> None:
    cert = self_signed_cert(rsa_key()).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "bundle.pem").write_bytes(cert + pem(ec_key()))
    keys = load_public_keys(["bundle.pem"], base_dir=tmp_path)
    assert len(keys) == 2
    assert isinstance(keys[0], rsa.RSAPublicKey) and isinstance(keys[1], ec.EllipticCurvePublicKey)


def test_unsupported_algorithm_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(algorithms=["none"])
    with pytest.raises(ConfigError):
        TokenVerifier(algorithms=["HS256", "ES256K"])


# -- development tokens ---------------------------------------------------------------------------


async def test_mint_dev_token_round_trip(make_verifier: VerifierFactory) -> None:
    verifier = make_verifier()
    with trio.fail_after(10):
        token = mint_dev_token(
            SECRET,
            sub="dev",
            ttl_s=600,
            rooms=["job:*"],
            name="Dev",
            now=NOW,
            audience=AUDIENCE,
            issuer=ISSUER,
        )
        result = await verifier.verify(token)
    assert (result.sub, result.rooms, result.name) == ("dev", ("job:*",), "Dev")
    assert result.exp == NOW + timedelta(seconds=600)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    bare = jwt.decode(
        mint_dev_token(SECRET, sub="dev", ttl_s=60, now=NOW), options={"verify_signature": False}
    )
    assert set(bare) == {"sub", "iat", "exp"}


@pytest.mark.parametrize(
    "changes",
    [
        {"secret": ""},
        {"sub": ""},
        {"sub": "u" * 129},
        {"rooms": ["bad room"]},
        {"rooms": ["a:*:b"]},
        {"ttl_s": 0},
    ],
)
def test_mint_dev_token_refuses_what_would_not_verify(changes: dict[str, Any]) -> None:
    args: dict[str, Any] = {"secret": SECRET, "sub": "dev", "ttl_s": 60.0, "rooms": (), "now": NOW}
    args.update(changes)
    secret = args.pop("secret")
    with pytest.raises(ValueError):
        mint_dev_token(secret, **args)


# -- API keys -------------------------------------------------------------------------------------


def test_api_keys() -> None:
    keys = ApiKeys.from_config(ApiConfig(keys=["rtd_first", "rtd_second", ""]))
    assert len(keys) == 2
    assert keys.check("rtd_first") and keys.check("rtd_second")
    for wrong in ("", "rtd_firs", "rtd_first ", "RTD_FIRST", "rtd_second2", "rtd_\udcff", "é"):
        assert not keys.check(wrong), wrong
    assert not ApiKeys([]).check("")
    assert not ApiKeys([]).check("anything")


def test_api_keys_compare_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: a match on the first key still compares against the others."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = ApiKeys(["k1", "k2", "k3"])
    assert keys.check("k1")
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls), "digests, so lengths say nothing"


@pytest.fixture(autouse=True)
def _no_real_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A verifier that forgot its MockTransport would reach for the network: fail instead."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no real network in these tests")

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", refuse)
    yield
