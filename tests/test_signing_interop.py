"""bastion and the reference OpenSSF implementation (model-signing 1.1.1) verify each other's signatures."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys

import pytest

from bastion.access.manifest import list_model_files
from bastion.access.signing import sign_model, verify_model
from bastion.errors import VerificationError
from tests.signing_helpers import make_keys, make_model_dir

model_signing = pytest.importorskip("model_signing")

BIG = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    key, key_path, pub_path = make_keys(root)
    return root, key, key_path, pub_path


def _their_hashing(hash_type="sha256"):
    algorithm = {"sha256": "sha256", "blake3": "blake3"}[hash_type]
    return (model_signing.hashing.Config().use_file_serialization(hashing_algorithm=algorithm)
            .set_ignored_paths(paths=["model.sig"], ignore_git_paths=True))


def _their_sign(model, sig, key_path, hash_type="sha256"):
    (model_signing.signing.Config().use_elliptic_key_signer(private_key=key_path)
     .set_hashing_config(_their_hashing(hash_type)).sign(model, sig))


def _their_verify(model, sig, pub_path):
    # No hashing config: model_signing reads it from the signature, as a user's verifier would.
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub_path).verify(model, sig)


def _statement(sig_path):
    bundle = json.loads(sig_path.read_text())
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def test_bastion_signs_model_signing_verifies_directory_with_big_and_empty_files(setup, tmp_path):
    _, key, _, pub_path = setup
    model = make_model_dir(tmp_path, big_bytes=BIG)
    result = sign_model(model, key)
    assert result.signature == model / "model.sig" and result.files == 8
    _their_verify(model, model / "model.sig", pub_path)
    names = [r["name"] for r in _statement(model / "model.sig")["predicate"]["resources"]]
    # Ordered by path components, as the format requires: not plain string order.
    assert names == ["B", "a-b/c.txt", "a.txt", "big.safetensors", "empty", "sub/config.json",
                     "sub/deep/layer.bin", "weights.bin"]


def test_model_signing_signs_bastion_verifies_directory_with_big_and_empty_files(setup, tmp_path):
    _, _, key_path, pub_path = setup
    model = make_model_dir(tmp_path, big_bytes=BIG)
    _their_sign(model, model / "model.sig", key_path)
    result = verify_model(model, _load_pub(pub_path))
    assert result.files == 8
    theirs = _statement(model / "model.sig")
    assert theirs["subject"][0]["digest"]["sha256"] == result.root_digest


def test_both_produce_the_same_model_digest(setup, tmp_path):
    _, key, key_path, _ = setup
    model = make_model_dir(tmp_path)
    ours = sign_model(model, key, signature=tmp_path / "ours.sig")
    _their_sign(model, tmp_path / "theirs.sig", key_path)
    assert _statement(tmp_path / "theirs.sig")["subject"][0]["digest"]["sha256"] == ours.root_digest


def test_single_file_both_ways(setup, tmp_path):
    _, key, key_path, pub_path = setup
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x00weights" * 1000)
    sign_model(weights, key)
    assert (tmp_path / "w.safetensors.sig").is_file()
    _their_verify(weights, tmp_path / "w.safetensors.sig", pub_path)
    _their_sign(weights, tmp_path / "theirs.sig", key_path)
    assert verify_model(weights, _load_pub(pub_path), signature=tmp_path / "theirs.sig").files == 1


def test_blake3_fast_mode_verifies_with_model_signing_api(setup, tmp_path):
    _, key, key_path, pub_path = setup
    model = make_model_dir(tmp_path)
    sign_model(model, key, hash_type="blake3")
    _their_verify(model, model / "model.sig", pub_path)
    _their_sign(model, tmp_path / "theirs.sig", key_path, hash_type="blake3")
    assert verify_model(model, _load_pub(pub_path), signature=tmp_path / "theirs.sig").hash_type == "blake3"


def test_model_signing_command_line_verifies_bastion_and_refuses_tampering(setup, tmp_path):
    _, key, _, pub_path = setup
    model = make_model_dir(tmp_path)
    sign_model(model, key)
    cli = [sys.executable, "-m", "model_signing", "verify", "key", str(model), "--signature",
           str(model / "model.sig"), "--public_key", str(pub_path)]
    ok = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    (model / "a.txt").write_text("A")
    bad = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "a.txt" in bad.stderr


def test_tampering_with_a_model_signing_signed_model_is_caught(setup, tmp_path):
    _, _, key_path, pub_path = setup
    model = make_model_dir(tmp_path)
    _their_sign(model, model / "model.sig", key_path)
    (model / "sub" / "new.bin").write_bytes(b"x")
    with pytest.raises(VerificationError, match=r"file 'sub/new.bin' is not signed"):
        verify_model(model, _load_pub(pub_path))


def test_git_paths_and_signature_are_ignored_both_ways(setup, tmp_path):
    _, key, key_path, pub_path = setup
    model = make_model_dir(tmp_path)
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref")
    (model / ".gitattributes").write_text("*.bin lfs")
    names = [n for n, _ in list_model_files(model, {".git", ".gitattributes"})]
    assert ".gitattributes" not in names and not any(n.startswith(".git/") for n in names)
    sign_model(model, key)
    _their_verify(model, model / "model.sig", pub_path)
    shutil.rmtree(model / ".git")  # not part of the model: removing it changes nothing
    verify_model(model, _load_pub(pub_path))


def _load_pub(path):
    from bastion.access.keys import load_public_key

    return load_public_key(path)
