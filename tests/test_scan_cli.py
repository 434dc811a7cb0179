"""`bastion scan` on directories and hostile files: every file examined, symlinks reported, exit
codes 0/1/2, and never a traceback or a raw control character from a file name or message."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.access.pickle_scan import scan_path
from bastion.cli import main

EVIL = b"cos\nsystem\n(S'true'\ntR."
ZOO_BUNDLE = Path(__file__).resolve().parents[1] / "src" / "bastion" / "models" / "zoo" / "mnist-cnn"


def _run(*args):
    result = CliRunner().invoke(main, ["scan", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def _assert_no_control_characters(text: str):
    for line in text.splitlines():
        assert all(ch.isprintable() for ch in line), repr(line)


def test_every_file_in_a_directory_is_scanned_whatever_its_name(tmp_path):
    (tmp_path / "README.md").write_text("# a model\n")
    (tmp_path / "bastion.toml").write_text("name = 'x'\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights").write_bytes(EVIL)  # no suffix at all
    (tmp_path / "sub" / "notes.txt").write_bytes(pickle.dumps({"ok": 1}))
    results = {Path(r.file).name: r for r in scan_path(tmp_path)}
    assert set(results) == {"README.md", "bastion.toml", "weights", "notes.txt"}
    assert [f.global_name for f in results["weights"].findings] == ["os.system"]
    assert results["notes.txt"].clean and results["notes.txt"].pickles == 1
    out = _run(tmp_path)
    assert out.exit_code == 1 and "weights: os.system (GLOBAL)" in out.output


def test_a_symlink_into_the_tree_is_followed_there_and_one_out_of_it_is_unscannable(tmp_path):
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    outside.mkdir()
    (tree / "real.pkl").write_bytes(EVIL)
    (tree / "alias.pkl").symlink_to(tree / "real.pkl")
    results = {Path(r.file).name: r for r in scan_path(tree)}
    assert results["alias.pkl"].clean and "scanned there" in results["alias.pkl"].note
    assert not results["real.pkl"].clean  # the target is scanned as itself

    (outside / "evil.pkl").write_bytes(EVIL)
    (tree / "real.pkl").write_bytes(pickle.dumps([1]))
    (tree / "link.pkl").symlink_to(outside / "evil.pkl")
    (tree / "linkdir").symlink_to(outside, target_is_directory=True)
    (tree / "dangling").symlink_to(tmp_path / "nothing")
    results = {Path(r.file).name: r for r in scan_path(tree)}
    for name in ("link.pkl", "linkdir", "dangling"):
        assert results[name].status == 2 and "symlink" in results[name].error, name
    out = _run(tree)
    assert out.exit_code == 2 and "link.pkl: unscannable: symlink to" in out.output
    assert _run(tree / "link.pkl").exit_code == 1  # a path named on the command line is followed


def test_special_files_are_unscannable_not_read(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # opening it for reading would block: it must not be opened so
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps([1]))
    results = {Path(r.file).name: r for r in scan_path(tmp_path)}
    assert results["fifo"].status == 2 and "FIFO" in results["fifo"].error
    assert _run(tmp_path / "fifo").exit_code == 2


def test_hostile_names_and_messages_are_printed_escaped_on_one_line(tmp_path):
    name = "evil\x1b[2J\nname\u202e.pkl"
    (tmp_path / name).write_bytes(EVIL)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("member\nwith\rcontrol\x07")
        info.size = len(EVIL)
        archive.addfile(info, io.BytesIO(EVIL))
    raw = bytearray(tar.getvalue())
    raw[:100] = EVIL.ljust(100, b"\0")  # a pickle/tar polyglot whose member name has newlines
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    (tmp_path / "poly.tar").write_bytes(bytes(raw))
    broken = bytearray(zipfile_bytes({"a\nb": EVIL}))
    broken[-22:] = b"PK\x05\x06" + b"\xff" * 18  # a central directory that points nowhere
    (tmp_path / "broken\n.zip").write_bytes(bytes(broken))
    out = _run(tmp_path)
    assert out.exit_code == 1
    _assert_no_control_characters(out.output)
    assert "evil\\x1b[2J\\nname\\u202e.pkl: os.system" in out.output
    assert "broken\\n.zip: unscannable:" in out.output


def zipfile_bytes(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return buffer.getvalue()


def test_encrypted_member_exits_2_with_one_line_per_problem(tmp_path):
    data = bytearray(zipfile_bytes({"data.pkl": pickle.dumps([1])}))
    data[data.find(b"PK\x01\x02") + 8] |= 1
    (tmp_path / "enc.zip").write_bytes(bytes(data))
    out = CliRunner().invoke(main, ["scan", str(tmp_path / "enc.zip")])
    assert out.exit_code == 2, out.output
    assert "data.pkl: unscannable: encrypted member" in out.output and "Traceback" not in out.output


def test_exit_codes_dangerous_wins_over_unscannable(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\xff not a pickle")
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps([1]))
    assert _run(tmp_path / "ok.pkl").exit_code == 0
    assert _run(tmp_path / "junk.pt").exit_code == 2
    (tmp_path / "evil").write_bytes(EVIL)
    assert _run(tmp_path).exit_code == 1
    assert _run(tmp_path / "missing.pkl").exit_code == 2


def test_json_report(tmp_path):
    (tmp_path / "evil").write_bytes(EVIL)
    (tmp_path / "junk.pkl").write_bytes(b"\xff")
    out = CliRunner().invoke(main, ["scan", "--json", str(tmp_path)])
    report = json.loads(out.output)
    assert out.exit_code == 1 and report["findings"] == 1 and report["unscannable"] == 1
    statuses = {Path(f["file"]).name: f["status"] for f in report["files"]}
    assert statuses == {"evil": "dangerous", "junk.pkl": "unscannable"}


def test_a_compression_bomb_is_unscannable_from_the_cli(tmp_path):
    (tmp_path / "bomb.zip").write_bytes(zipfile_bytes({"z": b"\0" * (3 << 20)}, zipfile.ZIP_DEFLATED))
    out = _run("--max-expanded-gib", 0.001, tmp_path / "bomb.zip")
    assert out.exit_code == 2 and "the limit" in out.output


@pytest.mark.skipif(not ZOO_BUNDLE.is_dir(), reason="the bundled zoo is not in this checkout")
def test_a_model_bundle_directory_is_clean():
    out = _run(ZOO_BUNDLE)
    assert out.exit_code == 0, out.output
    assert "model.safetensors: clean (safetensors file" in out.output
