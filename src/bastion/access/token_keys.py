"""Which key fits which token algorithm, key ids (RFC 7638 thumbprints), and JWK conversion.

Each trusted issuer has exactly one algorithm; every key it trusts must be of
that algorithm's type (and an RSA key at least 2048 bits, an HS256 secret at
least 32 bytes). Mixing families is how the classic "public key used as an
HMAC secret" forgery works, so a mismatch is a configuration error.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import algorithms as jwt_algorithms
from jwt import exceptions as jwt_errors

from bastion.errors import KeyFileError, KeySetError
from bastion.fsutil import read_regular_file

HS256_MIN_SECRET_BYTES = 32
MAX_SECRET_FILE_BYTES = 1024 * 1024
MIN_RSA_BITS = 2048

_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_KTY = {"EdDSA": "OKP", "ES256": "EC", "ES384": "EC", "ES512": "EC", "RS256": "RSA", "PS256": "RSA"}
# The members RFC 7638 hashes for each key type, and the only ones bastion reads
# from a JWK: private members ("d", "p", ...) are never turned into key objects.
_PUBLIC_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def key_problem(algorithm: str, key: Any) -> str | None:
    """Why ``key`` (a public key object, or secret bytes) cannot verify ``algorithm``, or None."""
    if algorithm == "HS256":
        if not isinstance(key, bytes):
            return "HS256 needs a secret (bytes), not a public key"
        return secret_problem(key)
    if isinstance(key, bytes):
        return f"{algorithm} needs a public key, not a secret"
    if algorithm == "EdDSA":
        return None if isinstance(key, ed25519.Ed25519PublicKey) else "EdDSA needs an Ed25519 key"
    if algorithm in _EC_CURVES:
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[algorithm]:
            return None
        return f"{algorithm} needs an EC {_EC_CURVES[algorithm]} key"
    if algorithm in ("RS256", "PS256"):
        if not isinstance(key, rsa.RSAPublicKey):
            return f"{algorithm} needs an RSA key"
        if key.key_size < MIN_RSA_BITS:
            return f"{algorithm} needs an RSA key of at least {MIN_RSA_BITS} bits, not {key.key_size}"
        return None
    return f"unknown algorithm {algorithm!r}"


def secret_problem(secret: bytes) -> str | None:
    """Why ``secret`` is not an acceptable HS256 secret: too short, or a public key in disguise."""
    if len(secret) < HS256_MIN_SECRET_BYTES:
        return f"an HS256 secret must be at least {HS256_MIN_SECRET_BYTES} bytes, got {len(secret)}"
    if b"-----BEGIN" in secret or secret.lstrip().startswith((b"ssh-", b"ecdsa-sha2-")):
        return "the HS256 secret is a PEM or SSH key: use a random secret, never a key"
    try:
        serialization.load_der_public_key(secret)
        return "the HS256 secret is a DER public key: use a random secret, never a key"
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        as_json = json.loads(secret)
    except ValueError:
        as_json = None
    if isinstance(as_json, dict) and ("kty" in as_json or "keys" in as_json):
        return "the HS256 secret is a JWK: use a random secret, never a key"
    return None


def read_secret_file(path: str | Path) -> bytes:
    """An HS256 secret from a file (at most 1 MiB), less one trailing newline; KeyFileError if unreadable.

    The issuing and the verifying side both read secret files here, so they agree on the bytes.
    """
    secret = read_regular_file(path, limit=MAX_SECRET_FILE_BYTES, error=KeyFileError, what="secret file")
    for ending in (b"\r\n", b"\n"):
        if secret.endswith(ending):
            return secret[:-len(ending)]
    return secret


def algorithm_for_key(public_key: Any, rsa_algorithm: str = "RS256") -> str:
    """The token algorithm a key signs with (RSA keys: RS256 unless told PS256)."""
    if isinstance(public_key, bytes):
        return "HS256"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        for algorithm, curve in _EC_CURVES.items():
            if public_key.curve.name == curve:
                return algorithm
        raise KeyFileError(f"EC curve {public_key.curve.name} is not used for tokens (use P-256, P-384 or P-521)")
    if isinstance(public_key, rsa.RSAPublicKey):
        return rsa_algorithm
    raise KeyFileError(f"{type(public_key).__name__.lstrip('_')} is not a token signing key "
                       "(use EC P-256/384/521, Ed25519 or RSA)")


def public_jwk(public_key: Any) -> dict:
    """The public JWK members of a key object (no kid, no alg)."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = jwt_algorithms.OKPAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = jwt_algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, rsa.RSAPublicKey):
        jwk = jwt_algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        raise KeyFileError(f"{type(public_key).__name__.lstrip('_')} cannot be published as a JWK "
                           "(use EC, Ed25519 or RSA keys)")
    return {name: jwk[name] for name in _PUBLIC_MEMBERS[jwk["kty"]]}


def thumbprint(public_key: Any) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): a key id anyone can recompute from the key."""
    canonical = json.dumps(public_jwk(public_key), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def jwk_fits(jwk: dict, algorithm: str) -> bool:
    """Whether a JWK's key type is the one ``algorithm`` verifies with (a set may publish several)."""
    return jwk.get("kty") == _KTY.get(algorithm)


def jwk_to_public_key(jwk: dict, algorithm: str) -> Any:
    """A public key object from a JWK, which must fit ``algorithm``; KeySetError says why not."""
    kty = jwk.get("kty")
    if not jwk_fits(jwk, algorithm):
        raise KeySetError(f"kty {str(kty)[:20]!r} does not fit {algorithm}")
    public_only = {name: jwk[name] for name in _PUBLIC_MEMBERS[kty] if name in jwk}
    loader = {"OKP": jwt_algorithms.OKPAlgorithm, "EC": jwt_algorithms.ECAlgorithm,
              "RSA": jwt_algorithms.RSAAlgorithm}[kty]
    try:
        key = loader.from_jwk(public_only)
    except (jwt_errors.PyJWTError, ValueError, TypeError, AttributeError, UnsupportedAlgorithm) as exc:
        raise KeySetError(f"not a valid {kty} public key ({str(exc)[:120] or type(exc).__name__})") from None
    problem = key_problem(algorithm, key)
    if problem:
        raise KeySetError(problem)
    return key
