"""Key generation: file modes, curves, overwrite refusal, passphrases (environment or prompt, never argv)."""

from __future__ import annotations

import stat

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.access.keys import load_private_key, load_public_key
from bastion.cli import main

PASS_ENV = "BASTION_KEY_PASSPHRASE"


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.delenv(PASS_ENV, raising=False)
    return CliRunner()


def test_keygen_writes_private_0600_and_public(runner, tmp_path):
    out = tmp_path / "release.key"
    result = runner.invoke(main, ["keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in out.read_bytes()
    assert (tmp_path / "release.key.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = load_private_key(out)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert "not encrypted" in result.output


def test_keygen_p384_on_request(runner, tmp_path):
    out = tmp_path / "k"
    assert runner.invoke(main, ["keygen", "--out", str(out), "--type", "ec-p384"]).exit_code == 0
    assert load_public_key(tmp_path / "k.pub").curve.name == "secp384r1"


def test_keygen_refuses_to_overwrite_without_force(runner, tmp_path):
    out = tmp_path / "k"
    assert runner.invoke(main, ["keygen", "--out", str(out)]).exit_code == 0
    before = out.read_bytes()
    result = runner.invoke(main, ["keygen", "--out", str(out)])
    assert result.exit_code == 2 and "exists; refusing to overwrite (pass --force" in result.output
    assert out.read_bytes() == before
    (tmp_path / "k.pub").unlink()  # the private key alone still blocks
    assert runner.invoke(main, ["keygen", "--out", str(out)]).exit_code == 2
    assert runner.invoke(main, ["keygen", "--out", str(out), "--force"]).exit_code == 0
    assert out.read_bytes() != before


def test_keygen_passphrase_from_environment(runner, tmp_path, monkeypatch):
    monkeypatch.setenv(PASS_ENV, "correct horse")
    out = tmp_path / "k"
    result = runner.invoke(main, ["keygen", "--out", str(out), "--encrypt"])
    assert result.exit_code == 0 and "encrypted with the passphrase from BASTION_KEY_PASSPHRASE" in result.output
    assert b"ENCRYPTED PRIVATE KEY" in out.read_bytes()
    assert load_private_key(out, passphrase=b"correct horse")
    with pytest.raises(Exception, match="wrong passphrase"):
        load_private_key(out, passphrase=b"wrong")


def test_keygen_passphrase_from_prompt(runner, tmp_path):
    out = tmp_path / "k"
    result = runner.invoke(main, ["keygen", "--out", str(out), "--encrypt"], input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output  # hidden input
    assert load_private_key(out, passphrase=b"s3cret")


def test_keygen_prompt_mismatch_and_empty_are_refused(runner, tmp_path):
    out = tmp_path / "k"
    result = runner.invoke(main, ["keygen", "--out", str(out), "--encrypt"], input="a\nb\n\n")
    assert result.exit_code != 0 and not out.exists()


def test_no_passphrase_option_on_the_command_line(runner, tmp_path):
    result = runner.invoke(main, ["keygen", "--out", str(tmp_path / "k"), "--passphrase", "x"])
    assert result.exit_code == 2 and "No such option" in result.output


def test_signing_with_encrypted_key_needs_the_passphrase(runner, tmp_path, monkeypatch):
    monkeypatch.setenv(PASS_ENV, "pw")
    runner.invoke(main, ["keygen", "--out", str(tmp_path / "k"), "--encrypt"])
    model = tmp_path / "w.bin"
    model.write_bytes(b"weights")
    assert runner.invoke(main, ["sign", str(model), "--key", str(tmp_path / "k")]).exit_code == 0
    monkeypatch.delenv(PASS_ENV)
    result = runner.invoke(main, ["sign", str(model), "--key", str(tmp_path / "k")], input="")
    assert result.exit_code == 2 and "the key is encrypted and no passphrase was given" in result.output
    result = runner.invoke(main, ["sign", str(model), "--key", str(tmp_path / "k")], input="pw\n")
    assert result.exit_code == 0, result.output


def test_keygen_into_missing_directory(runner, tmp_path):
    result = runner.invoke(main, ["keygen", "--out", str(tmp_path / "nope" / "k")])
    assert result.exit_code == 2 and "no such directory" in result.output
