"""Every way a signed model can be tampered with fails verification, with a message naming file and reason."""

from __future__ import annotations

import base64
import json
import os

import pytest

from bastion.access.envelope import MAX_BUNDLE_BYTES, key_hint, sign_statement
from bastion.access.keys import generate_private_key
from bastion.access.signing import model_statement, sign_model, verify_model
from bastion.access.manifest import build_manifest
from bastion.errors import UsageError, VerificationError
from tests.signing_helpers import make_model_dir


@pytest.fixture(scope="module")
def key():
    return generate_private_key("ec-p256")


@pytest.fixture
def signed(tmp_path, key):
    model = make_model_dir(tmp_path)
    sign_model(model, key)
    return model


def _fails(model, key, pattern, **kwargs):
    with pytest.raises(VerificationError, match=pattern):
        verify_model(model, key.public_key(), **kwargs)


def test_untouched_model_verifies(signed, key):
    result = verify_model(signed, key.public_key())
    assert result.files == 7 and result.hash_type == "sha256" and len(result.root_digest) == 64


def test_changed_byte(signed, key):
    path = signed / "sub" / "deep" / "layer.bin"
    data = bytearray(path.read_bytes())
    data[7] ^= 0x01
    path.write_bytes(bytes(data))
    _fails(signed, key, r"does not match .*model\.sig: file 'sub/deep/layer\.bin' changed")


def test_added_file(signed, key):
    (signed / "sub" / "extra.py").write_text("import os")
    _fails(signed, key, r"file 'sub/extra\.py' is not signed \(added after signing\)")


def test_removed_file(signed, key):
    (signed / "a.txt").unlink()
    _fails(signed, key, r"file 'a\.txt' is missing \(removed after signing\)")


def test_removed_empty_file(signed, key):
    (signed / "empty").unlink()
    _fails(signed, key, r"file 'empty' is missing")


def test_renamed_file(signed, key):
    os.rename(signed / "weights.bin", signed / "weights2.bin")
    _fails(signed, key, r"file 'weights\.bin' was renamed to 'weights2\.bin'")


def test_symlink_to_a_file(signed, key):
    os.symlink(signed / "a.txt", signed / "link.txt")
    _fails(signed, key, r"link\.txt: is a symbolic link")


def test_signed_file_replaced_by_symlink(signed, key, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes((signed / "weights.bin").read_bytes())  # same bytes: a link must still fail
    (signed / "weights.bin").unlink()
    os.symlink(outside, signed / "weights.bin")
    _fails(signed, key, r"weights\.bin: is a symbolic link")


def test_symlinked_directory(signed, key, tmp_path):
    os.symlink(signed / "sub", signed / "sub2")
    _fails(signed, key, r"sub2: is a symbolic link")


def test_model_path_is_a_symlink(signed, key, tmp_path):
    os.symlink(signed, tmp_path / "alias")
    _fails(tmp_path / "alias", key, r"alias: is a symbolic link", signature=signed / "model.sig")


def test_edited_signature_payload(signed, key):
    sig = signed / "model.sig"
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    _fails(signed, key, r"model\.sig: the signature does not verify: the file was edited")


def test_edited_signature_value(signed, key):
    sig = signed / "model.sig"
    bundle = json.loads(sig.read_text())
    raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    raw[-1] ^= 0x01
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(raw)).decode()
    sig.write_text(json.dumps(bundle))
    _fails(signed, key, r"model\.sig: the signature does not verify")


def test_truncated_signature(signed, key):
    sig = signed / "model.sig"
    sig.write_bytes(sig.read_bytes()[:-40])
    _fails(signed, key, r"model\.sig: not a valid signature bundle \(truncated or edited\?\)")


def test_empty_signature(signed, key):
    (signed / "model.sig").write_bytes(b"")
    _fails(signed, key, r"model\.sig: not a valid signature bundle")


def test_oversized_signature_is_refused_before_parsing(signed, key):
    sig = signed / "model.sig"
    with open(sig, "ab") as fh:
        fh.truncate(MAX_BUNDLE_BYTES + 1)
    _fails(signed, key, r"model\.sig: the signature file is \d+ bytes, over the \d+-byte limit")


def test_missing_signature(tmp_path, key):
    model = make_model_dir(tmp_path)
    _fails(model, key, r"model\.sig: no such signature file")


def test_wrong_key(signed):
    other = generate_private_key("ec-p256")
    _fails(signed, other, r"signed by a different key than the one given")


def test_wrong_key_with_a_forged_hint(signed):
    other = generate_private_key("ec-p256")
    sig = signed / "model.sig"
    bundle = json.loads(sig.read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = key_hint(other.public_key())
    sig.write_text(json.dumps(bundle))
    _fails(signed, other, r"the signature does not verify")


def test_signature_without_key_hint(signed, key):
    sig = signed / "model.sig"
    bundle = json.loads(sig.read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    sig.write_text(json.dumps(bundle))
    _fails(signed, key, r"the bundle has no public key hint")


def test_signature_made_for_another_model(tmp_path, key):
    first = make_model_dir(tmp_path / "one")
    second = make_model_dir(tmp_path / "two")  # same layout, different random weights... and more
    for name in ("a.txt", "B", "sub/config.json", "a-b/c.txt", "sub/deep/layer.bin"):
        (second / name).write_text("other model " + name)
    (second / "empty").write_bytes(b"not empty")
    sign_model(first, key)
    _fails(second, key, r"signature for another model \('model'\): none of its 7 signed files match",
           signature=first / "model.sig")


def test_single_file_signature_used_for_a_directory(tmp_path, key):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    sign_model(weights, key)
    model = make_model_dir(tmp_path)
    _fails(model, key, r"made for a single file \('w\.bin'\), so it is a signature for another model",
           signature=tmp_path / "w.bin.sig")


def test_single_file_changed(tmp_path, key):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights")
    sign_model(weights, key)
    weights.write_bytes(b"weightz")
    _fails(weights, key, r"w\.bin: does not match .*w\.bin\.sig: the file's content changed")


def test_shard_mode_signature_is_refused(tmp_path, key):
    model = make_model_dir(tmp_path)
    statement = model_statement(build_manifest(model))
    statement["predicate"]["serialization"]["method"] = "shards"
    (model / "model.sig").write_bytes(sign_statement(statement, key))
    _fails(model, key, r"serialization method 'shards' is not accepted")


def test_signature_ignoring_everything_is_refused(tmp_path, key):
    model = make_model_dir(tmp_path)
    statement = model_statement(build_manifest(model))
    statement["predicate"]["serialization"]["ignore_paths"] = ["."]
    (model / "model.sig").write_bytes(sign_statement(statement, key))
    _fails(model, key, r"an ignore path covers the whole model")


def test_signed_ignore_paths_are_applied_again(tmp_path, key):
    model = make_model_dir(tmp_path)
    manifest = build_manifest(model, ignore_paths={"model.sig", "notes"})
    (model / "model.sig").write_bytes(sign_statement(model_statement(manifest), key))
    (model / "notes").mkdir()
    (model / "notes" / "todo.txt").write_text("ignored by the signer")
    verify_model(model, key.public_key())
    (model / "notes.txt").write_text("not ignored: 'notes' covers only that path and below")
    _fails(model, key, r"file 'notes\.txt' is not signed")


def test_signing_an_empty_directory_is_refused(tmp_path, key):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"holds no files to sign"):
        sign_model(tmp_path / "empty", key)


def test_non_ec_key_is_refused(tmp_path):
    from bastion.errors import KeyFileError

    model = make_model_dir(tmp_path)
    with pytest.raises(KeyFileError, match=r"ECDSA P-256, P-384 or P-521"):
        sign_model(model, generate_private_key("ed25519"))


@pytest.mark.parametrize("key_type", ["ec-p384", "ec-p521"])
def test_other_curves_round_trip(tmp_path, key_type):
    other = generate_private_key(key_type)
    model = make_model_dir(tmp_path)
    sign_model(model, other, hash_type="blake2b")
    assert verify_model(model, other.public_key()).hash_type == "blake2b"
