"""Attack suites: the shipped ones load; every kind of malformed file gets a one-line error with file, line, key."""

from __future__ import annotations

import pytest
from bench_helpers import use_test_attacks, write_suite

from bastion.catalog import list_names, resolve
from bastion.errors import ConfigError
from bastion.evaluation.suite import load_suite

PGD = '\n[[attack]]\nname = "pgd"\nsteps = 5\n'



@pytest.fixture(autouse=True)
def _test_attacks(monkeypatch):
    use_test_attacks(monkeypatch)


def error_of(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_suites_are_listed_and_load():
    names = list_names("attacks")
    assert {"quick", "standard", "fast", "l2", "sweep"} <= set(names)
    for name in names:
        suite = load_suite(name)
        assert suite.attacks and suite.epsilons
    assert len(load_suite("sweep").epsilons) > 2


def test_standard_suite_has_autoattack_composition_and_budgets():
    suite = load_suite("standard")
    assert suite.norm == "linf" and suite.epsilons == (0.3,)
    by_name = {a.name: a.params for a in suite.attacks}
    assert [a.name for a in suite.attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert by_name["apgd-ce"]["steps"] == 100 and by_name["apgd-ce"]["restarts"] == 1
    assert by_name["apgd-t"]["steps"] == 100 and by_name["apgd-t"]["n_target_classes"] == 9
    assert by_name["fab-t"]["steps"] == 100 and by_name["fab-t"]["n_target_classes"] == 9
    assert by_name["square"]["n_queries"] == 5000


def test_a_name_or_a_path_resolves(tmp_path):
    assert resolve("attacks", "quick").name == "quick.toml"
    own = write_suite(tmp_path / "mine.toml", PGD)
    assert load_suite(own).attacks[0].params == {"steps": 5}
    with pytest.raises(ConfigError, match="known: .*quick"):
        resolve("attacks", "no-such-suite")
    with pytest.raises(ConfigError, match="no such file"):
        load_suite(tmp_path / "missing.toml")


def test_repeated_attack_names_get_distinct_labels(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.toml", PGD + PGD))
    assert [a.label for a in suite.attacks] == ["pgd#1", "pgd#2"]


def test_malformed_toml_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\neps = 0.3\n[[attack]]\nname = "pgd\n')
    message = error_of(path)
    assert f"{path}:4" in message and "malformed TOML" in message


@pytest.mark.parametrize("body, line, key, words", [
    ('name = "x"\nepsilon = 0.3\n' + PGD, 2, "epsilon", "unknown key"),
    ('eps = -1\n' + PGD, 1, "eps", ">= 0"),
    ('eps = "big"\n' + PGD, 1, "eps", "finite number"),
    ('eps = []\n' + PGD, 1, "eps", "empty"),
    ('norm = "l3"\neps = 0.3\n' + PGD, 1, "norm", "linf, l2"),
    ('eps = 0.3\n\n[[attack]]\nname = "os:system"\n', 4, "name", "unknown attack"),
    ('eps = 0.3\n\n[[attack]]\nname = "pgd"\nstepz = 3\n', 5, "stepz", "no parameter"),
    ('eps = 0.3\n\n[[attack]]\nname = "pgd"\nsteps = "many"\n', 5, "steps", "bad parameter value"),
    ('eps = 0.3\n\n[[attack]]\nname = "pgd"\nseed = 3\n', 5, "seed", "--seed"),
    ('eps = 0.3\n\n[[attack]]\nname = "pgd"\n[attack.steps]\nx = 1\n', 5, "steps", "must be a number"),
    ('eps = 0.3\n\n[[attack]]\nsteps = 3\n', 3, "name", "has no name"),
    ('eps = 0.3\n\n[[attack]]\nname = 7\n', 4, "name", "must be a string"),
    ('eps = 0.3\nattack = "pgd"\n', 2, "attack", "list of tables"),
    ('norm = "l2"\neps = 0.3\n\n[[attack]]\nname = "test-random-search"\n', 5, "name", "l2"),
])
def test_each_malformed_entry_names_file_line_and_key(tmp_path, body, line, key, words):
    path = tmp_path / "suite.toml"
    path.write_text(body)
    message = error_of(path)
    assert message.startswith(f"{path}:{line}: ")
    assert f"(key {key!r})" in message
    assert words in message


@pytest.mark.parametrize("body, words", [
    ('name = "x"\n' + PGD, "missing key 'eps'"),
    ('eps = 0.3\n', "no attacks"),
])
def test_missing_parts(tmp_path, body, words):
    path = tmp_path / "suite.toml"
    path.write_text(body)
    assert words in error_of(path)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in error_of(path)


def test_eps_override_validates(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.toml", PGD))
    assert suite.with_eps([0.2, 0.1]).epsilons == (0.1, 0.2)
    with pytest.raises(ConfigError, match="--eps"):
        suite.with_eps([-0.1])
