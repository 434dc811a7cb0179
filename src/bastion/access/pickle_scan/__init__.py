"""Scan files for pickles that would run code when loaded, without loading or running anything.

Unpickling imports and calls whatever globals a pickle names, with arguments it builds. The
scanner finds every pickle stream that any loader could reach, reaches it the way that loader
would, walks its opcodes as the unpickler reads them (``opcodes``), and checks each global it
would import against an *allowlist* of what a plain tensor checkpoint needs (``allowlist``).

The rule
--------
- **Every file, whatever its name.** A directory scan examines every file in the tree, with or
  without a suffix. A symlink in the tree is followed only when its target lies inside the
  scanned tree (the target is then scanned as itself, and the link is noted); a link that
  leads out of the tree, dangles or loops is *unscannable*, as is anything that is not a regular
  file (a FIFO, a socket, a device). A path named on the command line is followed wherever it
  points. A file's name never makes the scanner skip it or call it clean; it only makes a file
  that turns out to be none of the formats below unscannable when its name claims one of them.
- **Every view of every stream** (``streams``, ``views``): the pickles in a row from offset 0
  (what ``pickle.load`` and, for a file that is not a zip, ``torch.load`` read), a zip archive
  found where zip readers find it (its end-of-central-directory record, so a pickle glued in
  front of a torch zip is seen both ways), a tar archive (which ``torch.load`` tries first), an
  ``.npy`` object-array payload (which ``np.load(allow_pickle=True)`` unpickles), a compressed
  stream (which ``joblib.load`` and ``pandas.read_pickle`` decompress), and safetensors,
  validated. Archive members are taken by their directory entries, whatever their names;
  containers inside containers are opened up to :class:`ScanLimits` ``max_depth`` levels.
- **Every pickle in a sequence.** After a complete pickle, the bytes that follow are read as the
  next pickle, as a loader calling ``pickle.load`` again would. They are data, not a pickle, only
  where they do not begin like one: a run that names a global or declares a protocol and then
  breaks off is unscannable. torch's legacy formats are followed as torch reads them past their
  raw storage bytes (``torch_legacy``), and those bytes are also read on as pickles.
- **Every global on the way.** A global named before a pickle breaks off is imported all the
  same, so it is checked too; in a stream no loader is known to expect to be a pickle (an
  archive member not named ``*.pkl``), that is the only consequence of breaking off: its bytes
  are data, the way raw tensor storage in a torch zip is.
- **Where readers disagree, no verdict.** A zip whose central directory is not where its end
  record says (zipfile and torch's reader then list different members), or a pickle argument
  running past the end of its FRAME (pickle.py and _pickle.c then read different opcodes), is
  unscannable.

The scanner assumes the loading process imports from installed packages and the standard
library: a module whose top-level name is not a Python identifier (``mport torch``, what
``pickle.load`` makes of a Python source file) is taken to be one no import can find.

Outcome: **clean** (exit 0) only when every reachable stream was examined completely and every
global it names is allowed; **dangerous** (exit 1) when any stream would import a global outside
the allowlist; otherwise **unscannable** (exit 2), with a reason for each stream that could not
be examined: an encrypted member, a corrupt archive or compressed stream, a truncated or
malformed pickle in a place a loader reads one, a symlink out of the tree, or a limit reached
(nesting depth, decompressed bytes, members, opcodes: a zip bomb is unscannable, not clean).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bastion.access.pickle_scan.allowlist import ALLOWED_GLOBALS, danger_reason, is_allowed
from bastion.access.pickle_scan.report import (
    CLEAN, DANGEROUS, UNSCANNABLE, Finding, ScanLimits, ScanResult, Unscannable, printable,
)
from bastion.access.pickle_scan.streams import Stream, StreamScanner

__all__ = [
    "ALLOWED_GLOBALS", "CLEAN", "DANGEROUS", "UNSCANNABLE", "Finding", "ScanLimits", "ScanResult", "Unscannable",
    "danger_reason", "is_allowed", "printable", "scan_bytes", "scan_file", "scan_path",
]

_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def scan_path(path: str | Path, limits: ScanLimits | None = None) -> list[ScanResult]:
    """Scan a file, or every entry of a directory tree (one result per entry, in sorted order)."""
    p = Path(path)
    if not p.is_dir():
        return [scan_file(p, limits)]
    return _scan_tree(p, limits or ScanLimits())


def scan_file(path: str | Path, limits: ScanLimits | None = None, *, follow_symlinks: bool = True) -> ScanResult:
    """Scan one file. Never raises: what cannot be read is reported in ``result.unscannable``."""
    result = ScanResult(str(path))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return _unscannable(result, "no such file")
    except OSError as exc:
        return _unscannable(result, f"cannot open ({exc.strerror or exc})")
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((k for test, k in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            return _unscannable(result, f"not a regular file ({kind})" if kind != "a directory"
                                else "a directory (scan_path walks directories)")
        _scan_stream(result, Stream(fh, info.st_size, (), Path(path).name, True), limits)
    return result


def scan_bytes(data: bytes, name: str = "<bytes>", limits: ScanLimits | None = None) -> ScanResult:
    """Scan a file's content held in memory; ``name`` is what the file would be called."""
    import io

    result = ScanResult(name)
    _scan_stream(result, Stream(io.BytesIO(data), len(data), (), name, True), limits)
    return result


def _scan_stream(result: ScanResult, stream: Stream, limits: ScanLimits | None) -> None:
    try:
        StreamScanner(result, limits or ScanLimits()).scan(stream)
    except OSError as exc:
        result.unscannable.append(Unscannable(result.file, None, f"cannot read ({exc.strerror or exc})"))
    except Exception as exc:  # a bug in the scanner: fail closed, and say so
        result.unscannable.append(Unscannable(result.file, None, f"scanner error (a bug, please report it): "
                                                                 f"{type(exc).__name__}: {exc}"))


def _unscannable(result: ScanResult, reason: str) -> ScanResult:
    result.unscannable.append(Unscannable(result.file, None, reason))
    return result


def _scan_tree(root: Path, limits: ScanLimits) -> list[ScanResult]:
    real_root = os.path.realpath(root)
    results: list[ScanResult] = []

    def unlistable(exc: OSError) -> None:
        results.append(_unscannable(ScanResult(str(exc.filename)), f"cannot list directory ({exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):  # never descends into symlinks
        dirnames.sort()
        linked_dirs = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames + linked_dirs):
            results.append(_scan_entry(os.path.join(dirpath, name), real_root, limits))
    return results


def _scan_entry(path: str, real_root: str, limits: ScanLimits) -> ScanResult:
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return _unscannable(ScanResult(path), f"cannot read ({exc.strerror})")
    if stat.S_ISLNK(mode):
        return _symlink(path, real_root)
    return scan_file(path, limits, follow_symlinks=False)


def _symlink(path: str, real_root: str) -> ScanResult:
    result = ScanResult(path)
    try:
        target = os.readlink(path)
        resolved = os.path.realpath(path, strict=True)
    except (OSError, RuntimeError) as exc:  # dangling, a loop, unreadable
        return _unscannable(result, f"symlink that cannot be followed ({getattr(exc, 'strerror', None) or exc})")
    if os.path.commonpath([real_root, resolved]) != real_root:
        return _unscannable(result, f"symlink to {target}, outside the scanned directory: not followed "
                                    "(scan its target itself)")
    result.notes.append(f"symlink to {os.path.relpath(resolved, real_root)}, scanned there")
    return result
