"""Commands that need no model start at once: they never import torch (nor numpy), and --help lists
every command from the static table without importing any command module."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.access.keys import generate_private_key, write_keypair
from bastion.access.tokens import issue_token
from bastion.cli import COMMANDS, main
from tests.signing_helpers import bench_report, make_model_dir

SRC = Path(__file__).resolve().parents[1] / "src"
# Runs the CLI in a fresh interpreter, then reports which heavy modules the command imported.
PROBE = """
import sys
from bastion.cli import main
try:
    main(sys.argv[1:], prog_name="bastion")
    code = 0
except SystemExit as exit:
    code = exit.code
heavy = [name for name in ("torch", "numpy") if name in sys.modules]
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
sys.exit(code)
"""


def run_cli(*args: str, cwd: Path | None = None) -> tuple[int, str, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("BASTION_KEY_PASSPHRASE", None)
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)
    heavy_line = [line for line in done.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy_line, done.stderr
    heavy = [m for m in heavy_line[-1][len("HEAVY="):].split(",") if m]
    return done.returncode, done.stdout + done.stderr, heavy


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    key = generate_private_key("ec-p256")
    write_keypair(root / "k", key)
    model = make_model_dir(root)
    (root / "policy.toml").write_text(f"""
audience = "gw"
[[issuers]]
iss = "https://auth.example.com"
algorithm = "ES256"
key_file = "k.pub"
[scopes.predict]
actions = ["predict"]
models = ["mnist-*"]
""")
    token = issue_token(key, "ES256", iss="https://auth.example.com", aud="gw", sub="alice", ttl_seconds=600,
                        scope="predict")
    (root / "report.json").write_text(json.dumps(bench_report({0.3: 0.5})))
    (root / "state.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    return root, model, token


def test_help_lists_every_command_without_importing_torch_or_numpy():
    code, output, heavy = run_cli("--help")
    assert code == 0 and heavy == [], heavy
    for name, _, short_help in COMMANDS:
        assert name in output and short_help in output


@pytest.mark.parametrize("command", ["token-verify", "token-issue", "keygen", "sign-verify", "attest", "scan"])
def test_model_free_commands_never_import_torch(workspace, tmp_path, command):
    root, model, token = workspace
    if command == "token-verify":
        runs = [("token", "verify", token, "--policy", str(root / "policy.toml"), "--action", "predict",
                 "--model", "mnist-cnn")]
    elif command == "token-issue":
        runs = [("token", "issue", "--key", str(root / "k"), "--iss", "x", "--aud", "gw", "--sub", "s",
                 "--scope", "predict")]
    elif command == "keygen":
        runs = [("keygen", "--out", str(tmp_path / "new.key"))]
    elif command == "sign-verify":
        plain = tmp_path / "plain"
        plain.mkdir()
        (plain / "weights.bin").write_bytes(b"w" * 100)
        runs = [("sign", str(plain), "--key", str(root / "k")), ("verify", str(plain), "--key", str(root / "k.pub"))]
    elif command == "attest":
        runs = [("attest", str(model), "--report", str(root / "report.json"), "--key", str(root / "k"),
                 "--out", str(tmp_path / "a.att.json"))]
    else:
        runs = [("scan", str(root / "state.pkl"))]
    for args in runs:
        code, output, heavy = run_cli(*args)
        assert code == 0, output
        assert "torch" not in heavy, f"bastion {' '.join(args[:2])} imported torch"
        if command != "scan":  # the scanner's own imports are its business; torch never
            assert heavy == [], f"bastion {' '.join(args[:2])} imported {heavy}"


def test_importing_the_cli_is_cheap():
    """The CPU the CLI's import costs, best of 3 fresh interpreters (a generous bound for a loaded machine)."""
    probe = ("import time; t = time.process_time(); import bastion.cli; "
             "print(time.process_time() - t)")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cpu, wall = [], []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
        wall.append(time.perf_counter() - started)
        cpu.append(float(done.stdout.strip()))
    assert min(cpu) < 0.5, f"importing bastion.cli took {min(cpu):.2f} s of CPU (wall {min(wall):.2f} s)"


def test_the_command_table_matches_the_registered_commands():
    for _, module, _ in COMMANDS:
        importlib.import_module(module)
    assert set(main.commands) >= {name for name, _, _ in COMMANDS}
    assert set(main.commands) - {name for name, _, _ in COMMANDS} == set(), \
        "a command is registered but missing from bastion.cli.COMMANDS (so --help would not list it)"


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_every_command_loads_on_demand_and_explains_itself(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


def test_an_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(main, ["nonsense"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_import_bastion_does_not_import_torch_until_asked():
    probe = ("import sys, bastion; assert 'torch' not in sys.modules; "
             "from bastion import ThreatModel; assert 'torch' in sys.modules; print(ThreatModel(eps=0.1).norm)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0 and done.stdout.strip() == "linf", done.stderr
