import numpy as np
import pytest
import torch

from bastion.data import load_data
from bastion.errors import DataError


def test_bundled_mnist_splits_are_stratified():
    train, test = load_data("mnist", "train"), load_data("mnist", "test")
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [400] * 10
    assert torch.bincount(test.y).tolist() == [100] * 10
    assert train.x.dtype == torch.float32 and 0 <= test.x.min() and test.x.max() <= 1
    # no image is in both splits
    train_set = {bytes(row) for row in (train.x * 255).round().to(torch.uint8).flatten(1).numpy()}
    assert not any(bytes(row) in train_set for row in (test.x * 255).round().to(torch.uint8).flatten(1).numpy())


def test_digits():
    d = load_data("digits", "test")
    assert d.x.shape[1:] == (1, 8, 8) and d.num_classes == 10 and len(d) == 359


def test_npz_and_pt_round_trip(tmp_path):
    x = np.random.rand(5, 1, 4, 4).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "d.pt")
    for name in ("d.npz", "d.pt"):
        d = load_data(tmp_path / name)
        assert torch.allclose(d.x, torch.from_numpy(x)) and d.y.tolist() == y.tolist()


def test_uint8_images_are_scaled(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.full((2, 3, 3), 255, np.uint8), y=np.array([0, 1]))
    d = load_data(tmp_path / "u.npz")
    assert d.x.shape == (2, 1, 3, 3) and d.x.max() == 1.0


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((2, 2, 2, 2, 2), np.float32), "y": np.array([0, 1])}, "shape"),
    ({"x": np.zeros((2, 1, 2, 2), np.float32), "y": np.array([0, 1, 1])}, "2 samples but y has 3"),
    ({"x": np.full((2, 1, 2, 2), np.nan, np.float32), "y": np.array([0, 1])}, "NaN or Inf"),
    ({"x": np.full((2, 1, 2, 2), np.inf, np.float32), "y": np.array([0, 1])}, "NaN or Inf"),
    ({"x": np.full((2, 1, 2, 2), 3.0, np.float32), "y": np.array([0, 1])}, "outside the declared bounds"),
    ({"x": np.zeros((2, 1, 2, 2), np.float32), "y": np.array([0, -1])}, ">= 0"),
    ({"x": np.zeros((2, 1, 2, 2), np.float32), "y": np.array([0.5, 1.0])}, "integer"),
    ({"x": np.zeros((0, 1, 2, 2), np.float32), "y": np.array([], np.int64)}, "empty"),
    ({"images": np.zeros((2, 1, 2, 2), np.float32), "labels": np.array([0, 1])}, "expected arrays 'x' and 'y'"),
    ({"x": np.array(["a", "b"]), "y": np.array([0, 1])}, "must hold numbers"),
])
def test_bad_npz_is_rejected(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        load_data(_npz(tmp_path / "bad.npz", **arrays))


def test_labels_out_of_range(tmp_path):
    path = _npz(tmp_path / "d.npz", x=np.zeros((2, 1, 2, 2), np.float32), y=np.array([0, 12]))
    with pytest.raises(DataError, match="out of range for 10 classes"):
        load_data(path, num_classes=10)


@pytest.mark.parametrize("content", [b"", b"not a zip at all"])
def test_empty_or_corrupt_file(tmp_path, content):
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    with pytest.raises(DataError):
        load_data(path)


def test_object_arrays_are_not_unpickled(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, x=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="unpickling"):
        load_data(path)


def test_pt_with_code_is_refused(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Evil(), "y": 1}))
    with pytest.raises(DataError, match="weights_only"):
        load_data(path)


def test_unknown_reference():
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("cifar10")
    with pytest.raises(DataError, match="no such file"):
        load_data("missing.npz")
