"""bastion: adversarial robustness and model security for PyTorch classifiers."""

from bastion.errors import BastionError
from bastion.models.wrappers import declare_bundle_wrapper
from bastion.threat import ThreatModel

# The composition root wires the layers: a bundle with a [sanitizer] section is opened by the
# defenses layer, imported the first time such a bundle loads (models cannot import it).
declare_bundle_wrapper("sanitizer", "bastion.defenses.sanitizer")

__version__ = "0.1.0"
__all__ = ["BastionError", "ThreatModel", "__version__"]
