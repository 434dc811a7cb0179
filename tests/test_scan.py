"""The pickle scanner flags every dangerous global (raw, any protocol, or inside a torch zip) and passes real checkpoints."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile

import pytest
import torch
from click.testing import CliRunner

from bastion.access.pickle_scan import scan_file, scan_path
from bastion.cli import main

DANGEROUS = [
    ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen"),
    ("runpy", "run_path"), ("pip", "main"), ("pydoc", "locate"), ("ctypes", "CDLL"), ("operator", "attrgetter"),
    ("builtins", "getattr"), ("shutil", "rmtree"), ("importlib", "import_module"), ("numpy", "load"),
]


def _short_str(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def craft(module: str, name: str, protocol: int) -> bytes:
    """A pickle calling module.name("x") at ``protocol``, built from opcodes (nothing is imported)."""
    if protocol <= 1:  # protocols 0 and 1 have no PROTO header
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n(S'x'\ntR."
    header = b"\x80" + bytes([protocol])
    if protocol <= 3:
        return header + b"c" + module.encode() + b"\n" + name.encode() + b"\nX\x01\x00\x00\x00x\x85R."
    # Protocol 4/5: STACK_GLOBAL, with the names memoised first and fetched back through the memo,
    # and a no-op push/pop between them: the scanner must follow the stack, not just look back two ops.
    body = (_short_str(module) + b"\x94" + _short_str(name) + b"\x94" + b"0"  # POP the name
            + b"h\x00" + b"N0" + b"h\x01" + b"\x93" + _short_str("x") + b"\x85R.")
    frame = b"\x95" + struct.pack("<Q", len(body))
    return header + frame + body


@pytest.mark.parametrize("module, name", DANGEROUS)
@pytest.mark.parametrize("protocol", range(6))
def test_crafted_pickles_are_flagged(tmp_path, module, name, protocol):
    path = tmp_path / "evil.pkl"
    path.write_bytes(craft(module, name, protocol))
    result = scan_file(path)
    assert result.error is None, result.error
    assert [f.global_name for f in result.findings] == [f"{module}.{name}"]
    assert result.findings[0].reason


def test_craft_helper_builds_real_pickles():
    # The opcode streams above are valid pickles: unpickling the harmless ones calls the named function.
    for protocol in range(6):
        assert pickle.loads(craft("builtins", "len", protocol)) == 1


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", range(6))
def test_pickles_made_by_pickle_dumps_are_flagged(tmp_path, protocol):
    import os
    import subprocess

    for fn, expected in ((os.system, "posix.system"), (subprocess.Popen, "subprocess.Popen"), (eval, "builtins.eval")):
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps({"weights": [1, 2], "x": _Reduce(fn, ("echo",))}, protocol=protocol))
        assert expected in {f.global_name for f in scan_file(path).findings}


def _torch_zip_with(tmp_path, payload: bytes):
    clean = tmp_path / "clean.pt"
    torch.save({"w": torch.ones(2)}, clean)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = payload if info.filename.endswith("data.pkl") else src.read(info)
            dst.writestr(info, data)
    return evil


@pytest.mark.parametrize("module, name", DANGEROUS)
def test_dangerous_pickle_inside_a_torch_zip(tmp_path, module, name):
    evil = _torch_zip_with(tmp_path, craft(module, name, 2))
    findings = scan_file(evil).findings
    assert [(f.global_name, f.member.endswith("data.pkl")) for f in findings] == [(f"{module}.{name}", True)]


def test_torch_checkpoints_are_clean(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 1, 4, 4)).sum().backward()
    optimizer.step()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(optimizer.state_dict(), tmp_path / "optim.pth")
    torch.save(torch.arange(6, dtype=torch.int16).reshape(2, 3), tmp_path / "tensor.bin")
    torch.save({"model": model.state_dict(), "epoch": 3, "p": torch.nn.Parameter(torch.ones(1))}, tmp_path / "c.ckpt")
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    results = scan_path(tmp_path)
    assert len(results) == 5
    for result in results:
        assert result.findings == [] and result.error is None, result
    assert next(r for r in results if r.file.endswith("legacy.pt")).pickles == 5


def test_legacy_format_payload_after_the_magic_number(tmp_path):
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    path = tmp_path / "legacy.pt"
    path.write_bytes(magic + pickle.dumps(1001, protocol=2) + craft("os", "system", 2))
    assert [f.global_name for f in scan_file(path).findings] == ["os.system"]


def test_unreadable_inputs(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\xff\xfe not a pickle")
    (tmp_path / "empty.pkl").write_bytes(b"")
    assert "not a pickle" in scan_file(tmp_path / "junk.pt").error
    assert scan_file(tmp_path / "empty.pkl").error == "empty file"
    assert scan_file(tmp_path / "missing.pt").error == "no such file"


def test_cli_exit_codes_and_json(tmp_path):
    runner = CliRunner()
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    (tmp_path / "evil.pkl").write_bytes(craft("pip", "main", 4))
    (tmp_path / "junk.bin").write_bytes(b"\xff")
    clean = runner.invoke(main, ["scan", str(tmp_path / "ok.pt")])
    assert clean.exit_code == 0 and "clean" in clean.output
    found = runner.invoke(main, ["scan", str(tmp_path / "ok.pt"), str(tmp_path / "evil.pkl")])
    assert found.exit_code == 1
    assert "evil.pkl: pip.main (STACK_GLOBAL): installs packages" in found.output
    as_json = runner.invoke(main, ["scan", "--json", str(tmp_path / "evil.pkl")])
    assert as_json.exit_code == 1
    report = json.loads(as_json.output)
    assert report["findings"] == 1 and report["files"][0]["findings"][0]["global"] == "pip.main"
    assert runner.invoke(main, ["scan", str(tmp_path / "junk.bin")]).exit_code == 2


def test_a_second_pickle_in_the_same_file_is_scanned_too(tmp_path):
    path = tmp_path / "two.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4) + craft("runpy", "run_path", 4))
    assert [f.global_name for f in scan_file(path).findings] == ["runpy.run_path"]


def test_trailing_bytes_that_are_not_a_pickle_raise_no_alarm(tmp_path):
    path = tmp_path / "tail.pkl"
    path.write_bytes(pickle.dumps([1, 2], protocol=2) + b"\xff\xff garbage, never unpickled")
    result = scan_file(path)
    assert result.findings == [] and result.error is None and result.pickles == 1


def test_trailing_bytes_that_name_a_global_are_a_finding(tmp_path):
    # This tail once counted as "not a pickle", but a second pickle.load on the file imports
    # os.system before it reaches the bad byte: a global on the way is a global imported.
    path = tmp_path / "tail.pkl"
    path.write_bytes(pickle.dumps([1, 2], protocol=2) + b"cos\nsystem\n\xff\xff garbage, never unpickled")
    result = scan_file(path)
    assert [f.global_name for f in result.findings] == ["os.system"] and result.pickles == 1
    assert "truncated or malformed" in result.error
