"""bastion: adversarial robustness and model security for PyTorch classifiers."""

from bastion.errors import BastionError
from bastion.threat import ThreatModel

__version__ = "0.1.0"
__all__ = ["BastionError", "ThreatModel", "__version__"]
