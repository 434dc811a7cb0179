"""What a benchmark attacks: the model and the samples, with the digests that identify them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from bastion.evaluation.state import data_digest, model_digest


@dataclass(frozen=True)
class BenchInputs:
    """What a benchmark attacks: a model in eval mode and the samples, on the model's device.

    ``index`` holds each sample's global index in the run (default ``0..n-1``); a shard of a
    run (:meth:`shard`) keeps the global indices and the digests of the whole run. The
    digests are computed once, here, when not given.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    bounds: tuple[float, float]
    num_classes: int
    index: torch.Tensor | None = None
    total: int | None = None          # samples in the whole run (default: len(y))
    model_sha256: str = field(default="", repr=False)
    data_sha256: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.index is None:
            object.__setattr__(self, "index", torch.arange(len(self.y)))
        object.__setattr__(self, "index", self.index.cpu().long())
        if self.total is None:
            object.__setattr__(self, "total", len(self.y))
        if not self.model_sha256:
            object.__setattr__(self, "model_sha256", model_digest(self.model))
        if not self.data_sha256:
            object.__setattr__(self, "data_sha256", data_digest(self.x, self.y))

    def shard(self, positions: torch.Tensor) -> BenchInputs:
        """The samples at ``positions`` (ascending) of these inputs, as a shard of the same run."""
        positions = positions.cpu().long()
        on_device = positions.to(self.x.device)
        return replace(self, x=self.x[on_device], y=self.y[on_device], index=self.index[positions])

    def positions(self, global_indices: list[int]) -> torch.Tensor:
        """Where samples with these global indices sit in ``x`` (on its device)."""
        wanted = torch.tensor(global_indices, dtype=torch.long)
        return torch.searchsorted(self.index, wanted).to(self.x.device)
