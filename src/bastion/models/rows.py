"""Fixed-size batches for models that want them (a graph exported with a fixed batch size, a compiled
model that should not recompile for every small batch)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with its last row repeated until it has ``rows`` rows (gradients still reach the real rows)."""
    if len(x) >= rows or not len(x):
        return x
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])])


def fixed_chunks(x: torch.Tensor, rows: int) -> Iterator[tuple[torch.Tensor, int]]:
    """``x`` in chunks of exactly ``rows`` rows (the last one padded), each with its count of real rows."""
    for chunk in x.split(rows):
        yield pad_rows(chunk, rows), len(chunk)
