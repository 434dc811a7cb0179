"""Mutated signature files are never accepted and never cause anything but a VerificationError."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.access.keys import generate_private_key
from bastion.access.signing import sign_model, verify_model
from bastion.errors import VerificationError
from tests.signing_helpers import make_model_dir

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def signed_model(tmp_path_factory):
    key = generate_private_key("ec-p256")
    model = make_model_dir(tmp_path_factory.mktemp("fuzz"))
    sign_model(model, key, signature=model.parent / "model.sig")
    original = (model.parent / "model.sig").read_bytes()
    return model, key, original


def _check(model, key, original: bytes, mutated: bytes) -> None:
    sig = model.parent / "mutated.sig"
    sig.write_bytes(mutated)
    try:
        verify_model(model, key.public_key(), signature=sig)
    except VerificationError:
        return
    # Accepted: only an edit that changes nothing but JSON whitespace may be.
    assert json.loads(mutated) == json.loads(original), "a mutated signature was accepted"


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
    st.tuples(st.just("delete"), st.integers(min_value=0), st.integers(min_value=1, max_value=64)),
    st.tuples(st.just("insert"), st.integers(min_value=0), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
)


def _apply(data: bytes, kind: str, position: int, arg) -> bytes:
    if not data:  # an earlier mutation truncated everything
        return arg if kind == "insert" else data
    position %= len(data)
    if kind == "flip":
        return data[:position] + bytes([data[position] ^ arg]) + data[position + 1:]
    if kind == "delete":
        return data[:position] + data[position + arg:]
    if kind == "insert":
        return data[:position] + arg + data[position:]
    return data[:position]


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_byte_level_mutations(signed_model, mutations):
    model, key, original = signed_model
    data = original
    for kind, position, arg in mutations:
        data = _apply(data, kind, position, arg)
    _check(model, key, original, data)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=6)
FIELD_PATHS = [("mediaType",), ("verificationMaterial",), ("verificationMaterial", "publicKey"),
               ("verificationMaterial", "publicKey", "hint"), ("verificationMaterial", "tlogEntries"),
               ("dsseEnvelope",), ("dsseEnvelope", "payload"), ("dsseEnvelope", "payloadType"),
               ("dsseEnvelope", "signatures"), ("extra",), ("dsseEnvelope", "extra")]


@FUZZ
@given(path=st.sampled_from(FIELD_PATHS), value=json_values)
def test_structural_mutations(signed_model, path, value):
    model, key, original = signed_model
    bundle = json.loads(original)
    target = bundle
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    _check(model, key, original, json.dumps(bundle).encode())
