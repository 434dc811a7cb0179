"""Fuzzing the pickle scanner against ground truth: never "clean" when a loader would import a
global outside the allowlist, never an exception out of the scanner.

Ground truth comes from the real unpicklers (pickle.py's and _pickle.c's), whose find_class is
replaced by one that records the name and, for an allowed name, returns a harmless stand-in:
nothing is imported or run. The streams they are handed are the ones stdlib readers reach
(pickle.load again and again, zipfile members, tarfile members, numpy's .npy object payload,
gzip), found independently of the scanner's own code.

BASTION_FUZZ_EXAMPLES raises the number of examples (default: a few seconds' worth).
"""

from __future__ import annotations

import _compat_pickle
import gzip
import importlib.util
import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.access.pickle_scan.allowlist import is_allowed
from bastion.access.pickle_scan import ScanLimits, scan_bytes

EXAMPLES = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "300"))
LIMITS = ScanLimits(max_expanded_bytes=8 << 20, max_opcodes=200_000)


# -- ground truth ---------------------------------------------------------------------------

class _Stub:
    """What an allowed global becomes in the oracle: accepts any call or state, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def add(self, value):
        pass


class _Dangerous(Exception):
    def __init__(self, name):
        self.name = name


def _importable(module: str) -> bool:
    """Whether ``import module`` would find something, without importing anything (top level only)."""
    top = module.partition(".")[0]
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ValueError, ImportError):
        return False


def _judge(module: str, name: str, proto: int | None):
    if proto is not None and proto < 3:  # pickle.py's fix_imports
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    full = f"{module}.{name}"
    if is_allowed(full):
        return _Stub
    if _importable(module):
        raise _Dangerous(full)
    raise ImportError(full)  # what the real import would do: nothing is imported


class _PyOracle(pickle._Unpickler):
    def find_class(self, module, name):
        return _judge(module, name, self.proto)

    def persistent_load(self, pid):
        return _Stub()


class _COracle(pickle.Unpickler):
    def find_class(self, module, name):
        return _judge(module, name, None)

    def persistent_load(self, pid):
        return _Stub()


def _pickle_sequence_danger(data: bytes) -> set[str]:
    found = set()
    for oracle in (_PyOracle, _COracle):
        f = io.BytesIO(data)
        while f.tell() < len(data):
            try:
                oracle(f).load()
            except _Dangerous as d:
                found.add(d.name)
                break
            except RecursionError:
                break
            except Exception:
                break
    return found


def reachable_danger(data: bytes, depth: int = 0) -> set[str]:
    """Non-allowed globals a stdlib loader would import from some stream reachable in ``data``."""
    found = _pickle_sequence_danger(data)
    if depth >= 3:
        return found
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist():
                    try:
                        found |= reachable_danger(archive.read(info), depth + 1)
                    except Exception:
                        pass
    except Exception:
        pass
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for info in archive:
                if info.isreg():
                    found |= reachable_danger(archive.extractfile(info).read(), depth + 1)
    except Exception:
        pass
    if data.startswith(b"\x93NUMPY"):
        try:
            f = io.BytesIO(data)
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            _, _, dtype = reader(f, max_header_size=1 << 20)
            if dtype.hasobject:
                found |= _pickle_sequence_danger(data[f.tell():])
        except Exception:
            pass
    if data.startswith(b"\x1f\x8b"):
        try:
            found |= reachable_danger(gzip.decompress(data), depth + 1)
        except Exception:
            pass
    return found


# -- the corpus -----------------------------------------------------------------------------

class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _npy_object(obj) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([obj, 1], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def benign_corpus() -> list[bytes]:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    arrays = {"a": np.arange(3), "f": np.ones((2, 2), np.float32), "s": np.float64(1.5)}
    corpus = [_torch_bytes(model.state_dict()), _torch_bytes(optimizer.state_dict()),
              _torch_bytes(model.state_dict(), _use_new_zipfile_serialization=False)]
    corpus += [pickle.dumps(arrays, protocol=p) for p in range(6)]
    corpus += [pickle.dumps({"x": [1, 2.5, "s", b"b", (None, True)], "y": {frozenset([1]), 2}}, protocol=p)
               for p in range(6)]
    buffer = io.BytesIO()
    np.save(buffer, np.arange(5))
    corpus.append(buffer.getvalue())
    return corpus


def _crafted(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n(S'x'\ntR."


def malicious_corpus() -> list[bytes]:
    import functools
    import subprocess

    gadgets = [_Reduce(os.system, ("true",)), _Reduce(eval, ("1",)), _Reduce(subprocess.call, (["true"],)),
               _Reduce(functools.partial, (print, 1)), _Reduce(getattr, (print, "__call__"))]
    corpus = [pickle.dumps({"w": [1.0], "x": g}, protocol=p) for g in gadgets for p in (0, 2, 4, 5)]
    corpus += [_crafted("os", "system"), _crafted("builtins", "exec"), b"I0x10\n0" + _crafted("posix", "system")]
    corpus.append(_torch_bytes({"w": torch.ones(2), "x": _Reduce(os.system, ("true",))}))
    corpus.append(_npy_object(_Reduce(os.system, ("true",))))
    return corpus


BENIGN = benign_corpus()
MALICIOUS = malicious_corpus()


# -- mutations ------------------------------------------------------------------------------

def _zip(data: bytes, name: str, deflate: bool) -> bytes:
    buffer = io.BytesIO()
    info = zipfile.ZipInfo(name)  # a ZipInfo, so that even an empty name is written
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, data)
    return buffer.getvalue()


def _tar(data: bytes, name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name or "m")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _npy_header_then(data: bytes) -> bytes:
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


member_names = st.sampled_from(["data", "archive/data.pkl", "x.npy", "weights", "a\nb", ""])
# Fragments of opcodes and arguments, spliced in to reach the walker's corner cases.
tokens = st.lists(st.sampled_from([
    b"c", b"i", b"os\n", b"system\n", b"posix\n", b"builtins\n", b"exec\n", b"\x93", b"\x8c\x02os",
    b"\x8c\x06system", b"(", b")", b"t", b"R", b".", b"N", b"0", b"2", b"\x94", b"h\x00", b"q\x00",
    b"\x80\x02", b"\x80\x04", b"\x95" + struct.pack("<Q", 3), b"\x95" + struct.pack("<Q", 12), b"I0x1\n",
    b"S'x'\n", b"\x85", b"\x81", b"}", b"]", b"a", b"e", b"\x82\x01", b"P1\n", b"Q", b"\x97", b"\n",
]), min_size=1, max_size=12).map(b"".join)
seeds = st.one_of(st.sampled_from(BENIGN), st.sampled_from(MALICIOUS))


@st.composite
def mutated(draw) -> bytes:
    data = draw(st.one_of(seeds, tokens))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "prefix", "suffix", "zip", "tar", "npy",
                                     "gzip", "npz"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
        elif kind == "truncate" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.one_of(st.binary(max_size=8), st.sampled_from(MALICIOUS), tokens)) + data[i:]
        elif kind == "prefix":
            data = draw(st.one_of(st.sampled_from(BENIGN + MALICIOUS), st.binary(max_size=16))) + data
        elif kind == "suffix":
            data = data + draw(st.one_of(st.sampled_from(BENIGN + MALICIOUS), st.binary(max_size=16)))
        elif kind == "zip":
            data = _zip(data, draw(member_names), draw(st.booleans()))
        elif kind == "npz":
            data = _zip(_npy_header_then(data), "arr_0.npy", draw(st.booleans()))
        elif kind == "tar":
            data = _tar(data, draw(member_names))
        elif kind == "npy":
            data = _npy_header_then(data)
        elif kind == "gzip":
            data = gzip.compress(data)
    return data


# -- the properties -------------------------------------------------------------------------

def test_the_oracle_sees_every_malicious_seed():
    for data in MALICIOUS:
        assert reachable_danger(data), data[:40]
    for data in BENIGN:
        assert not reachable_danger(data)


def test_the_benign_corpus_is_clean():
    for data in BENIGN:
        result = scan_bytes(data, "x.pt")
        assert result.clean, result


@settings(max_examples=EXAMPLES, deadline=None, derandomize="BASTION_FUZZ_EXAMPLES" not in os.environ, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated(), st.sampled_from(["x.pt", "weights", "m.safetensors", "a.zip"]))
def test_never_clean_when_a_loader_would_import_a_bad_global(data, name):
    result = scan_bytes(data, name, LIMITS)
    assert not any(u.reason.startswith("scanner error") for u in result.unscannable), result.unscannable
    danger = reachable_danger(data)
    if danger:
        assert not result.clean, (danger, data[:80])
        if not result.unscannable:
            assert danger <= {f.global_name for f in result.findings}, (danger, result.findings)


@pytest.mark.parametrize("seed", range(len(MALICIOUS)))
def test_every_malicious_seed_is_found_in_every_wrapping(seed):
    data = MALICIOUS[seed]
    always_reachable = [data, _zip(data, "data", True), _zip(data, "", False), _tar(data, "a\nb"),
                        gzip.compress(data), _zip(_zip(data, "inner", True), "outer.zip", False),
                        data + BENIGN[3], _zip(data, "archive/data.pkl", False)]
    if not data.startswith((b"PK", b"\x93NUMPY")):  # a pickle stays reachable behind a pickle, or in an .npy
        always_reachable += [BENIGN[3] + data, _zip(_npy_header_then(data), "arr_0.npy", True)]
    for blob in always_reachable:
        danger = reachable_danger(blob)
        assert danger, blob[:60]
        result = scan_bytes(blob, "x", LIMITS)
        assert danger <= {f.global_name for f in result.findings}, (seed, blob[:60], danger, result)


_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
           torch.float32, torch.float64, torch.bool]


@settings(max_examples=max(EXAMPLES // 6, 10), deadline=None, derandomize="BASTION_FUZZ_EXAMPLES" not in os.environ,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_DTYPES), st.lists(st.integers(-300, 300), min_size=1, max_size=64)),
                min_size=1, max_size=6), st.booleans())
def test_checkpoints_of_any_tensors_are_clean(tensors, legacy):
    # Raw storage bytes are scanned as pickles too (a loader could unpickle any member): whatever
    # values they hold, they must not read as a dangerous or broken pickle.
    state = {f"t{i}": torch.tensor(values).to(dtype) for i, (dtype, values) in enumerate(tensors)}
    data = _torch_bytes(state, _use_new_zipfile_serialization=not legacy)
    result = scan_bytes(data, "ckpt.pt")
    assert result.clean, (result.findings, result.unscannable)
