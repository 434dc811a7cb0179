"""Load a model only after its signature (and optionally its attestation) verified.

The verified bytes are the loaded bytes: every model file is copied once into
a private temporary directory, the copies are hashed and checked against the
signature, and the model is deserialised from the copies. A file swapped on
disk after the check cannot reach the loader.

Only formats that run no code are loaded: a bundle (safetensors weights or a
torch.export program), a single ``.pt2`` program, a ``.safetensors`` file, or
a ``.pt``/``.pth``/``.bin``/``.ckpt`` state dict through
``torch.load(weights_only=True)``, after the pickle scanner found nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.access.attestation import Attestation, default_attestation_path, verify_attestation
from bastion.access.keys import load_public_key
from bastion.access.manifest import build_manifest, list_model_files
from bastion.access.pickle_scan import scan_file
from bastion.access.signing import (SignedModel, compare_manifests, default_signature_path, read_signature,
                                    verification_ignores)
from bastion.errors import ModelError, UnsafeFileError, UsageError, VerificationError

_PICKLE_WEIGHTS = (".pt", ".pth", ".bin", ".ckpt")


@dataclass
class ModelTrust:
    """What a loader trusts: signer keys (any one may have signed), and optionally a signed evaluation.

    ``require`` (e.g. ``"robust_accuracy>=0.85"``) makes the attestation mandatory.
    Keys are public key objects or PEM paths.
    """

    keys: list[Any]
    attestation_keys: list[Any] = field(default_factory=list)
    require: str | None = None
    attestation: str | Path | None = None


@dataclass(frozen=True)
class VerifiedCopy:
    """A private copy of a model whose bytes matched its signature (and attestation, if asked)."""

    path: Path  # the copy: load from here, never from the original
    signed: SignedModel
    signer_key: Any  # the trusted key the signature verified under
    attestation: Attestation | None = None
    attester_key: Any = None


def load_verified(path: str | Path, key_or_policy: Any, *, signature: str | Path | None = None,
                  architecture: str | None = None, trust_code: bool = False, device: str = "cpu"):
    """Verify the model at ``path`` with a public key (object or PEM path) or a :class:`ModelTrust`, then load it.

    Returns a :class:`~bastion.models.loading.LoadedModel`. Raises VerificationError
    (nothing is deserialised) if the signature, the files or the attestation do not check out.
    """
    with verified_copy(path, key_or_policy, signature=signature) as verified:
        loaded = load_copy(verified.path, architecture=architecture, trust_code=trust_code, device=device)
    loaded.source = str(path)
    return loaded


@contextmanager
def verified_copy(path: str | Path, key_or_policy: Any, *,
                  signature: str | Path | None = None) -> Iterator[VerifiedCopy]:
    """Copy the model's files to a private temp dir, verify the copy, and yield it; removed on exit.

    Everything read while the context is open (weights, metadata, data files in the bundle) is
    read from bytes that matched the signature, whatever happens to the original meanwhile.
    """
    model = Path(path)
    trust = key_or_policy if isinstance(key_or_policy, ModelTrust) else ModelTrust(keys=[key_or_policy])
    keys = [_as_public_key(k) for k in trust.keys]
    if not keys:
        raise UsageError("load_verified: give at least one trusted public key")
    signature = Path(signature) if signature else default_signature_path(model)
    with tempfile.TemporaryDirectory(prefix="bastion-verified-") as tmp:
        copy, signed, signer = _verified_copy(model, signature, keys, Path(tmp))
        attestation = attester = None
        if trust.require or trust.attestation:
            attestation, attester = _check_attestation(model, copy, signed, trust)
        yield VerifiedCopy(copy, signed, signer, attestation, attester)


def _as_public_key(key: Any):
    if isinstance(key, (str, Path)):
        return load_public_key(key)
    if hasattr(key, "verify") and hasattr(key, "public_bytes"):
        return key
    raise UsageError(f"load_verified: {type(key).__name__} is not a public key, a PEM path or a ModelTrust")


def _verified_copy(model: Path, signature: Path, keys: list, tmp: Path) -> tuple[Path, SignedModel, Any]:
    errors = []
    for key in keys:
        try:
            signed = read_signature(signature, key)
            signer = key
            break
        except VerificationError as exc:
            errors.append(str(exc))
    else:
        raise VerificationError(errors[0] if len(errors) == 1 else
                                f"{signature}: verifies with none of the {len(keys)} trusted keys ({errors[-1]})")
    ignores = verification_ignores(model, signature, signed)
    files = list_model_files(model, ignores.paths, ignores.files)
    copy = tmp / (model.name or "model")
    for name, source in files:
        target = copy if name == "." else copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_no_follow(source, target)
    actual = build_manifest(copy, signed.hash_type)
    compare_manifests(signed, actual, model, signature)
    return copy, SignedModel(model, signature, signed.model_name, signed.root_digest, signed.hash_type,
                             len(signed.resources), tuple(signed.ignore_paths)), signer


def _copy_no_follow(source: Path, target: Path) -> None:
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 * 1024 * 1024)


def _check_attestation(model: Path, copy: Path, signed: SignedModel, trust: ModelTrust) -> tuple[Attestation, Any]:
    attestation = Path(trust.attestation) if trust.attestation else default_attestation_path(model)
    keys = [_as_public_key(k) for k in (trust.attestation_keys or trust.keys)]
    errors = []
    for key in keys:
        try:
            return verify_attestation(copy, key, attestation, require=trust.require, signed=signed), key
        except VerificationError as exc:
            errors.append(str(exc).replace(str(copy), str(model)))  # name the model, not the private copy
    raise VerificationError(errors[-1])


def load_copy(copy: Path, *, architecture: str | None = None, trust_code: bool = False, device: str = "cpu"):
    """Load a model from a :class:`VerifiedCopy`'s path (only formats that run no code)."""
    from bastion.models.bundle import load_bundle
    from bastion.models.loading import LoadedModel, as_module, build_architecture, load_program, load_weights_into

    if copy.is_dir():
        loaded = load_bundle(copy, trust_code=trust_code)
    elif copy.suffix == ".pt2":
        loaded = LoadedModel(module=load_program(copy), name=copy.stem)
    elif copy.suffix == ".safetensors" or copy.suffix in _PICKLE_WEIGHTS:
        if architecture is None:
            raise ModelError(f"{copy.name}: a bare weights file needs architecture= (a registered name, or "
                             "package.module:factory with trust_code=True)")
        if copy.suffix in _PICKLE_WEIGHTS:
            findings = scan_file(copy).findings
            if findings:
                first = findings[0]
                raise UnsafeFileError(f"{copy.name}: pickle reaches {first.global_name} ({first.reason}); refusing")
        module = build_architecture(architecture, None, trust_code=trust_code)
        load_weights_into(module, copy)
        loaded = LoadedModel(module=module, name=copy.stem)
    else:
        raise ModelError(f"{copy.name}: not a format bastion loads safely (use a bundle directory, .pt2, "
                         ".safetensors, or a .pt state dict)")
    as_module(loaded.module)  # eval mode, no gradients
    loaded.module.to(device)
    return loaded
