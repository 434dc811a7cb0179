"""The attack contract: one declared parameter schema per attack, checked in one place for suites,
`bastion attack -p` and constructors alike; query counting owned by the base (the ART adapter's too)."""

from __future__ import annotations

import inspect

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import bastion.attacks
from bastion.attacks import ATTACKS, get_attack
from bastion.attacks.params import MAX_QUERIES, MAX_RESTARTS, MAX_STEPS
from bastion.cli import main
from bastion.errors import AttackError, ConfigError
from bastion.evaluation.suite import load_suite
from bastion.threat import ThreatModel

#: (attack, parameter, a bad value as TOML, the same as a -p value, words of the error)
BAD_VALUES = [
    ("pgd", "steps", "true", "true", "steps must be an integer from 1 to 10,000, got true"),
    ("pgd", "steps", "1.5", "1.5", "got 1.5"),
    ("pgd", "steps", "1000000000000000000", "1e18", "steps must be an integer from 1 to 10,000"),
    ("pgd", "restarts", "101", "101", "restarts must be an integer from 1 to 100"),
    ("pgd", "random_start", "1", "1", "random_start must be true or false, got 1"),
    ("apgd-ce", "rho", "true", "true", "rho must be a number in (0, 1]"),
    ("apgd-t", "n_target_classes", "1e9", "1e9", "n_target_classes must be an integer"),
    ("square", "n_queries", "100001", "100001", "n_queries must be an integer from 1 to 100,000"),
    ("cw-l2", "binary_search_steps", "1000", "1000", "binary_search_steps must be an integer from 1 to 100"),
    ("fab-t", "steps", '"100"', '"100"', "steps must be an integer"),
]


@pytest.mark.parametrize("name, key, toml, _cli, words", BAD_VALUES)
def test_suite_refuses_bad_types_and_budgets_in_one_line_naming_file_line_and_key(tmp_path, name, key, toml,
                                                                                    _cli, words):
    norm = "l2" if name == "cw-l2" else "linf"
    path = tmp_path / "suite.toml"
    path.write_text(f'norm = "{norm}"\neps = 0.3\n\n[[attack]]\nname = "{name}"\n{key} = {toml}\n')
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}:6: attack {name!r}: bad parameter value: ") and "\n" not in message
    assert words in message and message.endswith(f"(key {key!r})")


@pytest.mark.parametrize("name, key, _toml, cli, words", BAD_VALUES)
def test_attack_command_refuses_the_same_values_in_one_line_naming_the_parameter(name, key, _toml, cli, words):
    norm = "l2" if name == "cw-l2" else "linf"
    result = CliRunner().invoke(main, ["attack", "--attack", name, "--norm", norm, "--eps", "0.1", "--n", "2",
                                       "-p", f"{key}={cli}"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: --param: {name}: {key} must be ") and words.split(",")[0] in result.output
    assert result.output.count("\n") == 1


def test_unknown_parameters_list_what_the_attack_takes(tmp_path):
    result = CliRunner().invoke(main, ["attack", "--attack", "pgd", "--eps", "0.1", "-p", "stepz=3"])
    assert result.exit_code == 2
    assert "pgd has no parameter 'stepz' (it takes steps, step_size, restarts, random_start)" in result.output
    result = CliRunner().invoke(main, ["attack", "--attack", "pgd", "--eps", "0.1", "-p", "seed=3"])
    assert result.exit_code == 2 and "--seed" in result.output


def test_constructors_check_through_the_same_schema():
    threat = ThreatModel(eps=0.1)
    for params in ({"steps": True}, {"steps": 2.0}, {"steps": MAX_STEPS + 1}, {"restarts": MAX_RESTARTS + 1},
                   {"stepz": 1}, {"batch_size": 0}, {"seed": 1.5}):
        with pytest.raises(AttackError, match="pgd"):
            get_attack("pgd")(threat, **params)
    with pytest.raises(AttackError, match="100,000"):
        get_attack("square")(threat, n_queries=MAX_QUERIES + 1)
    pgd = get_attack("pgd")(threat, steps=7, step_size=None)
    assert (pgd.steps, pgd.step_size, pgd.random_start) == (7, None, True)
    assert get_attack("apgd-ce")(threat, rho=1).rho == 1.0 and isinstance(get_attack("apgd-ce")(threat, rho=1).rho, float)


def test_every_attack_declares_its_parameters_and_reports_them():
    for name, cls in ATTACKS.items():
        norm = cls.norms[0]
        attack = cls(ThreatModel(norm=norm, eps=0.1))
        params = attack.params()
        assert {"norm", "batch_size", "seed"} <= set(params), name
        for declared in cls.PARAMS.params:
            assert params[declared.name] == getattr(attack, declared.name), (name, declared.name)


def test_art_keywords_must_be_plain_data_and_bounded():
    threat = ThreatModel(norm="l2", eps=1.0)
    with pytest.raises(AttackError, match="max_iter must be at most 1,000,000"):
        get_attack("art")(threat, attack="HopSkipJump", max_iter=10 ** 18)
    with pytest.raises(AttackError, match="must be a string, number"):
        get_attack("art")(threat, attack="HopSkipJump", max_iter={"a": 1})
    with pytest.raises(AttackError, match="no parameter 'zz' for HopSkipJump"):
        get_attack("art")(threat, attack="HopSkipJump", zz=1)


def test_the_base_alone_counts_queries_and_owns_the_family():
    for module in (m for name, m in vars(bastion.attacks).items() if inspect.ismodule(m)):
        if module.__name__ != "bastion.attacks.base":
            assert "._queries" not in inspect.getsource(module), module.__name__
    assert not hasattr(ATTACKS["apgd-t"], "loss")  # the targeted APGD has no untargeted loss to inherit
    assert ATTACKS["apgd-ce"].loss is bastion.attacks.ce_loss


class Counting(nn.Module):
    """Counts every sample its forward sees: the ground truth for query counts."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x):
        self.seen += len(x)
        return self.inner(x)


def test_art_adapter_counts_the_queries_hopskipjump_really_makes():
    torch.manual_seed(0)
    model = Counting(nn.Sequential(nn.Flatten(), nn.Linear(16, 3))).eval()
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    model.seen = 0
    attack = get_attack("art")(ThreatModel(norm="l2", eps=4.0), attack="HopSkipJump", max_iter=1, max_eval=10,
                               init_eval=5, init_size=20)
    (result,) = attack.run(model, x, y)
    base_predictions = 2 * len(x)  # the base's clean prediction and its re-prediction of the candidates
    assert result.queries == model.seen - base_predictions
    assert result.queries > 5 * len(x)  # HopSkipJump spends many model evaluations per sample, not one
