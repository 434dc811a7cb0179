"""ONNX models: the torch conversion matches onnxruntime and the original (outputs, gradients, robust
accuracy), the runtime path is forward only, and hostile or unsupported files fail with one line."""

from __future__ import annotations

import json
import os

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from bench_helpers import write_suite
from onnx_helpers import LINEAR_BIAS, LINEAR_WEIGHT, Mixed, SmallResNet, export, graph_model, linear_graph

from bastion.attacks import get_attack
from bastion.cli import main
from bastion.data import load_data
from bastion.errors import GradientUnavailable, ModelError
from bastion.models import load_model
from bastion.models import onnx as onnx_module
from bastion.models.onnx import check_conversion
from bastion.models.onnx_graph import _affine
from bastion.models.onnx_ops import OPERATORS
from bastion.threat import ThreatModel


def _grad(module, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(x).logsumexp(1).sum(), x)
    return grad


@pytest.fixture(scope="module")
def mnist_test():
    return load_data("mnist", "test").take(50)


@pytest.fixture(scope="module")
def zoo_onnx(tmp_path_factory):
    return export(load_model("mnist-cnn-robust").module, tmp_path_factory.mktemp("zoo") / "robust.onnx", opset=17)


def test_zoo_export_gives_the_bundles_predictions_and_robust_accuracy(zoo_onnx, mnist_test):
    bundle = load_model("mnist-cnn-robust").module
    converted = load_model(zoo_onnx)
    assert converted.input_shape == (1, 28, 28) and converted.num_classes == 10 and converted.format == "onnx"
    [check] = check_conversion(converted.module, mnist_test.x)
    assert check.samples == 50 and check.max_abs_difference <= check.tolerance
    with torch.no_grad():
        assert torch.equal(converted.module(mnist_test.x).argmax(1), bundle(mnist_test.x).argmax(1))
    robust = []
    for module in (bundle, converted.module):
        attack = get_attack("pgd")(ThreatModel(norm="linf", eps=0.3), steps=10, seed=0)
        (result,) = attack.run(module, mnist_test.x, mnist_test.y)
        robust.append(result.robust)
    assert torch.equal(robust[0], robust[1])
    assert 0 < robust[0].float().mean() < 1  # the attack broke some samples and not others


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 22])
@pytest.mark.parametrize("net", [SmallResNet, Mixed])
def test_exports_at_several_opsets_match_torch_in_outputs_and_gradients(tmp_path, net, opset):
    torch.manual_seed(opset)
    module = net().eval()
    x = torch.rand(6, 1, 28, 28)
    for fold in (True, False):  # with constant folding the exporter keeps fewer nodes (no BatchNormalization)
        converted = load_model(export(module, tmp_path / f"m{fold}.onnx", opset=opset, fold=fold)).module
        with torch.no_grad():
            assert torch.allclose(converted(x), module(x), atol=1e-5)
        assert torch.allclose(_grad(converted, x), _grad(module, x), atol=1e-5)


def test_sizes_computed_from_the_batch_replace_the_shape_arithmetic(tmp_path):
    module = SmallResNet().eval()
    converted = load_model(export(module, tmp_path / "r.onnx", fold=False)).module
    ops = [step.op for step in converted.graph._steps]
    assert "Reshape" in ops and not {"Shape", "Gather", "Unsqueeze", "Concat"} & set(ops)
    for n in (1, 4, 7):
        x = torch.rand(n, 1, 28, 28)
        with torch.no_grad():
            assert torch.allclose(converted(x), module(x), atol=1e-5)
    assert _affine([torch.tensor([b, 16]) for b in (2, 3, 5)], (2, 3, 5)) == ((1, 0), (0, 16))
    assert _affine([torch.tensor(b * b) for b in (2, 3, 5)], (2, 3, 5)) is None  # not affine: left to run
    assert _affine([torch.tensor([1.0, 2.0])] * 3, (2, 3, 5)) is None


def test_sizes_that_only_look_affine_on_the_probes_are_computed_as_the_graph_says(tmp_path):
    # y = x[:Min(N, 5)]: a line through N = 2, 3, 5, not beyond. It must not be taken for N.
    zero = helper.make_tensor("zero", TensorProto.INT64, [1], [0])
    five = helper.make_tensor("five", TensorProto.INT64, [1], [5])
    model = graph_model([helper.make_node("Shape", ["x"], ["shape"]),
                         helper.make_node("Gather", ["shape", "zero"], ["batch"]),
                         helper.make_node("Min", ["batch", "five"], ["rows"]),
                         helper.make_node("Slice", ["x", "zero", "rows", "zero"], ["y"])],
                        initializers=[zero, five], output_shape=("M", 4))
    onnx.save(model, tmp_path / "min.onnx")
    converted = load_model(tmp_path / "min.onnx").module
    assert converted.graph._sizes == {}
    assert converted(torch.rand(10, 4)).shape == (5, 4)  # what onnxruntime computes too


def test_a_fixed_batch_export_runs_any_batch_size(tmp_path):
    module = SmallResNet().eval()
    converted = load_model(export(module, tmp_path / "fixed.onnx", dynamic_batch=False)).module
    for n in (1, 2, 5):
        x = torch.rand(n, 1, 28, 28)
        with torch.no_grad():
            assert torch.allclose(converted(x), module(x), atol=1e-5)
    runtime = load_model(tmp_path / "fixed.onnx", onnx_runtime=True).module
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(runtime(x), module(x), atol=1e-5)


def test_runtime_is_forward_only(zoo_onnx, mnist_test):
    loaded = load_model(zoo_onnx, onnx_runtime=True)
    assert loaded.format == "onnx-runtime"
    with torch.no_grad():
        assert torch.allclose(loaded.module(mnist_test.x), load_model("mnist-cnn-robust").module(mnist_test.x),
                              atol=1e-4)
    with pytest.raises(GradientUnavailable, match="no input gradients"):
        _grad(loaded.module, mnist_test.x[:2])
    with pytest.raises(RuntimeError):  # what the runner and the indicators catch for a model without gradients
        _grad(loaded.module, mnist_test.x[:2])


def test_cli_attacks_onnx_white_box_through_torch_and_black_box_on_onnxruntime(zoo_onnx):
    runner = CliRunner()
    white = runner.invoke(main, ["attack", "--model", str(zoo_onnx), "--attack", "pgd", "--eps", "0.3",
                                 "-p", "steps=5", "--n", "10", "--json"])
    assert white.exit_code == 0, white.output
    summary = json.loads(white.stdout)
    assert summary["runtime"] == "torch"
    assert summary["checks"][0]["check"] == "onnx conversion against onnxruntime"
    black = runner.invoke(main, ["attack", "--model", str(zoo_onnx), "--attack", "square", "--eps", "0.3",
                                 "-p", "n_queries=20", "--n", "10", "--json"])
    assert black.exit_code == 0, black.output
    assert json.loads(black.stdout)["runtime"] == "onnxruntime"
    refused = runner.invoke(main, ["attack", "--model", str(zoo_onnx), "--attack", "pgd", "--eps", "0.3",
                                   "--n", "4", "--onnx-runtime"])
    assert refused.exit_code == 2 and "no input gradients" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    not_onnx = runner.invoke(main, ["attack", "--attack", "pgd", "--eps", "0.3", "--n", "4", "--onnx-runtime"])
    assert not_onnx.exit_code == 2 and "not an ONNX model" in not_onnx.stderr


def _onnx_bundle(folder, onnx_file, input_shape=(1, 28, 28)):
    folder.mkdir(exist_ok=True)
    (folder / "model.onnx").write_bytes(onnx_file.read_bytes())
    (folder / "bastion.toml").write_text(f'name = "{folder.name}"\narchitecture = "onnx"\nformat = "onnx"\n'
                                         f'input_shape = {list(input_shape)}\nnum_classes = 10\n')
    return folder


def test_bench_on_an_onnx_bundle_records_the_conversion_check(tmp_path, zoo_onnx):
    bundle = _onnx_bundle(tmp_path / "robust-onnx", zoo_onnx)
    result = CliRunner().invoke(main, ["bench", "--model", str(bundle), "--suite", "quick", "--n", "8",
                                       "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    [check] = report["evaluation"]["checks"]
    assert check["check"] == "onnx conversion against onnxruntime" and check["samples"] == 8


def test_bench_runs_a_forward_only_suite_on_onnxruntime_and_flags_gradient_attacks_there(tmp_path, zoo_onnx):
    square = write_suite(tmp_path / "square.toml", '\n[[attack]]\nname = "square"\nn_queries = 30\n')
    black = CliRunner().invoke(main, ["bench", "--model", str(zoo_onnx), "--suite", square, "--n", "6",
                                      "--out", str(tmp_path / "black"), "--quiet"])
    assert black.exit_code == 0, black.output
    report = json.loads((tmp_path / "black" / "report.json").read_text())
    assert report["evaluation"]["checks"] == []  # nothing converted: onnxruntime itself is attacked
    assert not report["results"][0]["attacks"][0].get("error")
    white = CliRunner().invoke(main, ["bench", "--model", str(zoo_onnx), "--suite", "quick", "--n", "6",
                                      "--onnx-runtime", "--out", str(tmp_path / "white"), "--quiet"])
    assert white.exit_code == 0, white.output
    report = json.loads((tmp_path / "white" / "report.json").read_text())
    assert all("no input gradients" in a["error"] for a in report["results"][0]["attacks"])
    assert "gradients" in report["summary"]["indicators_fired"]
    verified = CliRunner().invoke(main, ["bench", "--model", str(zoo_onnx), "--onnx-runtime", "--verify-key",
                                         str(tmp_path / "key.pem"), "--out", str(tmp_path / "v")])
    assert verified.exit_code == 2 and "--onnx-runtime" in verified.stderr  # verified bundles run converted


def test_an_onnx_bundle_is_signed_and_loaded_verified_like_others(tmp_path, zoo_onnx):
    from bastion.access import load_verified
    from bastion.access.keys import generate_private_key
    from bastion.access.signing import sign_model
    from bastion.errors import VerificationError

    bundle = _onnx_bundle(tmp_path / "b", zoo_onnx)
    key = generate_private_key("ec-p256")
    sign_model(bundle, key)
    assert load_verified(bundle, key.public_key()).format == "onnx"
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-20] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(VerificationError):
        load_verified(bundle, key.public_key())


def test_bundle_input_shape_must_match_the_graph(tmp_path, zoo_onnx):
    with pytest.raises(ModelError, match="differs from the ONNX graph"):
        load_model(_onnx_bundle(tmp_path / "b", zoo_onnx, input_shape=(3, 32, 32)))


# ---- hostile and unsupported files ------------------------------------------------------------
def _refused(path, match: str):
    with pytest.raises(ModelError, match=match) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(main, ["attack", "--model", str(path), "--attack", "pgd", "--eps", "0.1", "--n", "2"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_garbage_empty_and_random_bytes_are_refused(tmp_path):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffnot a protobuf at all" * 20)
    _refused(tmp_path / "garbage.onnx", "not an ONNX model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _refused(tmp_path / "empty.onnx", "not an ONNX model")
    (tmp_path / "random.onnx").write_bytes(os.urandom(4096))
    _refused(tmp_path / "random.onnx", "not an ONNX model")


def test_unknown_custom_and_unconverted_operators_are_named(tmp_path):
    onnx.save(graph_model([helper.make_node("FooBar", ["x"], ["y"], name="n0")]), tmp_path / "unknown.onnx")
    _refused(tmp_path / "unknown.onnx", "node 'n0' uses operator 'FooBar', which is not an ONNX operator")
    evil = graph_model([helper.make_node("Evil", ["x"], ["y"], name="e0", domain="com.evil")])
    evil.opset_import.append(helper.make_opsetid("com.evil", 1))
    onnx.save(evil, tmp_path / "custom.onnx")
    _refused(tmp_path / "custom.onnx", "custom operator com.evil.Evil")
    onnx.save(graph_model([helper.make_node("Round", ["x"], ["y"], name="r0")], output_shape=("N", 4)),
              tmp_path / "round.onnx")
    _refused(tmp_path / "round.onnx", "node 'r0' uses operator Round, which bastion cannot convert")
    runtime = load_model(tmp_path / "round.onnx", onnx_runtime=True).module  # a standard op onnxruntime runs
    assert torch.equal(runtime(torch.tensor([[0.4, 1.6, 2.2, 3.0]])), torch.tensor([[0.0, 2.0, 2.0, 3.0]]))


def test_unsupported_attribute_values_and_opsets_are_named(tmp_path):
    shape = helper.make_tensor("s", TensorProto.INT64, [4], [-1, 1, 2, 2])
    pooled = graph_model([helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
                          helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], storage_order=1, name="mp"),
                          helper.make_node("Flatten", ["p"], ["y"], name="flat")],
                         initializers=[shape], output_shape=("N", 1))
    onnx.save(pooled, tmp_path / "pool.onnx")
    _refused(tmp_path / "pool.onnx", r"node 'mp' \(MaxPool\): storage_order 1")
    for opset, word in ((5, "outside"), (30, "outside")):
        model = linear_graph()
        model.opset_import[0].version = opset
        onnx.save(model, tmp_path / f"opset{opset}.onnx")
        _refused(tmp_path / f"opset{opset}.onnx", f"opset {opset} is {word} the 7-22")


def test_dynamic_sizes_two_inputs_and_integer_inputs_are_refused(tmp_path):
    export(SmallResNet(), tmp_path / "dyn.onnx", dynamic_axes={"x": {0: "N", 2: "H"}})
    _refused(tmp_path / "dyn.onnx", "dimension 2 is 'H'")
    two = graph_model([helper.make_node("Add", ["x", "z"], ["y"])], output_shape=("N", 4),
                      inputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in ("x", "z")])
    onnx.save(two, tmp_path / "two.onnx")
    _refused(tmp_path / "two.onnx", "2 inputs")
    ints = graph_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], output_shape=("N", 4),
                       inputs=[helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])])
    onnx.save(ints, tmp_path / "ints.onnx")
    _refused(tmp_path / "ints.onnx", "is INT64")


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path, monkeypatch):
    onnx.save(linear_graph(), tmp_path / "big.onnx")
    monkeypatch.setattr(onnx_module, "MAX_FILE_BYTES", 64)
    with pytest.raises(ModelError, match="more than the 64 bytes bastion reads"):
        load_model(tmp_path / "big.onnx")


def test_a_hostile_shape_cannot_exhaust_memory(tmp_path):
    huge = helper.make_tensor("shape", TensorProto.INT64, [2], [1 << 20, 1 << 20])
    model = graph_model([helper.make_node("ConstantOfShape", ["shape"], ["big"], name="fill"),
                         helper.make_node("Add", ["x", "big"], ["y"], name="add")], output_shape=("N", 4),
                        initializers=[huge])
    onnx.save(model, tmp_path / "huge.onnx")
    _refused(tmp_path / "huge.onnx", r"node 'fill' \(ConstantOfShape\): would create a tensor")


def _with_external_data(tmp_path, location: str | None = None):
    """linear_graph() with its weights in weights.bin beside the model; optionally re-pointed at ``location``."""
    path = tmp_path / "ext.onnx"
    onnx.save_model(linear_graph(), path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    if location is not None:
        model = onnx.load(path, load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        path.write_bytes(model.SerializeToString())  # not onnx.save_model: it would write the external data
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    path = _with_external_data(tmp_path)
    assert onnx.load(path, load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    x = torch.rand(3, 4)
    expected = x @ LINEAR_WEIGHT + LINEAR_BIAS
    assert torch.allclose(load_model(path).module(x), expected, atol=1e-6)
    assert torch.allclose(load_model(path, onnx_runtime=True).module(x), expected, atol=1e-6)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", ""])
def test_external_data_pointing_outside_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(bytes(64))
    path = _with_external_data(folder, location)
    _refused(path, "not a plain relative path inside the model's folder")


def test_external_data_through_a_symlink_out_or_past_its_file_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _with_external_data(folder)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    (folder / "weights.bin").unlink()
    (folder / "weights.bin").symlink_to(tmp_path / "outside.bin")
    _refused(path, "leads outside the model's folder")
    (folder / "weights.bin").unlink()
    (folder / "weights.bin").write_bytes(bytes(8))  # shorter than the offsets the model names
    _refused(path, "lie outside the file")


def test_a_conversion_that_disagrees_with_onnxruntime_is_refused(tmp_path, monkeypatch):
    onnx.save(linear_graph(), tmp_path / "lin.onnx")
    monkeypatch.setitem(OPERATORS, "Add", lambda node: (lambda a, b: a + 1.01 * b))
    with pytest.raises(ModelError, match="disagrees with onnxruntime"):
        load_model(tmp_path / "lin.onnx")


def test_models_lists_what_onnx_files_may_hold():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0
    assert "opsets 7-22" in result.stdout and "Conv" in result.stdout and "--onnx-runtime" in result.stdout
