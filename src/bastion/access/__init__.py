"""Access control: keys, signed artifacts, attestations, safe loading, caller tokens and policies.

What this package owns: key files (``keys``, ``token_keys``), OpenSSF model signatures
(``manifest``, ``hashing``, ``envelope``, ``signing``), robustness attestations
(``attestation``, ``report_summary``, ``requirements``), loading only verified bytes
(``safe_load``), the pickle scanner (``pickle_scan``), caller tokens and access
policies (``tokens``, ``scopes``, ``jwks``, ``claims_cache``, ``policy``,
``policy_file``) and model-name syntax (``names``). It may import the bottom layer
(errors, fsutil, tomlfile, catalog) and ``bastion.models`` (inside ``safe_load`` only,
to load what it verified); never evaluation, defenses or serving: reports are read by
their schema. Nothing here imports torch except the model loading in ``safe_load``.

The names below are imported on first use, so ``import bastion.access`` stays cheap::

    from bastion.access import load_policy, load_verified, sign_model, verify_model
"""

from __future__ import annotations

_LAZY = {
    "load_verified": "bastion.access.safe_load",
    "ModelTrust": "bastion.access.safe_load",
    "sign_model": "bastion.access.signing",
    "verify_model": "bastion.access.signing",
    "attest_model": "bastion.access.attestation",
    "verify_attestation": "bastion.access.attestation",
    "scan_path": "bastion.access.pickle_scan",
    "load_policy": "bastion.access.policy_file",
    "policy_from_dict": "bastion.access.policy_file",
    "Policy": "bastion.access.policy",
    "Decision": "bastion.access.policy",
    "ScopeGrant": "bastion.access.policy",
    "issue_token": "bastion.access.tokens",
    "TokenVerifier": "bastion.access.tokens",
    "VerifiedToken": "bastion.access.tokens",
    "generate_private_key": "bastion.access.keys",
    "load_private_key": "bastion.access.keys",
    "load_public_key": "bastion.access.keys",
    "write_keypair": "bastion.access.keys",
    "load_signing_key": "bastion.access.envelope",
    "jwks_document": "bastion.access.jwks",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bastion.access' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
