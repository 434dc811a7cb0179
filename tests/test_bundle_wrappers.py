"""The models layer's hook for bundles that wrap their model (a sanitiser): registered by the
defenses layer, declared by the composition root, refused when neither did."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import ModelError
from bastion.models import load_model
from bastion.models import wrappers

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def sanitized_bundle(tmp_path_factory):
    from bastion.defenses.sanitizer import load_sanitizer, save_sanitized_bundle

    return save_sanitized_bundle(load_model("mnist-cnn"), load_sanitizer("sanitize-bitdepth"),
                                 tmp_path_factory.mktemp("b") / "bundle")


def test_a_fresh_interpreter_loads_a_sanitized_bundle_through_load_model_alone(sanitized_bundle):
    code = ("import sys\n"
            "from bastion.models import load_model\n"
            "assert 'bastion.defenses.sanitizer' not in sys.modules\n"
            f"loaded = load_model({str(sanitized_bundle)!r})\n"
            "print(type(loaded.module).__name__, [t.kind for t in loaded.module.sanitizer.transforms])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["SanitizedModel", "['bit-depth']"]


def test_the_models_layer_imports_no_defenses_module():
    import ast

    for path in (SRC / "bastion" / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("bastion.defenses"), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("bastion.defenses") for a in node.names), path.name


def test_without_a_wrapper_the_bundle_is_refused_not_loaded_bare(sanitized_bundle, monkeypatch):
    monkeypatch.setattr(wrappers, "_REGISTERED", {})
    monkeypatch.setattr(wrappers, "_DECLARED", {})
    with pytest.raises(ModelError, match=r"\[sanitizer\] needs a wrapper"):
        load_model(sanitized_bundle)


def test_a_registered_wrapper_is_what_loading_applies(sanitized_bundle, monkeypatch):
    seen = []

    def wrap(module, recipe, where):
        seen.append((recipe["name"], where))
        return module

    monkeypatch.setattr(wrappers, "_REGISTERED", {"sanitizer": wrap})
    loaded = load_model(sanitized_bundle)
    assert type(loaded.module).__name__ == "Sequential"
    assert seen == [("sanitize-bitdepth", f"{sanitized_bundle / 'bastion.toml'}: sanitizer")]
