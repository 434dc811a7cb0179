"""load_verified: verify first, deserialise only the verified bytes, only from formats that run no code."""

from __future__ import annotations

import shutil

import pytest
import torch

import bastion.models.bundle as bundle_module
from bastion.access import ModelTrust, load_verified
from bastion.access.attestation import attest_model
from bastion.access.keys import generate_private_key
from bastion.access.signing import sign_model
from bastion.errors import ModelError, UnsafeFileError, VerificationError
from bastion.models.architectures import ARCHITECTURES
from bastion.models.zoo import zoo_path
from tests.signing_helpers import bench_report
from tests.test_scan import craft


@pytest.fixture(scope="module")
def key():
    return generate_private_key("ec-p256")


@pytest.fixture
def bundle(tmp_path, key):
    model = tmp_path / "mnist-cnn"
    shutil.copytree(zoo_path("mnist-cnn"), model)
    sign_model(model, key)
    return model


def test_loads_a_verified_bundle(bundle, key):
    loaded = load_verified(bundle, key.public_key())
    assert loaded.name == "mnist-cnn" and loaded.source == str(bundle)
    assert loaded.module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_accepts_a_public_key_path(bundle, key, tmp_path):
    from bastion.access.keys import write_keypair

    _, pub = write_keypair(tmp_path / "k", key)
    assert load_verified(bundle, str(pub)).num_classes == 10


def test_tampered_bundle_is_never_deserialised(bundle, key, monkeypatch):
    calls = []
    monkeypatch.setattr(bundle_module, "load_bundle", lambda *a, **k: calls.append(a))
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"file 'model.safetensors' changed"):
        load_verified(bundle, key.public_key())
    assert calls == []


def test_untrusted_key_is_refused(bundle):
    with pytest.raises(VerificationError, match=r"signed by a different key"):
        load_verified(bundle, generate_private_key("ec-p256").public_key())


def test_any_of_several_trusted_keys(bundle, key):
    trust = ModelTrust(keys=[generate_private_key("ec-p256").public_key(), key.public_key()])
    assert load_verified(bundle, trust).num_classes == 10


def test_requirement_on_the_attested_evaluation(bundle, key):
    report = bench_report({0.3: 0.1}, n=100, clean=0.98)
    attest_model(bundle, report, key)
    assert load_verified(bundle, ModelTrust(keys=[key.public_key()], require="clean_accuracy>=0.9"))
    with pytest.raises(VerificationError, match=r"requirement robust_accuracy>=0.85 not met"):
        load_verified(bundle, ModelTrust(keys=[key.public_key()], require="robust_accuracy>=0.85"))


def test_requirement_without_attestation_is_refused(bundle, key):
    with pytest.raises(VerificationError, match=r"no such attestation file"):
        load_verified(bundle, ModelTrust(keys=[key.public_key()], require="robust_accuracy>=0.5"))


def test_single_state_dict_file_through_weights_only(tmp_path, key):
    module = ARCHITECTURES["mnist-cnn"]()
    path = tmp_path / "weights.pt"
    torch.save(module.state_dict(), path)
    sign_model(path, key)
    loaded = load_verified(path, key.public_key(), architecture="mnist-cnn")
    for name, tensor in module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor)
    with pytest.raises(ModelError, match=r"needs architecture="):
        load_verified(path, key.public_key())


def test_signed_malicious_pickle_is_still_refused(tmp_path, key):
    path = tmp_path / "evil.pt"
    path.write_bytes(craft("os", "system", 2))
    sign_model(path, key)  # a trusted signer's mistake must not become code execution
    with pytest.raises(UnsafeFileError, match=r"os.system"):
        load_verified(path, key.public_key(), architecture="mnist-cnn")


def test_unknown_format_is_refused(tmp_path, key):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx")
    sign_model(path, key)
    with pytest.raises(ModelError, match=r"not a format bastion loads safely"):
        load_verified(path, key.public_key())


def test_single_export_program(tmp_path, key):
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(module, (torch.ones(1, 4),)), path)
    sign_model(path, key)
    loaded = load_verified(path, key.public_key())
    assert torch.allclose(loaded.module(torch.ones(1, 4)), module(torch.ones(1, 4)))
