"""Sigstore bundles (v0.3 JSON) holding a DSSE envelope, signed with an ECDSA key.

This is the container of the OpenSSF model-signing "key" method, and bastion
uses the same container for its robustness attestations:

    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": sha256 hex of the public key PEM}, "tlogEntries": []},
     "dsseEnvelope": {"payload": base64(statement JSON), "payloadType": "application/vnd.in-toto+json",
                      "signatures": [{"sig": base64(DER ECDSA over PAE), "keyid": ""}]}}

The signature covers DSSE's pre-authentication encoding (PAE) of the payload
type and the exact payload bytes; verification checks those bytes as they are
and parses only what verified. The key hint is unsigned: it only tells a
wrong key apart from a forged signature in the error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import stat
from pathlib import Path
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.access.keys import load_private_key, public_pem
from bastion.errors import KeyFileError, UsageError, VerificationError
from bastion.fsutil import atomic_write_bytes

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
#: A signature listing ~100k files fits easily; anything bigger is refused before it is parsed.
MAX_BUNDLE_BYTES = 16 * 1024 * 1024

_CURVE_HASHES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}


def _ecdsa_for(key, source: str | None = None) -> ec.ECDSA:
    """The signature algorithm for ``key``; KeyFileError unless it is an ECDSA P-256/384/521 key (the one check)."""
    curve = getattr(key, "curve", None)
    if curve is None or curve.name not in _CURVE_HASHES:
        kind = type(key).__name__.lstrip("_")
        where = f"{source}: " if source else ""
        raise KeyFileError(f"{where}model signatures need an ECDSA P-256, P-384 or P-521 key (the OpenSSF "
                           f"model-signing format), not {kind}; make one with `bastion keygen`")
    return ec.ECDSA(_CURVE_HASHES[curve.name]())


def load_signing_key(path: str | Path, passphrase: bytes | Callable[[], bytes] | None = None):
    """The private key at ``path`` for signing models and attestations, checked before any hashing starts.

    ``passphrase`` as for :func:`bastion.access.keys.load_private_key`.
    """
    key = load_private_key(path, passphrase)
    _ecdsa_for(key, str(path))
    return key


def key_hint(public_key) -> str:
    return hashlib.sha256(public_pem(public_key)).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    header = f"DSSEv1 {len(payload_type.encode())} {payload_type} {len(payload)} "
    return header.encode("utf-8") + payload


def statement_bytes(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, indent=2, ensure_ascii=False).encode("utf-8")


def sign_statement(statement: dict[str, Any], private_key) -> bytes:
    """A bundle (JSON bytes) whose DSSE envelope carries ``statement``, signed by ``private_key``."""
    algorithm = _ecdsa_for(private_key)
    payload = statement_bytes(statement)
    signature = private_key.sign(pae(IN_TOTO_PAYLOAD_TYPE, payload), algorithm)
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(private_key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(bundle, indent=2).encode("utf-8") + b"\n"


def read_bundle_file(path: str | Path, what: str = "signature") -> bytes:
    """The bytes of a bundle file, refusing links, non-files and anything over the size cap."""
    p = Path(path)
    try:
        info = p.lstat()
    except FileNotFoundError:
        raise VerificationError(f"{p}: no such {what} file") from None
    except OSError as exc:
        raise VerificationError(f"{p}: cannot read the {what} file ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise VerificationError(f"{p}: the {what} file is a symbolic link; pass the real file")
    if not stat.S_ISREG(info.st_mode):
        raise VerificationError(f"{p}: the {what} file is not a regular file")
    if info.st_size > MAX_BUNDLE_BYTES:
        raise VerificationError(f"{p}: the {what} file is {info.st_size} bytes, over the {MAX_BUNDLE_BYTES}-byte "
                                "limit (not a file bastion or model-signing wrote)")
    with open(p, "rb") as fh:
        data = fh.read(MAX_BUNDLE_BYTES + 1)  # bounded even if the file grows after the check
    if len(data) > MAX_BUNDLE_BYTES:
        raise VerificationError(f"{p}: the {what} file is over the {MAX_BUNDLE_BYTES}-byte limit")
    return data


def write_bundle_file(path: str | Path, data: bytes, what: str = "signature") -> None:
    """Write a bundle atomically (mode 0644), refusing to replace a directory or special file of that name."""
    p = Path(path)
    try:
        info = p.lstat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise UsageError(f"{p}: cannot write the {what} file ({exc.strerror})") from None
    if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        raise UsageError(f"{p}: exists and is not a regular file; refusing to write the {what} there "
                         "(remove it, or choose another path)")
    atomic_write_bytes(p, data, mode=0o644)


def open_bundle(data: bytes, public_key, source: str = "signature") -> dict[str, Any]:
    """Verify a bundle with ``public_key`` and return its in-toto statement (parsed from the verified bytes)."""
    algorithm = _ecdsa_for(public_key)
    if len(data) > MAX_BUNDLE_BYTES:
        raise VerificationError(f"{source}: over the {MAX_BUNDLE_BYTES}-byte limit")
    bundle = _load_json(data, f"{source}: not a valid signature bundle (truncated or edited?)")
    if not isinstance(bundle, dict) or bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise VerificationError(f"{source}: not a Sigstore bundle v0.3 (mediaType must be {BUNDLE_MEDIA_TYPE})")
    _only_keys(bundle, {"mediaType", "verificationMaterial", "dsseEnvelope"}, source, "bundle")
    material = _get(bundle, source, "verificationMaterial")
    _only_keys(material, {"publicKey", "tlogEntries"}, source, "verificationMaterial")
    if material.get("tlogEntries", []) != []:
        raise VerificationError(f"{source}: transparency-log entries are not part of the key method; refusing")
    public_key_info = _get(bundle, source, "verificationMaterial", "publicKey")
    _only_keys(public_key_info, {"hint"}, source, "publicKey")
    hint = public_key_info.get("hint")
    if not isinstance(hint, str) or not hint:
        raise VerificationError(f"{source}: the bundle has no public key hint (model-signing 1.x always writes "
                                "one); re-sign the model")
    if hint != key_hint(public_key):
        raise VerificationError(f"{source}: signed by a different key than the one given "
                                "(the bundle's key hint does not match it); use the signer's public key")
    envelope = _get(bundle, source, "dsseEnvelope")
    _only_keys(envelope, {"payload", "payloadType", "signatures"}, source, "dsseEnvelope")
    if envelope.get("payloadType") != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationError(f"{source}: payloadType must be {IN_TOTO_PAYLOAD_TYPE}")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or len(signatures) != 1 or not isinstance(signatures[0], dict):
        raise VerificationError(f"{source}: the envelope must hold exactly one signature")
    _only_keys(signatures[0], {"sig", "keyid"}, source, "signature entry")
    if signatures[0].get("keyid", "") != "":
        raise VerificationError(f"{source}: unexpected keyid in the signature entry (the key method leaves it empty)")
    payload = _b64(envelope.get("payload"), source, "payload")
    signature = _b64(signatures[0].get("sig"), source, "signature")
    try:
        public_key.verify(signature, pae(IN_TOTO_PAYLOAD_TYPE, payload), algorithm)
    except InvalidSignature:
        raise VerificationError(f"{source}: the signature does not verify: the file was edited, "
                                "or it was made with another key") from None
    statement = _load_json(payload, f"{source}: the signed payload is not JSON")
    if not isinstance(statement, dict) or statement.get("_type") != IN_TOTO_STATEMENT_TYPE:
        raise VerificationError(f"{source}: the payload is not an in-toto v1 statement")
    return statement


def _get(obj: dict, source: str, *keys: str) -> dict:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(obj, dict):
            raise VerificationError(f"{source}: malformed bundle (no {'.'.join(keys)} object)")
    return obj


def _only_keys(obj: dict, allowed: set[str], source: str, where: str) -> None:
    # The unsigned parts of a bundle carry nothing bastion ignores: an extra field is an edit.
    extra = set(obj) - allowed
    if extra:
        raise VerificationError(f"{source}: unexpected field(s) {', '.join(sorted(extra))} in the {where}")


def _b64(value: Any, source: str, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise VerificationError(f"{source}: malformed bundle (the {what} is missing)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"{source}: malformed bundle (the {what} is not base64)") from None
    if base64.b64encode(raw).decode("ascii") != value:  # unused padding bits set: an edit that decodes the same
        raise VerificationError(f"{source}: malformed bundle (the {what} is not canonical base64)")
    return raw


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _load_json(data: bytes, message: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VerificationError(message) from None
