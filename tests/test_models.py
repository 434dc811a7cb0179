import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bastion.data import load_data
from bastion.errors import ModelError
from bastion.models import BundleMeta, load_bundle, load_model, save_bundle
from bastion.models.architectures import digits_cnn


def _input_grad(module, x, y):
    x = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(module(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def test_zoo_model_is_accurate_and_in_eval_mode():
    loaded = load_model("mnist-cnn")
    assert not loaded.module.training
    test = load_data("mnist", "test").take(300)
    with torch.no_grad():
        acc = (loaded.module(test.x).argmax(1) == test.y).float().mean().item()
    assert acc > 0.95
    assert loaded.input_shape == (1, 28, 28) and loaded.num_classes == 10


def test_bundle_round_trip(tmp_path):
    model = digits_cnn()
    meta = BundleMeta(name="d", architecture="digits-cnn", input_shape=[1, 8, 8], num_classes=10,
                      training={"recipe": "clean", "metrics": {"acc": 0.5}})
    save_bundle(model, tmp_path / "b", meta)
    loaded = load_model(tmp_path / "b")
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(loaded.module(x), model(x))
    assert loaded.meta.training["metrics"]["acc"] == 0.5
    assert not list(tmp_path.glob("b/.*.tmp"))


def test_pt2_program_gives_the_same_input_gradients(tmp_path):
    eager = load_model("mnist-cnn").module
    program = torch.export.export(eager, (torch.rand(2, 1, 28, 28),),
                                  dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    x, y = torch.rand(5, 1, 28, 28), torch.arange(5)
    assert torch.allclose(_input_grad(loaded.module, x, y), _input_grad(eager, x, y), atol=1e-6)


def test_factory_with_safetensors_and_weights_only_pt(tmp_path):
    from tests.fixtures_pkg.tiny import tiny_mlp

    reference = tiny_mlp()
    save_file(reference.state_dict(), tmp_path / "w.safetensors")
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    x = torch.rand(3, 1, 4, 4)
    for weights in ("w.safetensors", "w.pt"):
        loaded = load_model("tests.fixtures_pkg.tiny:tiny_mlp", weights=tmp_path / weights)
        assert torch.equal(loaded.module(x), reference(x))
        assert _input_grad(loaded.module, x, torch.tensor([0, 1, 2])).abs().sum() > 0


def test_factory_needs_weights_and_matching_shapes(tmp_path):
    with pytest.raises(ModelError, match="needs --weights"):
        load_model("tests.fixtures_pkg.tiny:tiny_mlp")
    save_file({"bogus": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="do not fit"):
        load_model("tests.fixtures_pkg.tiny:tiny_mlp", weights=tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("no_such_pkg.mod:f", weights=tmp_path / "w.safetensors")


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_pickles_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ModelError, match="pickled checkpoint"):
        load_model(path)
    with pytest.raises(ModelError, match="weights_only"):
        load_model("tests.fixtures_pkg.tiny:tiny_mlp", weights=path)


def test_bundle_architecture_importing_code_needs_trust(tmp_path):
    from tests.fixtures_pkg.tiny import tiny_mlp

    save_bundle(tiny_mlp(), tmp_path / "b", BundleMeta(name="t", architecture="tests.fixtures_pkg.tiny:tiny_mlp",
                                                       input_shape=[1, 4, 4], num_classes=3))
    with pytest.raises(ModelError, match="would import code"):
        load_bundle(tmp_path / "b")
    assert load_bundle(tmp_path / "b", trust_code=True).name == "t"


@pytest.mark.parametrize("toml, message", [
    ("name = 'x'\n", "missing key"),
    ("name = \n", "malformed TOML"),
    ("name='x'\narchitecture='mnist-cnn'\ninput_shape=[1,28,28]\nnum_classes=10\nevil='y'\n", "unknown key"),
    ("name='x'\narchitecture='resnet'\ninput_shape=[1,28,28]\nnum_classes=10\n", "unknown architecture"),
    ("name='x'\narchitecture='mnist-cnn'\ninput_shape=[1,28,28]\nnum_classes=10\nformat='pickle'\n", "format"),
])
def test_bad_bundles(tmp_path, toml, message):
    (tmp_path / "bastion.toml").write_text(toml)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path)


def test_corrupt_weights(tmp_path):
    save_bundle(digits_cnn(), tmp_path, BundleMeta(name="d", architecture="digits-cnn", input_shape=[1, 8, 8],
                                                   num_classes=10))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_model(tmp_path)


def test_unknown_references():
    with pytest.raises(ModelError, match="unknown model"):
        load_model("resnet50")
    with pytest.raises(ModelError, match="no such file"):
        load_model("missing/model.pt2")


def test_art_classifier_is_unwrapped():
    from art.estimators.classification import PyTorchClassifier

    from bastion.models import as_module

    module = digits_cnn()
    clf = PyTorchClassifier(model=module, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                            clip_values=(0.0, 1.0))
    assert as_module(clf) is module and not module.training
