"""Recipes are data: shipped ones load, malformed ones fail with one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.catalog import resolve
from bastion.defenses.training import METHODS, load_recipe
from bastion.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["clean", "pgd-at", "trades", "mart", "fgsm-rs", "fast", "gaussian-0.25", "gaussian-0.5", "trades-awp",
           "fast-ema"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_load_by_name(name):
    recipe = load_recipe(resolve("defenses", name))
    assert recipe.method in METHODS
    assert recipe.name == name
    assert recipe.threat.eps == 0.3
    assert recipe.to_dict()["recipe"]["method"] == recipe.method


@pytest.mark.parametrize("name", ["fgsm-rs", "fast"])
def test_fast_recipes_guard_against_collapse(name):
    recipe = load_recipe(REPO / "defenses" / f"{name}.toml")
    assert recipe.guard.collapse_drop > 0 and recipe.data.holdout > 0


def test_options_combine_with_every_method(tmp_path):
    for method in METHODS:
        path = tmp_path / f"{method}.toml"
        path.write_text(f"[recipe]\nmethod = '{method}'\n[average]\ndecay = 0.995\n[awp]\ngamma = 0.005\n"
                        "warmup_epochs = 3\n")
        recipe = load_recipe(path)
        assert recipe.average.decay == 0.995 and recipe.awp.gamma == 0.005 and recipe.awp.warmup_epochs == 3
        assert recipe.to_dict()["awp"] == {"gamma": 0.005, "warmup_epochs": 3}
    assert load_recipe(REPO / "defenses" / "pgd-at.toml").average.decay == 0  # off unless a recipe asks


def test_overrides_change_digest():
    recipe = load_recipe(REPO / "defenses" / "pgd-at.toml")
    shorter = recipe.with_overrides(epochs=2, seed=5)
    assert shorter.optimizer.epochs == 2 and shorter.recipe.seed == 5
    assert shorter.digest() != recipe.digest()
    assert recipe.with_overrides().digest() == recipe.digest()
    with pytest.raises(ConfigError, match="--epochs"):
        recipe.with_overrides(epochs=0)


MALFORMED = [
    ("[recipe\nmethod = 'clean'\n", "malformed TOML"),
    ("[recipe]\nname = 'x'\n", "'recipe.method'"),
    ("[recipe]\nmethod = 'magic'\n", "'recipe.method'"),
    ("[recipe]\nmethod = 'clean'\n[optimiser]\nlr = 0.1\n", "unknown section 'optimiser'"),
    ("[recipe]\nmethod = 'clean'\n[optimizer]\nlearning_rate = 0.1\n", "'optimizer.learning_rate'"),
    ("[recipe]\nmethod = 'clean'\n[optimizer]\nlr = 'fast'\n", "'optimizer.lr' must be a number"),
    ("[recipe]\nmethod = 'clean'\n[optimizer]\nlr = -1\n", "'optimizer.lr' must be > 0"),
    ("[recipe]\nmethod = 'clean'\n[optimizer]\nepochs = 2.5\n", "'optimizer.epochs' must be an integer"),
    ("[recipe]\nmethod = 'clean'\n[attack]\nrandom_start = 1\n", "'attack.random_start' must be true or false"),
    ("[recipe]\nmethod = 'pgd-at'\n[threat]\nnorm = 'l3'\n", "'threat.norm'"),
    ("[recipe]\nmethod = 'pgd-at'\n[threat]\neps = 0\n", "'threat.eps'"),
    ("[recipe]\nmethod = 'clean'\n[guard]\nkeep = 'first'\n", "'guard.keep'"),
    ("[recipe]\nmethod = 'clean'\n[guard]\nattack = 'os.system'\n", "'guard.attack' must be one of"),
    ("recipe = 3\n", "'recipe.method'"),
    ("[recipe]\nmethod = 'clean'\nmodel = 5\n", "unknown key 'recipe.model'"),
    ("[recipe]\nmethod = 'clean'\n[[model]]\narchitecture = 'x'\n", "'model' must be a table"),
    ("[recipe]\nmethod = 'trades'\n[average]\ndecay = 1.0\n", "'average.decay' must be in [0, 1)"),
    ("[recipe]\nmethod = 'trades'\n[average]\ndecay = -0.1\n", "'average.decay' must be in [0, 1)"),
    ("[recipe]\nmethod = 'trades'\n[average]\ndecay = 'ema'\n", "'average.decay' must be a number"),
    ("[recipe]\nmethod = 'trades'\n[average]\nwarmup = 10\n", "unknown key 'average.warmup'"),
    ("[recipe]\nmethod = 'trades'\n[awp]\ngamma = -0.005\n", "'awp.gamma' must be in [0, 1)"),
    ("[recipe]\nmethod = 'trades'\n[awp]\ngamma = 2\n", "'awp.gamma' must be in [0, 1)"),
    ("[recipe]\nmethod = 'trades'\n[awp]\nwarmup_epochs = -1\n", "'awp.warmup_epochs' must be >= 0"),
    ("[recipe]\nmethod = 'trades'\n[awp]\nwarmup_epochs = 2.5\n", "'awp.warmup_epochs' must be an integer"),
    ("[recipe]\nmethod = 'trades'\n[awp]\nenabled = true\n", "unknown key 'awp.enabled'"),
    ("[recipe]\nmethod = 'trades'\nawp = 0.005\n", "unknown key 'recipe.awp'"),
]


@pytest.mark.parametrize("text,expected", MALFORMED)
def test_malformed_recipe_is_one_line_config_error(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_code_reference_is_refused_without_import(tmp_path, monkeypatch):
    # A recipe that names a module:factory must not import it: only registry names are accepted.
    import sys

    path = tmp_path / "evil.toml"
    path.write_text("[recipe]\nmethod = 'clean'\n[model]\narchitecture = 'evil_module_xyz:build'\n")
    with pytest.raises(ConfigError, match="'model.architecture' must be a registered architecture"):
        load_recipe(path)
    assert "evil_module_xyz" not in sys.modules


def test_missing_and_unknown_recipe_names(tmp_path):
    with pytest.raises(ConfigError):
        load_recipe(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="no defenses file named"):
        resolve("defenses", "no-such-recipe")


def test_settings_override_is_validated():
    recipe = load_recipe(REPO / "defenses" / "trades-awp.toml")
    ablated = recipe.with_settings({"awp.gamma": 0.0, "optimizer.lr": 0.002})
    assert ablated.awp.gamma == 0 and ablated.optimizer.lr == 0.002 and ablated.average == recipe.average
    assert ablated.digest() != recipe.digest()
    with pytest.raises(ConfigError, match="'awp.gamma' must be in"):
        recipe.with_settings({"awp.gamma": -1.0})
    with pytest.raises(ConfigError, match="unknown key 'awp.gama'"):
        recipe.with_settings({"awp.gama": 0.1})
    with pytest.raises(ConfigError, match="not section.key"):
        recipe.with_settings({"gamma": 0.1})
