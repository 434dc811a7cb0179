"""Key files: generate, write (atomically, private key 0600), and load PEM keys.

Signing artifacts uses ECDSA (P-256 default, P-384, P-521) as the OpenSSF
model-signing "key" method requires; caller tokens may also use Ed25519 or RSA.
Passphrases come from the caller (an environment variable or a prompt in the
CLI), never from a command-line argument; a caller may pass a function that is
asked for the passphrase only when the key file is really encrypted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bastion.errors import KeyFileError
from bastion.fsutil import atomic_write_bytes, read_regular_file

KEY_TYPES = ("ec-p256", "ec-p384", "ec-p521", "ed25519", "rsa-2048", "rsa-3072")
MAX_KEY_FILE_BYTES = 64 * 1024


def generate_private_key(key_type: str = "ec-p256"):
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise KeyFileError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def public_pem(public_key) -> bytes:
    """SubjectPublicKeyInfo PEM (the exact text model-signing hashes for its key hint)."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_keypair(path: str | Path, private_key, *, passphrase: bytes | None = None, force: bool = False) -> tuple[Path, Path]:
    """Write ``path`` (PKCS#8 PEM, mode 0600, encrypted if ``passphrase``) and ``path.pub``."""
    key_path = Path(path)
    pub_path = key_path.with_name(key_path.name + ".pub")
    if not force:
        for existing in (key_path, pub_path):
            if existing.exists():
                raise KeyFileError(f"{existing} exists; refusing to overwrite (pass --force to replace it)")
    if key_path.parent and not key_path.parent.exists():
        raise KeyFileError(f"{key_path.parent}: no such directory")
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    private_bytes = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    atomic_write_bytes(key_path, private_bytes, mode=0o600)
    atomic_write_bytes(pub_path, public_pem(private_key.public_key()), mode=0o644)
    return key_path, pub_path


def _read(path: str | Path) -> bytes:
    return read_regular_file(path, limit=MAX_KEY_FILE_BYTES, error=KeyFileError, what="key file")


def pem_is_encrypted(data: bytes) -> bool:
    """Whether a PEM private key is passphrase-protected (PKCS#8 encrypted, or OpenSSL's legacy Proc-Type)."""
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def load_private_key(path: str | Path, passphrase: bytes | Callable[[], bytes] | None = None):
    """A PEM private key. ``passphrase``: the bytes, or a function asked for them only if the key is encrypted."""
    data = _read(path)
    if callable(passphrase):
        passphrase = passphrase() if pem_is_encrypted(data) else None
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise KeyFileError(f"{path}: the key is encrypted; give its passphrase "
                               "(CLI: set BASTION_KEY_PASSPHRASE or answer the prompt)") from None
        raise KeyFileError(f"{path}: the key is not encrypted; do not give a passphrase") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        hint = "wrong passphrase or " if passphrase else ""
        raise KeyFileError(f"{path}: cannot read private key ({hint}not a PEM private key: {exc})") from None


def load_public_key(path: str | Path):
    """Load a public key PEM; a private key file is accepted and its public half returned."""
    data = _read(path)
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        pass
    if b"PRIVATE KEY" in data:
        return load_private_key(path, passphrase=_env_passphrase()).public_key()
    raise KeyFileError(f"{path}: not a PEM public key")


def _env_passphrase() -> bytes | None:
    value = os.environ.get("BASTION_KEY_PASSPHRASE")
    return value.encode() if value else None
