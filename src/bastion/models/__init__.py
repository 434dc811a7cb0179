"""Loading and saving models: the bundled zoo, bundles, .pt2 programs, factories + safetensors."""

from bastion.models.architectures import ARCHITECTURES
from bastion.models.bundle import BundleMeta, load_bundle, save_bundle
from bastion.models.loading import LoadedModel, as_module, load_model
from bastion.models.zoo import ZOO, zoo_entries

__all__ = [
    "ARCHITECTURES", "BundleMeta", "LoadedModel", "ZOO", "as_module", "load_bundle", "load_model",
    "save_bundle", "zoo_entries",
]
