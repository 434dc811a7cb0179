"""The layers of DESIGN.md, checked on the source: imports point one way and never form a cycle.

Every ``import``/``from ... import`` of a ``bastion`` module counts, at module level or inside a
function (an import inside a function hides a cycle from Python, not from this test). Imports
of other packages are free: a heavy optional dependency may be imported inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bastion"

#: What each layer may import besides itself. The bottom (errors, threat, data and the small
#: file helpers) imports only the bottom; cli sits on top of everything.
BOTTOM = {"errors", "threat", "data", "fsutil", "tomlfile", "catalog"}
MAY_IMPORT = {
    "models": BOTTOM,
    "attacks": BOTTOM | {"models"},
    "evaluation": BOTTOM | {"models", "attacks"},
    "defenses": BOTTOM | {"models", "attacks"},
    "access": BOTTOM | {"models"},
    "serving": BOTTOM | {"models", "attacks", "defenses", "access"},
    "distributed": BOTTOM | {"models", "attacks", "evaluation", "defenses", "access"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str | None:
    if isinstance(node, ast.Import):
        target = alias.name
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".")
            is_package = MODULES[module].name == "__init__.py"
            anchor = package if is_package else package[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        candidate = f"{base}.{alias.name}" if base else alias.name
        target = candidate if candidate in MODULES else base
    if not target.startswith("bastion"):
        return None
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Imports under ``if TYPE_CHECKING:``: they name types for readers and checkers, and never run."""
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden |= {inner for statement in node.body for inner in ast.walk(statement)}
    return hidden


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hidden = _type_checking_only(tree)
        for node in ast.walk(tree):
            if node in hidden:
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    target = _resolve(name, node, alias)
                    if target and target != name and target != "bastion":
                        edges[name].add(target)
    return edges


EDGES = _edges()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_point_one_way():
    wrong = []
    for module, targets in EDGES.items():
        layer = _layer(module)
        if layer not in MAY_IMPORT:
            continue  # the bottom is checked below; cli may import anything
        for target in targets:
            other = _layer(target)
            if other != layer and other not in MAY_IMPORT[layer]:
                wrong.append(f"{module} -> {target}")
    for module, targets in EDGES.items():
        if _layer(module) in BOTTOM:
            wrong += [f"{module} -> {t}" for t in targets if _layer(t) not in BOTTOM]
    assert not wrong, "imports against the layers of DESIGN.md:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    # Package __init__ modules that only re-export lazily are part of their package.
    visiting, done, cycles = set(), set(), []

    def visit(module, path):
        if module in done:
            return
        if module in visiting:
            cycles.append(" -> ".join(path[path.index(module):]))
            return
        visiting.add(module)
        for target in sorted(EDGES[module]):
            # A module importing its own package's __init__ (to register, say) is not a cycle
            # unless that __init__ imports it back.
            visit(target, path + [target])
        visiting.discard(module)
        done.add(module)

    for module in sorted(EDGES):
        visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("command", ["--help", "token", "sign", "verify", "scan", "keygen"])
def test_commands_without_models_do_not_import_torch(command):
    import subprocess
    import sys

    code = ("import sys; from bastion.cli import main\n"
            f"try:\n    main([{command!r}, '--help'] if {command!r} != '--help' else ['--help'])\n"
            "except SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)
