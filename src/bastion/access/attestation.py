"""Robustness attestations: a signed statement "this model, by digest, scored this on this evaluation".

The attestation is an in-toto v1 statement in the same Sigstore bundle / DSSE
envelope as a model signature. Its subject is the model's digest, computed
exactly as the model signature computes it (so a signature and an attestation
made with the same hash type name the same digest); its predicate, of type
:data:`PREDICATE_TYPE`, holds the evaluation summary (see
:mod:`bastion.access.report_summary`), how the model was hashed, and the full
report as given.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.access.envelope import (IN_TOTO_STATEMENT_TYPE, MAX_BUNDLE_BYTES, open_bundle, read_bundle_file,
                                     sign_statement, write_bundle_file)
from bastion.access.hashing import HASH_TYPES, check_hash_type
from bastion.access.manifest import Ignores, build_manifest, default_ignores
from bastion.access.report_summary import check_summary, summarise_report
from bastion.access.requirements import check_requirement, parse_requirement
from bastion.access.signing import (DEFAULT_ATTESTATION_NAME, DEFAULT_SIGNATURE_NAME, SignedModel, existing_model,
                                    ignores_when_verifying, parse_subject)
from bastion.errors import UsageError, VerificationError

PREDICATE_TYPE = "https://bastion.dev/attestation/robustness/v1"
MAX_REPORT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Attestation:
    model: Path
    attestation: Path
    root_digest: str
    hash_type: str
    evaluation: dict[str, Any]
    requirements_met: tuple[str, ...] = ()


def default_attestation_path(model: str | Path) -> Path:
    model = Path(model)
    return model / DEFAULT_ATTESTATION_NAME if model.is_dir() else model.with_name(model.name + ".att.json")


def read_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such report file (run `bastion bench --out DIR` first)")
    if p.stat().st_size > MAX_REPORT_BYTES:
        raise UsageError(f"{p}: report larger than {MAX_REPORT_BYTES} bytes")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{p}: not a JSON report ({exc})") from None


def _own_files(model: Path, attestation: Path) -> tuple[Path, ...]:
    """The attestation, and the default signature and attestation files: ignored (as files only) when hashing."""
    inside = (model / DEFAULT_SIGNATURE_NAME, model / DEFAULT_ATTESTATION_NAME) if model.is_dir() else ()
    return (attestation, *inside)


def attest_model(model: str | Path, report: dict[str, Any], private_key, *, out: str | Path | None = None,
                 hash_type: str = "sha256", report_source: str = "report", workers: int | None = None) -> Attestation:
    """Sign an attestation binding ``report`` to the model's digest; write it atomically to ``out``.

    ``report`` is a ``bastion bench`` report or ``bastion attack --json`` output (see
    :mod:`bastion.access.report_summary`); UsageError names the field that is wrong.
    """
    model = existing_model(model)
    check_hash_type(hash_type)
    out = Path(out) if out else default_attestation_path(model)
    evaluation = summarise_report(report, report_source, UsageError)
    ignores: Ignores = default_ignores(model, *_own_files(model, out))
    manifest = build_manifest(model, hash_type, ignores.paths, workers, ignore_files=ignores.files)
    if not manifest.resources:
        raise UsageError(f"{model}: holds no files to attest")
    statement = {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [{"name": manifest.model_name, "digest": {"sha256": manifest.root_digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": {"serialization": {"method": "files", "hash_type": hash_type, "allow_symlinks": False,
                                        "ignore_paths": sorted(manifest.ignore_paths)},
                      "files": len(manifest.resources)},
            "evaluation": evaluation,
            "report": report,
            "attested_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    bundle = sign_statement(statement, private_key)
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise UsageError(f"{report_source}: too large to attest ({len(bundle)} bytes signed, limit "
                         f"{MAX_BUNDLE_BYTES}); drop per-sample data from the report")
    write_bundle_file(out, bundle, "attestation")
    return Attestation(model, out, manifest.root_digest, hash_type, evaluation)


def verify_attestation(model: str | Path, public_key, attestation: str | Path, *, require: str | None = None,
                       signed: SignedModel | None = None, workers: int | None = None) -> Attestation:
    """Check the attestation's signature, that its subject is the model on disk, and ``require``.

    ``signed`` (the result of :func:`~bastion.access.signing.verify_model`) saves rehashing the
    model when it was verified with the same hash type a moment ago.
    """
    model, attestation = Path(model), Path(attestation)
    if require is not None:
        parse_requirement(require)  # a malformed requirement is a usage error, found before any hashing
    source = str(attestation)
    statement = open_bundle(read_bundle_file(attestation, "attestation"), public_key, source)
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise VerificationError(f"{source}: not a bastion robustness attestation (predicateType "
                                f"{statement.get('predicateType')!r}, expected {PREDICATE_TYPE})")
    subject_name, subject_digest = parse_subject(statement, source)
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise VerificationError(f"{source}: malformed attestation (no predicate)")
    hash_type, ignore_paths = _read_serialization(predicate, source)
    evaluation = check_summary(predicate.get("evaluation"), f"{source}: evaluation", VerificationError)
    if signed is not None and signed.hash_type == hash_type:
        actual_digest = signed.root_digest
    else:
        ignores = ignores_when_verifying(model, ignore_paths, _own_files(model, attestation))
        actual_digest = build_manifest(model, hash_type, ignores.paths, workers,
                                       ignore_files=ignores.files).root_digest
    if actual_digest != subject_digest:
        raise VerificationError(f"{model}: {source} attests a different model ('{subject_name}', digest "
                                f"{subject_digest[:16]}...) than the one on disk (digest {actual_digest[:16]}...): "
                                "the model changed after it was evaluated, or the attestation is for another model")
    met = tuple(check_requirement(require, evaluation, source)) if require else ()
    return Attestation(model, attestation, subject_digest, hash_type, evaluation, met)


def _read_serialization(predicate: dict[str, Any], source: str) -> tuple[str, list[str]]:
    model_info = predicate.get("model")
    serialization = model_info.get("serialization") if isinstance(model_info, dict) else None
    if not isinstance(serialization, dict) or serialization.get("method") != "files":
        raise VerificationError(f"{source}: malformed attestation (predicate.model.serialization)")
    hash_type = serialization.get("hash_type")
    ignore_paths = serialization.get("ignore_paths", [])
    if hash_type not in HASH_TYPES:
        raise VerificationError(f"{source}: unsupported hash_type {hash_type!r}")
    if not isinstance(ignore_paths, list) or not all(isinstance(p, str) for p in ignore_paths):
        raise VerificationError(f"{source}: malformed attestation (ignore_paths)")
    if any(p.strip() in ("", ".", "./") for p in ignore_paths):
        raise VerificationError(f"{source}: an ignore path covers the whole model; refusing the attestation")
    return hash_type, ignore_paths
