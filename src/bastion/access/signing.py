"""Sign and verify models in the OpenSSF model-signing v1.x "key" format.

A signature is a Sigstore bundle (see :mod:`bastion.access.envelope`) whose
in-toto statement has predicate type ``https://model_signing/signature/v1.0``:
the subject is the model's digest, the predicate lists every file's digest and
how the list was made (see :mod:`bastion.access.manifest`). ``model_signing
verify key`` accepts what :func:`sign_model` writes, and :func:`verify_model`
accepts what ``model_signing sign key`` writes, for the same key.

Verification is strict: every signed file must be present and unchanged, and
every file on disk must be signed, except the ignored paths (the git files,
the signature itself, the default attestation file, and the ignore paths the
signature lists). bastion's own files are ignored as regular files only: a
directory named ``model.sig`` or ``robustness.att.json`` is hashed like any other,
so its files must be signed. There is no shard mode and no way to let unsigned
files pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bastion.access.envelope import (IN_TOTO_STATEMENT_TYPE, open_bundle, read_bundle_file, sign_statement,
                                     write_bundle_file)
from bastion.access.hashing import DIGEST_SIZES, HASH_TYPES, check_hash_type
from bastion.access.manifest import (GIT_PATHS, SINGLE_FILE_NAME, Ignores, Manifest, Resource, build_manifest,
                                     default_ignores, is_ignored, model_name, normalise_ignore_path, root_digest)
from bastion.errors import UsageError, VerificationError

PREDICATE_TYPE = "https://model_signing/signature/v1.0"
DEFAULT_SIGNATURE_NAME = "model.sig"
#: Written inside a model directory by `bastion attest`; signatures ignore it (and say so in ignore_paths).
DEFAULT_ATTESTATION_NAME = "robustness.att.json"
#: bastion's own files: wherever a signer's ignore list names one, it is ignored as a regular file only.
OWN_FILE_NAMES = frozenset({DEFAULT_SIGNATURE_NAME, DEFAULT_ATTESTATION_NAME})
MAX_PROBLEMS_SHOWN = 5
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class SignedModel:
    """A model that was just signed or verified."""

    model: Path
    signature: Path
    model_name: str
    root_digest: str
    hash_type: str
    files: int
    ignore_paths: tuple[str, ...] = ()


def default_signature_path(model: str | Path) -> Path:
    model = Path(model)
    return model / DEFAULT_SIGNATURE_NAME if model.is_dir() else model.with_name(model.name + ".sig")


def signing_ignores(model: Path, signature: Path) -> Ignores:
    """The git paths, and the signature and default attestation files (as files only) inside the model."""
    default_attestation = model / DEFAULT_ATTESTATION_NAME if model.is_dir() else None
    return default_ignores(model, signature, default_attestation)


def model_statement(manifest: Manifest) -> dict[str, Any]:
    serialization = {"method": "files", "hash_type": manifest.hash_type, "allow_symlinks": False,
                     "ignore_paths": sorted(manifest.ignore_paths)}
    resources = [{"name": r.name, "algorithm": manifest.hash_type, "digest": r.digest.hex()}
                 for r in manifest.resources]
    return {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [{"name": manifest.model_name, "digest": {"sha256": manifest.root_digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": serialization, "resources": resources},
    }


def sign_model(model: str | Path, private_key, *, signature: str | Path | None = None, hash_type: str = "sha256",
               workers: int | None = None) -> SignedModel:
    """Hash the model at ``model``, sign its manifest, write the bundle atomically to ``signature``."""
    model = existing_model(model)
    check_hash_type(hash_type)
    signature = Path(signature) if signature else default_signature_path(model)
    ignores = signing_ignores(model, signature)
    try:
        manifest = build_manifest(model, hash_type, ignores.paths, workers, ignore_files=ignores.files)
    except VerificationError as exc:  # a model that cannot be signed (a FIFO, a link inside) is bad input, not a "no"
        raise UsageError(f"cannot sign: {exc}") from None
    if not manifest.resources:
        raise UsageError(f"{model}: holds no files to sign")
    bundle = sign_statement(model_statement(manifest), private_key)
    write_bundle_file(signature, bundle, "signature")
    return SignedModel(model, signature, manifest.model_name, manifest.root_digest, hash_type,
                       len(manifest.resources), tuple(manifest.ignore_paths))


def read_signature(signature: str | Path, public_key) -> Manifest:
    """Verify a signature file with ``public_key`` and return the manifest it signs (nothing on disk is read)."""
    source = str(signature)
    statement = open_bundle(read_bundle_file(signature), public_key, source)
    return parse_model_statement(statement, source)


def verify_model(model: str | Path, public_key, *, signature: str | Path | None = None,
                 workers: int | None = None) -> SignedModel:
    """Check the signature, then that the model on disk is exactly what it signs. Raises VerificationError."""
    model = existing_model(model)
    signature = Path(signature) if signature else default_signature_path(model)
    signed = read_signature(signature, public_key)
    ignores = verification_ignores(model, signature, signed)
    actual = build_manifest(model, signed.hash_type, ignores.paths, workers, ignore_files=ignores.files)
    compare_manifests(signed, actual, model, signature)
    return SignedModel(model, signature, signed.model_name, signed.root_digest, signed.hash_type,
                       len(signed.resources), tuple(signed.ignore_paths))


def existing_model(model: str | Path) -> Path:
    """``model`` as a Path; UsageError (bad input, exit 2) if nothing is there."""
    model = Path(model)
    if not os.path.lexists(model):
        raise UsageError(f"{model}: no such model file or directory")
    return model


def verification_ignores(model: Path, signature: Path, signed: Manifest) -> Ignores:
    """What verifying ``signed`` leaves out of the model on disk (see :func:`ignores_when_verifying`)."""
    return ignores_when_verifying(model, signed.ignore_paths, (signature,), [r.name for r in signed.resources])


def ignores_when_verifying(model: Path, signed_ignore_paths: list[str], own_files: tuple[Path | None, ...],
                           signed_names: list[str] | None = None) -> Ignores:
    """The signed ignore paths, ``own_files`` inside the model, and the git paths unless the signature lists one.

    A signed ignore path naming one of bastion's own files (:data:`OWN_FILE_NAMES`, or one
    of ``own_files``) ignores a regular file only, like ``own_files`` themselves. Without
    ``signed_names`` (an attestation lists no files) the git paths are always ignored.
    """
    own = default_ignores(model, *own_files)
    files, paths = set(own.files), set()
    for text in signed_ignore_paths:
        normal = normalise_ignore_path(text)
        if normal is not None and (str(normal) in OWN_FILE_NAMES or str(normal) in own.files):
            files.add(str(normal))
        else:
            paths.add(text)
    names = [PurePosixPath(n) for n in signed_names or ()]
    for git_path in GIT_PATHS:
        if not any(is_ignored(name, {PurePosixPath(git_path)}) for name in names):
            paths.add(git_path)
    return Ignores(frozenset(paths), frozenset(files))


def compare_manifests(signed: Manifest, actual: Manifest, model: Path, signature: Path) -> None:
    expected, found = signed.by_name(), actual.by_name()
    if (SINGLE_FILE_NAME in expected) != (SINGLE_FILE_NAME in found):
        kind = "a single file" if SINGLE_FILE_NAME in expected else "a directory"
        raise VerificationError(f"{model}: {signature} was made for {kind} ('{signed.model_name}'), "
                                "so it is a signature for another model")
    if expected == found:
        return
    matching = [n for n, d in expected.items() if found.get(n) == d]
    if not matching and len(expected) > 1 and found:
        raise VerificationError(f"{model}: {signature} is a signature for another model ('{signed.model_name}'): "
                                f"none of its {len(expected)} signed files match the files here")
    problems = _describe_differences(expected, found)
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f"; and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    raise VerificationError(f"{model}: does not match {signature}: {shown}{more}")


def _describe_differences(expected: dict[str, bytes], found: dict[str, bytes]) -> list[str]:
    if SINGLE_FILE_NAME in expected:
        return ["the file's content changed (its digest differs from the signed one)"]
    missing = sorted(set(expected) - set(found), key=lambda n: PurePosixPath(n).parts)
    added = sorted(set(found) - set(expected), key=lambda n: PurePosixPath(n).parts)
    problems = [f"file '{n}' changed (digest differs from the signed one)"
                for n in sorted(expected) if n in found and found[n] != expected[n]]
    added_by_digest: dict[bytes, list[str]] = {}
    for name in added:
        added_by_digest.setdefault(found[name], []).append(name)
    renamed_to = {}
    for old in missing:  # a missing file whose exact bytes turn up under a new name was renamed
        candidates = added_by_digest.get(expected[old])
        if candidates:
            renamed_to[old] = candidates.pop(0)
    problems += [f"file '{old}' was renamed to '{new}'" for old, new in renamed_to.items()]
    problems += [f"file '{n}' is missing (removed after signing)" for n in missing if n not in renamed_to]
    problems += [f"file '{n}' is not signed (added after signing)" for n in added if n not in renamed_to.values()]
    return problems


def parse_model_statement(statement: dict[str, Any], source: str) -> Manifest:
    """Validate a model-signing v1.0 statement and return its manifest."""
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError(f"{source}: not a model signature (predicateType "
                                f"{statement.get('predicateType')!r}, expected {PREDICATE_TYPE})")
    subject_name, subject_digest = parse_subject(statement, source)
    predicate = statement.get("predicate")
    serialization = predicate.get("serialization") if isinstance(predicate, dict) else None
    if not isinstance(serialization, dict):
        raise VerificationError(f"{source}: malformed statement (no predicate.serialization)")
    if serialization.get("method") != "files":
        raise VerificationError(f"{source}: serialization method {serialization.get('method')!r} is not accepted "
                                "(bastion accepts only 'files'; shard signatures skip empty files); re-sign the model")
    hash_type = serialization.get("hash_type")
    if hash_type not in HASH_TYPES:
        raise VerificationError(f"{source}: unsupported hash_type {hash_type!r} (use one of {', '.join(HASH_TYPES)})")
    ignore_paths = serialization.get("ignore_paths", [])
    if not isinstance(ignore_paths, list) or not all(isinstance(p, str) for p in ignore_paths):
        raise VerificationError(f"{source}: malformed statement (ignore_paths must be a list of paths)")
    if any(p.strip() in ("", ".", "./") for p in ignore_paths):
        raise VerificationError(f"{source}: an ignore path covers the whole model; refusing the signature")
    resources = _parse_resources(predicate.get("resources"), hash_type, source)
    if root_digest(resources) != subject_digest:
        raise VerificationError(f"{source}: the subject digest does not match the listed files (inconsistent "
                                "statement)")
    return Manifest(subject_name, hash_type, resources, sorted(set(ignore_paths)))


def parse_subject(statement: dict[str, Any], source: str) -> tuple[str, str]:
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise VerificationError(f"{source}: the statement must have exactly one subject")
    name = subjects[0].get("name", "")
    digest = subjects[0].get("digest")
    value = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(name, str) or not isinstance(value, str) or len(value) != 64 or not _HEX.fullmatch(value):
        raise VerificationError(f"{source}: malformed subject (needs a name and a sha256 digest)")
    return name, value


def _parse_resources(items: Any, hash_type: str, source: str) -> list[Resource]:
    if not isinstance(items, list) or not items:
        raise VerificationError(f"{source}: the statement lists no files")
    resources, seen = [], set()
    for item in items:
        name = item.get("name") if isinstance(item, dict) else None
        digest = item.get("digest") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(digest, str):
            raise VerificationError(f"{source}: malformed resource entry {str(item)[:80]!r}")
        if item.get("algorithm") != hash_type:
            raise VerificationError(f"{source}: resource '{name}' uses {item.get('algorithm')!r}, not {hash_type}")
        if not _valid_name(name) or name in seen:
            raise VerificationError(f"{source}: invalid or repeated resource name {name!r}")
        if len(digest) != 2 * DIGEST_SIZES[hash_type] or not _HEX.fullmatch(digest):
            raise VerificationError(f"{source}: resource '{name}' has a malformed {hash_type} digest")
        seen.add(name)
        resources.append(Resource(name, bytes.fromhex(digest)))
    if SINGLE_FILE_NAME in seen and len(seen) > 1:
        raise VerificationError(f"{source}: a single-file entry '.' cannot be listed with other files")
    return resources


def _valid_name(name: str) -> bool:
    if name == SINGLE_FILE_NAME:
        return True
    normal = normalise_ignore_path(name)
    return normal is not None and str(normal) == name and "\x00" not in name


__all__ = ["DEFAULT_ATTESTATION_NAME", "DEFAULT_SIGNATURE_NAME", "OWN_FILE_NAMES", "PREDICATE_TYPE", "SignedModel",
           "default_signature_path", "existing_model", "ignores_when_verifying", "model_name", "read_signature",
           "sign_model", "verification_ignores", "verify_model"]
