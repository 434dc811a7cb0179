"""Every stream a loader reaches is scanned the way that loader reaches it (issue 10's classes, and variants).

Where it can be shown cheaply, the test also proves the loader really reaches the pickle: the
"dangerous" global is then ``_mark``, a harmless function of this module that records its call,
and the real loader (pickle, torch.load, np.load) is run to see it called.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import struct
import tarfile
import types
import zipfile
import zlib

import numpy as np
import pytest
import torch

from bastion.access.pickle_scan import CLEAN, DANGEROUS, UNSCANNABLE, ScanLimits, scan_bytes

MARKS: list = []


def _mark(tag):
    MARKS.append(tag)
    return tag


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


MARK_NAME = f"{_mark.__module__}._mark"
EVIL = pickle.dumps({"w": [1.0], "x": _Call(os.system, "true")}, protocol=4)
MARKED = pickle.dumps({"w": [1.0], "x": _Call(_mark, "ran")}, protocol=2)


def _names(result) -> list[str]:
    return [f.global_name for f in result.findings]


def _torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _zip(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            archive.writestr(info, data)
    return buffer.getvalue()


def _tar(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _marks_after(load) -> list:
    MARKS.clear()
    try:
        load()
    except Exception:
        pass
    return list(MARKS)


# -- polyglots and views -----------------------------------------------------------------------

def test_raw_pickle_glued_in_front_of_a_torch_zip_is_seen_both_ways():
    polyglot = MARKED + _torch_bytes({"w": torch.ones(2)})
    assert _marks_after(lambda: torch.load(io.BytesIO(polyglot), weights_only=False)) == ["ran"]
    result = scan_bytes(polyglot, "model.pt")
    assert _names(result) == [MARK_NAME] and result.findings[0].member is None
    assert result.pickles == 2  # the glued pickle, and the zip's data.pkl


def test_pickle_glued_in_front_of_a_zip_whose_own_pickle_is_dangerous_too():
    polyglot = EVIL + _torch_bytes({"x": _Call(os.system, "true")})
    result = scan_bytes(polyglot, "model.pt")
    assert sorted((f.member or "", f.global_name) for f in result.findings) == [
        ("", "posix.system"), ("archive/data.pkl", "posix.system")]


def test_pickle_tar_polyglot_is_scanned_as_a_pickle_and_as_a_tar():
    header = bytearray(_tar({"member": EVIL}))
    name = b"cos\nsystem\n(S'true'\ntR."  # the tar header's name field is a pickle
    header[:100] = name.ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    data = bytes(header)
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames()
    result = scan_bytes(data, "x.tar")
    assert sorted((f.member is None, f.global_name) for f in result.findings) == [
        (False, "posix.system"), (True, "os.system")]


def test_zip_members_are_scanned_whatever_their_names():
    for name in ("data", "weights", "archive/data/0", "", "a\nb\x1b[2J", "x.npy", "README"):
        result = scan_bytes(_zip({name: EVIL}), "a.zip")
        assert [(f.member, f.global_name) for f in result.findings] == [(name or None, "posix.system")], name


def test_duplicate_member_names_are_both_scanned():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"ok": 1}))
        with pytest.warns(UserWarning):
            archive.writestr("archive/data.pkl", EVIL)
    assert _names(scan_bytes(buffer.getvalue(), "m.pt")) == ["posix.system"]


def test_zips_inside_zips_up_to_the_depth_limit():
    nested = EVIL
    for level in range(4):
        nested = _zip({f"level{level}.zip" if level else "data": nested}, zipfile.ZIP_DEFLATED)
    result = scan_bytes(nested, "a.zip")
    assert [f.member for f in result.findings] == ["level3.zip!level2.zip!level1.zip!data"]
    deeper = _zip({"level4.zip": nested})
    result = scan_bytes(deeper, "a.zip")
    assert result.status == UNSCANNABLE and "nested more than 4 levels" in result.error


def test_a_zip_whose_readers_disagree_on_its_directory_is_unscannable():
    # Member E at offset 0, member B after it; the end record points at a directory listing E
    # (what torch's reader, which takes offsets as recorded, reads), while zipfile, which looks
    # for the directory right before the end record and shifts offsets to match, sees only B.
    def parts(blob):
        end = blob.rfind(b"PK\x05\x06")
        size, offset = struct.unpack("<II", blob[end + 12:end + 20])
        return blob[:offset], blob[offset:offset + size]

    evil_local, evil_directory = parts(_zip({"data.pkl": EVIL}))
    good_local, good_directory = parts(_zip({"data.pkl": pickle.dumps(None)}))
    good_directory = bytearray(good_directory)
    good_directory[42:46] = struct.pack("<I", len(evil_local) - len(evil_directory))
    recorded = len(evil_local) + len(good_local)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(good_directory), recorded, 0)
    blob = evil_local + good_local + evil_directory + bytes(good_directory) + end
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert [archive.read(i) for i in archive.infolist()] == [pickle.dumps(None)]  # zipfile's view
    assert blob[recorded:recorded + 4] == b"PK\x01\x02"  # the directory the end record names
    result = scan_bytes(blob, "model.pt")
    assert not result.clean and "disagree" in result.error


def test_tar_and_gzip_inside_a_zip():
    blob = _zip({"inner.tar": _tar({"x": gzip.compress(EVIL)})})
    assert [f.member for f in scan_bytes(blob, "a.zip").findings] == ["inner.tar!x![gzip]"]


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress, zlib.compress,
                                      lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE)])
def test_compressed_pickles_are_decompressed(compress):
    assert _names(scan_bytes(compress(EVIL), "model.pkl")) == ["posix.system"]


def test_joblib_files_are_scanned(tmp_path):
    joblib = pytest.importorskip("joblib")
    for compress in (0, 3, ("gzip", 3), ("lzma", 3), ("bz2", 3)):
        path = tmp_path / "m.joblib"
        joblib.dump({"x": _Call(os.system, "true")}, path, compress=compress)
        assert "posix.system" in _names(scan_bytes(path.read_bytes(), "m")), compress


def test_unsupported_compression_is_unscannable():
    assert scan_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20, "m").status == UNSCANNABLE


# -- sequences ---------------------------------------------------------------------------------

def test_every_pickle_in_a_row_is_scanned():
    data = pickle.dumps([1]) + pickle.dumps("x", protocol=0) + EVIL + pickle.dumps(2)
    result = scan_bytes(data, "x.pkl")
    assert _names(result) == ["posix.system"] and result.pickles == 4


def test_a_pickle_after_a_legacy_torch_files_five_pickles_and_storages():
    legacy = _torch_bytes({"w": torch.ones(3), "h": torch.ones(2, dtype=torch.float16)},
                          _use_new_zipfile_serialization=False)
    data = legacy + MARKED

    def torch_then_pickle():
        f = io.BytesIO(data)
        torch.load(f, weights_only=False)
        pickle.load(f)

    assert _marks_after(torch_then_pickle) == ["ran"]
    result = scan_bytes(data, "model.pt")
    assert _names(result) == [MARK_NAME] and result.pickles == 6
    assert scan_bytes(legacy, "model.pt").clean


def test_a_pickle_inside_legacy_storage_bytes_that_a_loop_loader_reads():
    legacy = bytearray(_torch_bytes({"w": torch.ones(3)}, _use_new_zipfile_serialization=False))
    # Replace the storage record (int64 count + 12 bytes) by a pickle: a loader calling
    # pickle.load a sixth time unpickles it.
    evil = b"cos\nsystem\n(S'x'\ntR."
    data = bytes(legacy[:-20]) + evil
    assert _names(scan_bytes(data, "model.pt")) == ["os.system"]


def test_a_truncated_legacy_file_is_unscannable():
    legacy = _torch_bytes({"w": torch.ones(3)}, _use_new_zipfile_serialization=False)
    assert scan_bytes(legacy[:60], "model.pt").status == UNSCANNABLE


def test_torch_legacy_tar_layout_is_followed(tmp_path):
    # torch's oldest format: storages/tensors/pickle members with pickles between raw bytes.
    storages = (pickle.dumps(1, protocol=2)
                + b"\x80\x02(X\x01\x00\x00\x00kX\x03\x00\x00\x00cpuctorch\nFloatStorage\nt."  # (key, cpu, class)
                + struct.pack("<q", 2) + b"\0" * 8
                + MARKED)  # the storage-views pickle torch.load reads next
    tensors = pickle.dumps(0, protocol=2)
    blob = _tar({"storages": storages, "tensors": tensors, "pickle": pickle.dumps({"a": 1}, protocol=2)})
    (tmp_path / "old.pt").write_bytes(blob)  # torch tries the tar format only on a real file
    recorder = _recording_pickle_module()
    with pytest.raises(Exception):
        torch.load(tmp_path / "old.pt", pickle_module=recorder, weights_only=False)
    assert MARK_NAME in recorder.seen  # torch.load reaches the views pickle
    assert MARK_NAME in _names(scan_bytes(blob, "old.pt"))


def _recording_pickle_module():
    seen = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.append(f"{module}.{name}")
            if f"{module}.{name}" == MARK_NAME:
                raise pickle.UnpicklingError("stop here")
            return super().find_class(module, name)

    return types.SimpleNamespace(Unpickler=Recorder, load=lambda f, **kw: Recorder(f, **kw).load(),
                                 __name__="recorder", seen=seen)


# -- numpy -------------------------------------------------------------------------------------

def test_npy_object_array_is_unpickled_by_np_load_and_flagged():
    data = _npy(np.array([_Call(_mark, "npy"), 1], dtype=object))
    assert _marks_after(lambda: np.load(io.BytesIO(data), allow_pickle=True)) == ["npy"]
    result = scan_bytes(data, "x.npy")
    assert _names(result) == [MARK_NAME] and result.findings[0].offset > 10


def test_npz_object_arrays_whatever_the_member_name():
    buffer = io.BytesIO()
    np.savez(buffer, ok=np.arange(3), bad=np.array([_Call(os.system, "x")], dtype=object))
    result = scan_bytes(buffer.getvalue(), "x.npz")
    assert [(f.member, f.global_name) for f in result.findings] == [("bad.npy", "posix.system")]
    renamed = _zip({"weights": _npy(np.array([_Call(_mark, "z")], dtype=object))})
    assert _marks_after(lambda: np.load(io.BytesIO(renamed), allow_pickle=True)["weights"]) == ["z"]
    assert _names(scan_bytes(renamed, "x.npz")) == [MARK_NAME]


def test_npy_of_plain_arrays_is_clean_and_a_broken_one_is_not():
    assert scan_bytes(_npy(np.arange(6).reshape(2, 3)), "x.npy").clean
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=np.ones(4), b=np.arange(3))
    assert scan_bytes(buffer.getvalue(), "x.npz").clean
    assert scan_bytes(b"\x93NUMPY\x01\x00\x05\x00{'de", "x.npy").status == UNSCANNABLE
    truncated = _npy(np.array([{"a": 1}], dtype=object))[:-3]
    assert scan_bytes(truncated, "x.npy").status == UNSCANNABLE


@pytest.mark.parametrize("protocol", range(6))
def test_numpy_array_pickles_are_not_false_positives(protocol):
    objects = [np.arange(3), np.ones((2, 2), np.float32), np.array([True]), np.zeros(2, complex),
               np.zeros(2, dtype=[("a", "<f4"), ("b", "<i8")]), np.array(["2020-01-01"], dtype="datetime64[D]"),
               np.asfortranarray(np.ones((2, 3))), np.arange(10)[::2], np.array(5), np.float64(1.5), np.int64(3),
               np.array(["ab"]), np.array([b"ab"]), np.arange(3, dtype=">i4"), np.ones(2, np.float16),
               np.random.RandomState(0).get_state(), np.array([1, "a", None], dtype=object)]
    result = scan_bytes(pickle.dumps(objects, protocol=protocol), "arrays.pkl")
    assert result.clean, result.findings


# -- safetensors -------------------------------------------------------------------------------

def test_a_pickle_named_safetensors_is_scanned_as_a_pickle():
    assert _names(scan_bytes(EVIL, "model.safetensors")) == ["posix.system"]
    benign = scan_bytes(pickle.dumps({"w": [1.0]}), "model.safetensors")
    assert benign.clean and benign.pickles == 1


def test_safetensors_is_validated_not_trusted_by_name():
    from safetensors.torch import save

    real = save({"w": torch.ones(3)})
    assert scan_bytes(real, "model.safetensors").clean
    header_len = int.from_bytes(real[:8], "little")
    lies = (header_len + 10_000).to_bytes(8, "little") + real[8:]
    assert scan_bytes(lies, "model.safetensors").status == UNSCANNABLE  # header beyond the file
    bad_offsets = real.replace(b"[0,12]", b"[0,99]")
    assert bad_offsets != real and scan_bytes(bad_offsets, "model.safetensors").status == UNSCANNABLE


# -- unscannable ---------------------------------------------------------------------------------

def test_encrypted_zip_members_are_unscannable():
    data = bytearray(_torch_bytes({"w": torch.ones(2)}))
    at = data.find(b"PK\x01\x02")
    data[at + 8] |= 1  # the encrypted flag of the first central-directory entry (data.pkl)
    result = scan_bytes(bytes(data), "model.pt")
    assert result.status == UNSCANNABLE and "encrypted" in result.error


def test_truncated_and_malformed_pickles_are_unscannable():
    state = _torch_bytes({"w": torch.ones(2)}, _use_new_zipfile_serialization=False)
    for data, name in ((pickle.dumps({"a": [1, 2, 3]}, protocol=4)[:-4], "x.pkl"),
                       (pickle.dumps({"a": 1}, protocol=2)[:-1], "weights"),  # no suffix: PROTO then cut off
                       (state[:len(state) // 3], "m.pt"),
                       (_torch_bytes({"w": torch.ones(2)})[:-40], "m.pt")):
        result = scan_bytes(data, name)
        assert result.status == UNSCANNABLE, (name, result)
    assert _names(scan_bytes(EVIL[:-2], "x.pkl")) == ["posix.system"]  # truncated, its global still counts


def test_limits_make_files_unscannable_never_clean():
    bomb = _zip({"zeros": b"\0" * (2 << 20)}, zipfile.ZIP_DEFLATED)
    assert len(bomb) < 10_000
    result = scan_bytes(bomb, "a.zip", ScanLimits(max_expanded_bytes=1 << 20))
    assert result.status == UNSCANNABLE and "the limit" in result.error
    many = _zip({f"m{i}": b"x" for i in range(20)})
    assert scan_bytes(many, "a.zip", ScanLimits(max_members=5)).status == UNSCANNABLE
    big = pickle.dumps(list(range(5000)))
    assert scan_bytes(big, "x.pkl", ScanLimits(max_opcodes=100)).status == UNSCANNABLE
    assert scan_bytes(gzip.compress(b"\0" * (2 << 20)), "x.gz", ScanLimits(max_expanded_bytes=1 << 20)).status \
        == UNSCANNABLE


def test_an_argument_running_past_its_frame_is_unscannable():
    body = b"\x8c\x08builtinsco"  # a FRAME that ends inside the GLOBAL's module line
    data = b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body + b"s\nsystem\n(S'x'\ntR."
    result = scan_bytes(data, "x.pkl")
    assert result.status in (DANGEROUS, UNSCANNABLE) and "FRAME" in (result.error or "")


def test_extension_codes_are_unscannable_where_a_pickle_is_expected():
    result = scan_bytes(b"\x80\x02\x82\x05)R.", "x.pkl")
    assert result.status == UNSCANNABLE and "extension code 5" in result.error
    raw_storage = _zip({"archive/data/0": b"\x84" + bytes(range(64))})
    assert scan_bytes(raw_storage, "m.zip").clean  # raw tensor bytes that happen to start like EXT4


# -- the walker reads as the unpickler does, not as pickletools does -----------------------------

def test_opcodes_pickletools_rejects_but_the_unpickler_accepts():
    module, name = MARK_NAME.rsplit(".", 1)
    data = f"I0x10\n0c{module}\n{name}\n(S'hex'\ntR.".encode()
    assert _marks_after(lambda: pickle.loads(data)) == ["hex"]
    assert _names(scan_bytes(data, "x")) == [MARK_NAME]


def test_a_global_whose_name_line_ends_the_data_still_imports_its_module():
    data = b"cantigravity\n"  # pickle.py imports antigravity before it finds the name empty
    assert _names(scan_bytes(data, "x.pkl")) == ["antigravity."]


def test_nul_after_a_module_name_still_imports_it():
    data = b"cos\x00hidden\nsystem\n(S'x'\ntR."  # "os\0hidden" is the frozen os module
    assert _names(scan_bytes(data, "x")) == ["os\x00hidden.system"]


def test_computed_names_are_findings():
    # _codecs.encode("bf", "rot13") is "os", built at load time from an allowed call.
    data = b"\x80\x04\x8c\x07_codecs\x8c\x06encode\x93\x8c\x02bf\x8c\x05rot13\x86R\x8c\x06system\x93."
    assert _names(scan_bytes(data, "x.pkl")) == ["<computed>"]


# -- the benign corpus stays clean -----------------------------------------------------------------

def test_benign_checkpoints_are_clean():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 1, 4, 4)).sum().backward()
    optimizer.step()
    checkpoint = {"model": model.state_dict(), "optim": optimizer.state_dict(), "epoch": 3,
                  "rng": np.random.RandomState(0).get_state(), "labels": torch.tensor([99, 10, 10, 3])}
    for blob in (_torch_bytes(checkpoint), _torch_bytes(checkpoint, _use_new_zipfile_serialization=False),
                 _torch_bytes(model.state_dict(), pickle_protocol=4), gzip.compress(_torch_bytes(checkpoint))):
        result = scan_bytes(blob, "ckpt.pt")
        assert result.clean, result


def test_text_files_are_no_pickle_data():
    for text in (b"import torch\nimport numpy\n", b"class Net(nn.Module):\n    pass\n", b"# README\n",
                 b'{"a": 1}\n', b"[tool]\nname = 'x'\n"):
        result = scan_bytes(text, "notes")
        assert result.status == CLEAN and result.note.startswith("no pickle data"), text
    assert scan_bytes(b"\xff\xfe junk", "model.pt").status == UNSCANNABLE  # named like a pickle
