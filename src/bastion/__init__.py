"""bastion: adversarial robustness and model security for PyTorch classifiers.

``import bastion`` stays light (no torch): :class:`~bastion.threat.ThreatModel` is
imported on first use, so commands and services that run no model never load torch.
"""

from bastion.errors import BastionError
from bastion.models.wrappers import declare_bundle_wrapper

# The composition root wires the layers: a bundle with a [sanitizer] section is opened by the
# defenses layer, imported the first time such a bundle loads (models cannot import it).
declare_bundle_wrapper("sanitizer", "bastion.defenses.sanitizer")

__version__ = "0.1.0"
__all__ = ["BastionError", "ThreatModel", "__version__"]


def __getattr__(name: str):
    if name == "ThreatModel":
        from bastion.threat import ThreatModel  # imports torch

        return ThreatModel
    raise AttributeError(f"module 'bastion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
