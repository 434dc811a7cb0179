"""Caller tokens (JWT, RFC 7519): issue them, and verify them against pinned issuer keys.

Verification runs PyJWT's ``decode_complete`` with everything pinned by the
policy and nothing taken from the token: the algorithm is the issuer's one
configured algorithm, the key is a pre-loaded key object selected by a
validated ``kid``, the audience is compared strictly and the required claims
are enforced. bastion adds what PyJWT leaves out: a size limit checked before
any parsing, a safe ``kid``, no ``crit`` extensions at all, NumericDate types
for ``exp``/``iat``/``nbf`` (PyJWT accepts ``"exp": "9999999999"``), a cap on
the lifetime ``exp - iat``, a non-empty string ``sub``, the RFC 6749 scope syntax
(see :mod:`bastion.access.scopes`), and short one-line reasons fit for an audit log.

Header parameters that point at keys (``jku``, ``x5u``, ``x5c``, ``jwk``) are
ignored: a key named by the token is chosen by whoever forged the token.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import jwt
from jwt import exceptions as jwt_errors

from bastion.access.scopes import scope_string_problem, scopes_from_claim
from bastion.access.token_keys import HS256_MIN_SECRET_BYTES, key_problem
from bastion.errors import ConfigError, TokenError, UsageError

ALGORITHMS = ("EdDSA", "ES256", "ES384", "ES512", "RS256", "PS256", "HS256")
BASE_REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
DEFAULT_MAX_TOKEN_BYTES = 8 * 1024
MAX_LEEWAY_SECONDS = 60
DEFAULT_MAX_LIFETIME_SECONDS = 24 * 3600
#: The most a policy may allow for exp - iat; `bastion token issue --ttl` has the same ceiling.
MAX_LIFETIME_SECONDS = 366 * 86400
#: PyJWT's own messages are quoted in reasons only up to this length.
_MAX_QUOTED_CHARS = 160

# A key id is only ever a dictionary key here, but it ends up in logs and in
# other systems' lookups: keep it to a short, boring alphabet.
_SAFE_KID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def safe_kid_problem(kid: Any) -> str | None:
    """Why ``kid`` is not an acceptable key id, or None if it is."""
    if not isinstance(kid, str):
        return f"kid must be a string, got {type(kid).__name__}"
    if not _SAFE_KID.fullmatch(kid):
        return (f"kid {kid[:80]!r} is not a safe key id (1-64 letters, digits, '.', '_' or '-', "
                "not starting with '.')")
    return None


class IssuerKeys(Protocol):
    """Where an issuer's verification keys come from: fixed keys, or a JWKS file or URL."""

    #: Whether ``key_for`` may wait on a network (a JWKS URL): callers on an event loop decide in a thread.
    fetches: bool

    def key_for(self, kid: str | None) -> tuple[str | None, Any]:
        """The (kid, key object) a token with this ``kid`` must verify under; TokenError if none."""

    def only_key(self) -> tuple[str | None, Any] | None:
        """The issuer's one fixed key, when it has exactly one that never changes."""

    def still_trusts(self, kid: str | None, key: Any) -> bool:
        """Whether ``key`` (the object that verified a token) is still this issuer's key ``kid``.

        The verified-claims cache asks this on every hit, so a key withdrawn from a
        JWKS or rotated under the same kid stops vouching for tokens it verified earlier.
        """


class StaticKeys:
    """Keys loaded once from key files, secrets or a JWKS file."""

    fetches = False

    def __init__(self, issuer: str, keys: dict[str | None, Any]):
        self.issuer = issuer
        self.keys = dict(keys)

    def key_for(self, kid: str | None) -> tuple[str | None, Any]:
        if kid is None:
            if len(self.keys) == 1:
                return next(iter(self.keys.items()))
            raise TokenError(f"token has no kid, and issuer {self.issuer!r} has {len(self.keys)} keys: "
                             "the issuer must name its key in the header")
        if kid in self.keys:
            return kid, self.keys[kid]
        if None in self.keys and len(self.keys) == 1:
            # A key configured without a kid (e.g. an HS256 secret) answers to any safe kid.
            return kid, self.keys[None]
        raise TokenError(f"unknown kid {kid!r} for issuer {self.issuer!r}")

    def only_key(self) -> tuple[str | None, Any] | None:
        return next(iter(self.keys.items())) if len(self.keys) == 1 else None

    def still_trusts(self, kid: str | None, key: Any) -> bool:
        return any(trusted is key for trusted in self.keys.values())


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    algorithm: str
    keys: IssuerKeys

    @cached_property
    def algorithms(self) -> list[str]:
        """The one-element allow-list PyJWT checks the token's alg against."""
        return [self.algorithm]


@dataclass(frozen=True)
class TokenRules:
    """What every accepted token must satisfy, whoever issued it."""

    audience: str
    required_claims: tuple[str, ...] = BASE_REQUIRED_CLAIMS
    leeway_seconds: float = 30
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    allow_audience_list: bool = False
    max_lifetime_seconds: float = DEFAULT_MAX_LIFETIME_SECONDS


class VerifiedToken:
    """The claims of a token whose signature and registered claims checked out.

    ``key`` is the key object that verified the signature: the verified-claims cache
    asks the issuer whether it still trusts that key before it reuses the claims.
    """

    __slots__ = ("claims", "issuer", "kid", "key", "subject", "jti", "expires_at", "scopes")

    def __init__(self, claims: dict, issuer: str, kid: str | None, key: Any = None):
        check_claim_types(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TokenError("claim sub must be a non-empty string naming the caller")
        self.claims = claims
        self.issuer = issuer
        self.kid = kid
        self.key = key
        self.subject: str = subject
        self.jti: str | None = claims.get("jti")
        self.expires_at: float = claims["exp"]
        self.scopes: tuple[str, ...] = scopes_from_claim(claims["scope"]) if "scope" in claims else ()


class TokenVerifier:
    """Signature and registered-claim checks for the issuers a policy trusts."""

    def __init__(self, issuers: list[TrustedIssuer], rules: TokenRules):
        if not issuers:
            raise ConfigError("a token verifier needs at least one trusted issuer")
        self.issuers = {issuer.iss: issuer for issuer in issuers}
        self.rules = rules
        self._options = {"require": list(rules.required_claims), "strict_aud": not rules.allow_audience_list}
        self._audience, self._leeway, self._max_bytes = rules.audience, rules.leeway_seconds, rules.max_token_bytes
        # With one issuer holding one fixed key, nothing in the token is needed to pick
        # the key, so the header is parsed once (by PyJWT) instead of twice.
        only = issuers[0].keys.only_key() if len(issuers) == 1 else None
        self._fixed = (issuers[0], only) if only is not None else None
        #: Whether verifying may wait on a key server (some issuer's keys come from a JWKS URL).
        self.fetches_keys = any(getattr(issuer.keys, "fetches", True) for issuer in issuers)

    def check_shape(self, token: Any) -> str:
        """The token as text, after the checks that cost nothing: type, size, ASCII, 3 segments.

        Runs before any decoding or cryptography, so an oversized token costs nothing.
        A ``str`` or ``bytes`` subclass is read through the base type, so no method it
        overrides runs (and ``type()``, unlike ``isinstance``, cannot be fooled by ``__class__``).
        """
        kind = type(token)
        if issubclass(kind, str):
            text: str | None = str.__str__(token)
            size = len(text)
        elif issubclass(kind, (bytes, bytearray)):
            text, raw = None, memoryview(token)
            size = raw.nbytes
        else:
            raise TokenError(f"token must be text, got {kind.__name__[:40]}")
        if size > self._max_bytes:
            raise TokenError(f"token is {size} bytes, over this policy's limit of {self._max_bytes}")
        if text is None:
            text = raw.tobytes().decode("latin-1")
        if not text.isascii():
            raise TokenError("token is not ASCII text")
        dots = text.count(".")
        if dots != 2:
            raise TokenError(f"token has {dots + 1} segments; a signed JWT has exactly 3 (header.payload.signature)")
        return text

    def verify(self, token: Any) -> VerifiedToken:
        """Verify signature and registered claims; TokenError with the reason otherwise."""
        return self.verify_shaped(self.check_shape(token))

    def verify_shaped(self, text: str) -> VerifiedToken:
        """``verify`` for a token that already passed ``check_shape``."""
        header = None
        if self._fixed is not None:
            issuer, (kid, key) = self._fixed
        else:
            header = decode_segment(text.partition(".")[0], "header")
            issuer = self._issuer_of(text)
            check_header(header, issuer)
            kid, key = issuer.keys.key_for(header.get("kid"))
        try:
            decoded = jwt.decode_complete(text, key, algorithms=issuer.algorithms, audience=self._audience,
                                          issuer=issuer.iss, leeway=self._leeway, options=self._options)
        except jwt_errors.PyJWTError as exc:
            if header is None:  # a header problem is the more useful reason: report it first
                check_header(decode_segment(text.partition(".")[0], "header"), issuer)
            raise TokenError(self._explain(exc, issuer, kid)) from None
        if header is None:
            header = decoded["header"]
            check_header(header, issuer)
            token_kid = header.get("kid")
            if token_kid is not None and token_kid != kid:
                if kid is not None:
                    raise TokenError(f"unknown kid {token_kid!r} for issuer {issuer.iss!r}")
                kid = token_kid
        verified = VerifiedToken(decoded["payload"], issuer.iss, kid, key)
        self._check_lifetime(verified.claims)
        return verified

    def still_trusted(self, verified: VerifiedToken) -> bool:
        """Whether the key that verified ``verified`` is still trusted by its issuer (for cached claims)."""
        issuer = self.issuers.get(verified.issuer)
        return issuer is not None and issuer.keys.still_trusts(verified.kid, verified.key)

    def _check_lifetime(self, claims: dict) -> None:
        cap = self.rules.max_lifetime_seconds
        if "iat" not in claims:
            raise TokenError(f"token has no iat claim, so its lifetime cannot be checked against this policy's "
                             f"max_lifetime_seconds of {cap:g}")
        lifetime = claims["exp"] - claims["iat"]
        if lifetime > cap:
            said = f"{lifetime:.0f} s" if lifetime < 1e12 else "more than 10^12 s"
            raise TokenError(f"token lifetime (exp - iat) is {said}, over this policy's max_lifetime_seconds "
                             f"of {cap:g}: ask the issuer for a shorter-lived token")

    def _issuer_of(self, text: str) -> TrustedIssuer:
        if len(self.issuers) == 1:
            return next(iter(self.issuers.values()))
        # Several issuers: the (not yet verified) iss claim picks whose keys to try;
        # PyJWT then checks the same iss against the verified payload.
        iss = decode_segment(text.split(".")[1], "payload").get("iss")
        if not isinstance(iss, str):
            raise TokenError("token has no iss claim (string) naming its issuer")
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise TokenError(f"issuer {iss[:200]!r} is not trusted by this policy")
        return issuer

    def _explain(self, exc: jwt_errors.PyJWTError, issuer: TrustedIssuer, kid: str | None) -> str:
        rules = self.rules
        if isinstance(exc, jwt_errors.InvalidSignatureError):
            key_name = f"key {kid!r}" if kid else "key"
            return f"signature does not verify with issuer {issuer.iss!r}'s {key_name}"
        if isinstance(exc, jwt_errors.ExpiredSignatureError):
            return f"token has expired (exp is in the past, beyond the {rules.leeway_seconds:g} s leeway)"
        if isinstance(exc, jwt_errors.ImmatureSignatureError):
            which = "nbf" if "nbf" in str(exc) else "iat"
            return f"token is not valid yet ({which} is in the future, beyond the {rules.leeway_seconds:g} s leeway)"
        if isinstance(exc, jwt_errors.MissingRequiredClaimError):
            return f"token lacks the required claim {exc.claim!r}"
        if isinstance(exc, jwt_errors.InvalidAudienceError):
            form = "" if rules.allow_audience_list else " as a single string (no lists)"
            return f"wrong audience: this policy accepts only aud {rules.audience!r}{form}"
        if isinstance(exc, jwt_errors.InvalidIssuerError):
            return f"wrong issuer: the key checked belongs to issuer {issuer.iss!r}"
        if isinstance(exc, jwt_errors.InvalidAlgorithmError):
            return f"alg is not allowed: issuer {issuer.iss!r} is pinned to {issuer.algorithm}"
        if isinstance(exc, jwt_errors.DecodeError):
            return f"malformed token: {str(exc)[:_MAX_QUOTED_CHARS]}"
        return f"invalid token: {str(exc)[:_MAX_QUOTED_CHARS]}"


def decode_segment(segment: str, what: str) -> dict:
    """A base64url JSON object segment, decoded without trusting it."""
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise TokenError(f"token {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(data)
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError(f"token {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"token {what} is not a JSON object")
    return value


def check_header(header: dict, issuer: TrustedIssuer) -> None:
    """Reject headers bastion will not honour; the algorithm is the issuer's, never the token's."""
    alg = header.get("alg")
    if alg != issuer.algorithm:
        if "alg" not in header:
            raise TokenError("token header has no alg")
        if not isinstance(alg, str):
            raise TokenError(f"token alg must be a string, got {type(alg).__name__}")
        if alg.lower() == "none":
            raise TokenError(f"alg {alg!r}: unsigned tokens are never accepted")
        raise TokenError(f"alg {alg[:20]!r} is not allowed: issuer {issuer.iss!r} is pinned to {issuer.algorithm}")
    if "kid" in header:
        kid = header["kid"]
        if type(kid) is not str or not _SAFE_KID.fullmatch(kid):
            raise TokenError(safe_kid_problem(kid))
    if "crit" in header:
        raise TokenError("token header has crit: bastion supports no critical JWS extensions")


_NUMERIC_DATES = ("exp", "iat", "nbf")


def check_claim_types(claims: dict) -> None:
    """NumericDate claims must be JSON numbers: PyJWT converts strings with int()."""
    for name in _NUMERIC_DATES:
        value = claims.get(name)
        if value is None or type(value) is int or (type(value) is float and math.isfinite(value)):
            continue
        raise TokenError(f"claim {name} must be a number of seconds (NumericDate), got {type(value).__name__}")


def new_jti() -> str:
    return secrets.token_urlsafe(16)


def issue_token(key: Any, algorithm: str, *, iss: str, aud: str, sub: str, ttl_seconds: float,
                scope: str | None = None, kid: str | None = None, jti: str | None = None,
                extra_claims: dict | None = None, now: float | None = None) -> str:
    """Sign a token with ``key`` (a private key object, or HS256 secret bytes); UsageError on bad arguments.

    ``scope`` is written exactly as given: a string that breaks the RFC 6749 syntax
    (see :mod:`bastion.access.scopes`) is refused, never rewritten. None: no scope claim.
    """
    if algorithm not in ALGORITHMS:
        raise UsageError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    public = key if isinstance(key, bytes) else key.public_key()
    problem = key_problem(algorithm, public)
    if problem:
        raise UsageError(problem)
    if not (isinstance(ttl_seconds, (int, float)) and 0 < ttl_seconds < math.inf):
        raise UsageError("the token lifetime (ttl) must be a positive number of seconds")
    if kid is not None and safe_kid_problem(kid):
        raise UsageError(safe_kid_problem(kid))
    for name, value in (("iss", iss), ("aud", aud), ("sub", sub)):
        if not isinstance(value, str) or not value:
            raise UsageError(f"{name} must be a non-empty string")
    if scope is not None and scope_string_problem(scope):
        raise UsageError(scope_string_problem(scope))
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = dict(extra_claims or {})
    claims.update({"iss": iss, "aud": aud, "sub": sub, "iat": issued, "exp": issued + int(math.ceil(ttl_seconds))})
    if scope is not None:
        claims["scope"] = scope
    if jti:
        claims["jti"] = jti
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


__all__ = ["ALGORITHMS", "BASE_REQUIRED_CLAIMS", "DEFAULT_MAX_LIFETIME_SECONDS", "DEFAULT_MAX_TOKEN_BYTES",
           "HS256_MIN_SECRET_BYTES", "IssuerKeys", "MAX_LEEWAY_SECONDS", "MAX_LIFETIME_SECONDS", "StaticKeys", "TokenRules", "TokenVerifier", "TrustedIssuer",
           "VerifiedToken", "check_claim_types", "check_header", "decode_segment", "issue_token", "new_jti",
           "safe_kid_problem"]
