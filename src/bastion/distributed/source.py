"""What every process of a distributed run loads: the same model reference, verified where the driver verified it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from bastion.access.keys import load_public_key, public_pem
from bastion.access.safe_load import load_verified
from bastion.models import load_model
from bastion.models.loaded import LoadedModel
from bastion.models.zoo import ZOO, zoo_path


@dataclass(frozen=True)
class ModelSource:
    """A model reference (zoo name, bundle directory, ``.pt2`` file, or ``package.module:factory`` with
    ``weights``) and, when the run verifies it, the trusted public key (PEM).

    A value, sent as is to every worker: each one calls :meth:`load`, so each resolves the same
    reference the same way, and with a key each verifies the signature itself before loading
    (never unverified bytes). Paths must reach the same files on every host (a shared file
    system, or the same install); the workers also check that the model they loaded has the
    driver's digest.
    """

    ref: str
    weights: str | None = None
    trust_code: bool = False
    verify_key: bytes | None = None  # PEM of the trusted public key; None: load without verifying

    @classmethod
    def resolve(cls, ref: str, *, weights: str | Path | None = None, trust_code: bool = False,
                verify_key: str | Path | None = None) -> ModelSource:
        """The source for a reference as a user wrote it: existing paths made absolute (workers run in
        other directories), the key file read once, here."""
        pem = public_pem(load_public_key(verify_key)) if verify_key is not None else None
        return cls(ref=_absolute(str(ref)), weights=_absolute(str(weights)) if weights is not None else None,
                   trust_code=trust_code, verify_key=pem)

    @property
    def verified(self) -> bool:
        return self.verify_key is not None

    def load(self, device: str = "cpu") -> LoadedModel:
        """Load the model on ``device``: with a key, only after its signature verified (``load_verified``)."""
        if self.verify_key is None:
            return load_model(self.ref, weights=self.weights, device=device, trust_code=self.trust_code)
        key = serialization.load_pem_public_key(self.verify_key)
        if self.weights is not None:  # a signed .safetensors file for a factory architecture
            loaded = load_verified(self.weights, key, architecture=self.ref, trust_code=True, device=device)
            loaded.name = self.ref
            return loaded
        path = zoo_path(self.ref) if self.ref in ZOO else Path(self.ref)
        return load_verified(path, key, trust_code=self.trust_code, device=device)


def _absolute(ref: str) -> str:
    # A zoo name stays a name even where a folder of that name exists (the loader looks names up first).
    if ref in ZOO or not Path(ref).exists():
        return ref
    return str(Path(ref).resolve())
