"""Access control: keys, signed artifacts, attestations, safe loading, caller tokens and policies."""

from __future__ import annotations

# Imported on first use, so `import bastion.access` stays cheap for commands that need none of it.
_LAZY = {
    "load_verified": "bastion.access.safe_load",
    "ModelTrust": "bastion.access.safe_load",
    "sign_model": "bastion.access.signing",
    "verify_model": "bastion.access.signing",
    "attest_model": "bastion.access.attestation",
    "verify_attestation": "bastion.access.attestation",
    "scan_path": "bastion.access.pickle_scan",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bastion.access' has no attribute {name!r}")
