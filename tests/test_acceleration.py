"""--compile, --channels-last, --bf16: checked against fp32 eager before use, refused when they disagree,
and never the judge: every adversarial is re-checked on the fp32 eager model."""

from __future__ import annotations

import json

import pytest
import torch
from bench_helpers import Reversed, linear_model, loaded, self_labelled, write_suite
from click.testing import CliRunner
from torch import nn

from bastion.attacks import get_attack
from bastion.cli import main
from bastion.data import load_data
from bastion.errors import ModelError, UsageError
from bastion.evaluation import benchmark, load_suite
from bastion.evaluation.inputs import BenchInputs
from bastion.evaluation.runner import confirm_adversarial, run_suite
from bastion.models import acceleration, load_model
from bastion.models.acceleration import Acceleration, AcceleratedModule, accelerate, reference_of
from bastion.threat import ThreatModel


def _grad(module, x, y):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(module(x), y), x)
    return grad


@pytest.fixture(scope="module")
def zoo():
    return load_model("mnist-cnn").module, load_data("mnist", "test").take(64)


@pytest.mark.parametrize("options", [Acceleration(channels_last=True), Acceleration(bf16=True),
                                     Acceleration(channels_last=True, bf16=True)])
def test_channels_last_and_bf16_agree_with_eager_and_keep_gradients(zoo, options):
    model, data = zoo
    fast = accelerate(model, data.x, options)
    assert isinstance(fast, AcceleratedModule) and reference_of(fast) is model
    assert [c.agreeing for c in fast.checks] == [64] * len(options.names)
    out = fast(data.x[:5])
    assert out.dtype == torch.float32 and out.shape == (5, 10)
    eager, accelerated = _grad(model, data.x, data.y), _grad(fast, data.x, data.y)
    if options.bf16:  # bfloat16 keeps 8 bits of mantissa: the direction survives, not the digits
        cosine = nn.functional.cosine_similarity(eager.flatten(), accelerated.flatten(), dim=0)
        assert cosine > 0.98
    else:
        assert torch.allclose(eager, accelerated, atol=1e-6)
    assert all(not p.requires_grad for p in model.parameters())


def test_nothing_asked_returns_the_model_itself(zoo):
    model, data = zoo
    assert accelerate(model, data.x, Acceleration()) is model


class _Tie(nn.Module):
    """Two logits 1000 + s and 1000 - s with |s| < 0.01: fp32 tells them apart, bf16 (8 bits) rounds both
    to 1000, so under autocast every prediction becomes class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.stack([torch.full((16,), 1e-3), torch.full((16,), -1e-3)]))
            self.linear.bias.fill_(1000.0)

    def forward(self, x):
        return self.linear(x.flatten(1) - 0.5)


def test_bf16_is_refused_when_its_predictions_disagree():
    model = _Tie().eval()
    x = torch.rand(200, 1, 4, 4)
    assert 0 < model(x).argmax(1).float().mean() < 1  # fp32 predicts both classes
    with pytest.raises(ModelError, match=r"--bf16: predictions agree with fp32 eager on \d+ of 200 samples"):
        accelerate(model, x, Acceleration(bf16=True))


def test_a_compiled_model_that_disagrees_is_refused(monkeypatch):
    model = linear_model()
    x = torch.rand(50, 1, 4, 4)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: _Negated(module))
    with pytest.raises(ModelError, match=r"--compile: predictions agree with fp32 eager on \d+ of 50"):
        accelerate(model, x, Acceleration(compile=True))


def test_a_compiled_model_whose_gradients_differ_from_eager_is_refused(monkeypatch):
    model = linear_model()
    x = torch.rand(50, 1, 4, 4)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: Reversed(module))  # a miscompiled backward
    with pytest.raises(ModelError, match=r"--compile: input gradients differ from fp32 eager under it \(max difference"):
        accelerate(model, x, Acceleration(compile=True))


def test_a_compiler_failure_and_a_missing_compiler_are_one_line(monkeypatch):
    model = linear_model()
    x = torch.rand(8, 1, 4, 4)

    def broken(module, **kw):
        def fail(*args):
            raise RuntimeError("backend exploded\nwith a long trace")
        return fail
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(ModelError, match=r"--compile: the model fails under it \(RuntimeError: backend exploded\)"):
        accelerate(model, x, Acceleration(compile=True))
    monkeypatch.setattr(acceleration, "_cxx_compiler", lambda: None)
    with pytest.raises(ModelError, match="needs a C\\+\\+ compiler"):
        accelerate(model, x, Acceleration(compile=True))


def test_bf16_where_the_device_has_none_is_refused(monkeypatch):
    monkeypatch.setattr(acceleration, "bf16_supported", lambda device: False)
    with pytest.raises(ModelError, match="--bf16: the cpu device has no bfloat16 autocast"):
        accelerate(linear_model(), torch.rand(4, 1, 4, 4), Acceleration(bf16=True))


class _Negated(nn.Module):
    """A sabotaged fast path: the opposite of the model's logits, so it misclassifies everything."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return -self.inner(x)


class _WrongOffGrid(_Negated):
    """A sabotaged fast path that is right on 8-bit images (the clean data) and wrong on anything between
    (every perturbed input): what an acceleration that fails only near adversarials would look like."""

    def forward(self, x):
        off_grid = ((x * 255 - (x * 255).round()).abs() > 1e-3).flatten(1).any(dim=1)
        logits = self.inner(x)
        return torch.where(off_grid[:, None], -logits, logits)


def _grid_data(model, n=24):
    """8-bit inputs labelled by the model, each at least 0.05 from its decision boundary (in logits)."""
    x = (torch.rand(20 * n, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 255).round() / 255
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1)
    clear = (top2.values[:, 0] - top2.values[:, 1]) > 0.05
    return x[clear][:n], top2.indices[clear][:n, 0]


def test_the_recheck_of_record_uses_the_fp32_eager_reference(tmp_path):
    model = linear_model()
    x, y = _grid_data(model)
    sabotaged = AcceleratedModule(model, _WrongOffGrid(model), Acceleration(bf16=True))
    threat = ThreatModel(norm="linf", eps=0.1)
    # The fast path calls any perturbed input misclassified; the reference does not: not confirmed.
    assert not confirm_adversarial(sabotaged, threat, 0.1, x, y, x + 0.001).any()
    suite = load_suite(write_suite(tmp_path / "s.toml", '[[attack]]\nname = "fgsm"\n[[attack]]\nname = "pgd"\n'
                                   'steps = 5\n', eps="0.001"))
    plain = run_suite(BenchInputs(model, x, y, (0.0, 1.0), 4), suite, seed=0, run_indicators=False)
    assert not any(unit.broken for unit in plain.units)  # too small an eps to break this model
    state = run_suite(BenchInputs(sabotaged, x, y, (0.0, 1.0), 4), suite, seed=0, run_indicators=False)
    assert len(state.clean_correct) == 24  # clean accuracy from the reference
    assert not any(unit.broken for unit in state.units)  # what the fast path "broke" failed the fp32 re-check
    assert state.units[0].unconfirmed == 24


def test_bastion_attack_rechecks_in_fp32(monkeypatch):
    from bastion.models import preparation

    monkeypatch.setattr(preparation, "accelerate",
                        lambda module, x, options, **kw: AcceleratedModule(module, _WrongOffGrid(module), options))
    result = CliRunner().invoke(main, ["attack", "--attack", "fgsm", "--eps", "0.01", "--n", "20", "--bf16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["accelerations"] == ["bf16"]
    [eps] = summary["results"]
    # The sabotaged model "breaks" every sample; fp32 eager confirms none of the claims at eps 0.01.
    assert eps["unconfirmed"] > 15 and eps["robust_accuracy"] == summary["clean_accuracy"] > 0.9


def test_the_report_records_the_accelerations_and_keeps_the_models_digest(tmp_path):
    model = linear_model()
    data = self_labelled(model, n=20)
    suite = load_suite(write_suite(tmp_path / "s.toml", '[[attack]]\nname = "fgsm"\n', eps="0.1"))
    plain = benchmark(loaded(model), data, suite)
    fast = benchmark(loaded(model), data, suite, out_dir=tmp_path / "run",
                     acceleration=Acceleration(channels_last=True))
    assert plain["evaluation"] == {"accelerations": [], "checks": []}
    assert fast["evaluation"]["accelerations"] == ["channels-last"]
    assert fast["evaluation"]["checks"][0]["agreeing"] == 20
    assert fast["model"]["sha256"] == plain["model"]["sha256"]
    assert fast["summary"]["robust_accuracy"] == plain["summary"]["robust_accuracy"]
    assert "- accelerations: channels-last" in (tmp_path / "run" / "report.md").read_text()


def test_an_executor_whose_workers_load_the_model_themselves_refuses_accelerations():
    class Elsewhere:  # any executor but the local one: its workers would evaluate the model unaccelerated
        pass
    data = load_data("mnist", "test").take(4)
    with pytest.raises(UsageError, match="--bf16 applies to the local executor"):
        benchmark(load_model("mnist-cnn"), data, load_suite("quick"), executor=Elsewhere(),
                  acceleration=Acceleration(bf16=True))


def test_bench_cli_takes_the_flags_and_a_refusal_is_one_line(tmp_path, monkeypatch):
    ok = CliRunner().invoke(main, ["bench", "--model", "mnist-cnn", "--suite", "quick", "--n", "6", "--channels-last",
                                   "--out", str(tmp_path / "r"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["evaluation"]["accelerations"] == ["channels-last"]
    monkeypatch.setattr(acceleration, "bf16_supported", lambda device: False)
    refused = CliRunner().invoke(main, ["bench", "--model", "mnist-cnn", "--suite", "quick", "--n", "6", "--bf16",
                                        "--out", str(tmp_path / "r2")])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and "--bf16" in refused.stderr
    compared = CliRunner().invoke(main, ["bench", "--compare", str(tmp_path / "r"), str(tmp_path / "r"), "--compile"])
    assert compared.exit_code == 2 and "--compile" in compared.stderr  # it applies to a run, not to --compare


@pytest.mark.slow
def test_a_compiled_model_keeps_input_gradients_and_handles_every_batch_size():
    # As small as a convolutional model gets: compiling costs per kernel, and inductor's cache is cold in CI.
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 10
    fast = accelerate(model, x, Acceleration(compile=True))
    for n in (40, 5, 1):  # smaller than the padded minimum too
        with torch.no_grad():
            assert torch.allclose(fast(x[:n]), model(x[:n]), atol=1e-5)
        assert torch.allclose(_grad(fast, x[:n], y[:n]), _grad(model, x[:n], y[:n]), atol=1e-6)
    attack = get_attack("pgd")(ThreatModel(norm="linf", eps=0.1), steps=3, seed=0)
    (on_fast,) = attack.run(fast, x, y)
    (on_eager,) = get_attack("pgd")(ThreatModel(norm="linf", eps=0.1), steps=3, seed=0).run(model, x, y)
    assert torch.allclose(on_fast.x_adv, on_eager.x_adv, atol=1e-4)
