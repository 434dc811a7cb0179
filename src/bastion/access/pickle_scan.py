"""Scan pickle-based model files for code they would run when loaded, without loading them.

Unpickling calls whatever callables the pickle names (``GLOBAL``, ``STACK_GLOBAL``,
``INST``, extension codes) with arguments it builds. This scanner walks the
opcodes with :func:`pickletools.genops` (which only parses), follows the stack
and memo far enough to know every name a ``STACK_GLOBAL`` resolves to, and
checks each against an *allowlist* of what a plain tensor checkpoint needs
(torch's tensor rebuild helpers, storages, dtypes, ``collections.OrderedDict``,
...). Anything else is a finding, whatever it is called: a blocklist would
miss the gadget nobody listed yet.

Files: raw pickles (``.pkl``; torch's legacy format, which is several pickles
in a row) and torch zip archives (every ``*.pkl`` member).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import re
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
MAX_MEMBER_BYTES = 512 * 1024 * 1024
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PICKLES = 5  # magic, protocol, sys info, the object, storage keys; then raw storage bytes

ALLOWED_GLOBALS = frozenset({
    "collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset", "builtins.bytearray",
    "builtins.complex", "builtins.slice", "_codecs.encode",  # _codecs.encode: how protocol 2 stores bytes
    "torch.Size", "torch.device", "torch.Tensor", "torch.nn.parameter.Parameter", "torch.serialization._get_layout",
    "torch.storage.TypedStorage", "torch.storage.UntypedStorage", "torch._tensor._rebuild_from_type_v2",
    "torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.contiguous_format", "torch.channels_last",
    "torch.preserve_format",
})
_ALLOWED_PATTERNS = (
    re.compile(r"torch\._utils\._rebuild_(tensor|tensor_v2|tensor_v3|parameter|parameter_with_state|qtensor|"
               r"sparse_tensor|nested_tensor|meta_tensor_no_storage|device_tensor_from_cpu_tensor|"
               r"device_tensor_from_numpy|wrapper_subclass)"),
    re.compile(r"torch\.(cuda\.)?(sparse\.)?[A-Z][A-Za-z0-9]*(Storage|Tensor)"),
    re.compile(r"torch\.(bool|bfloat16|half|float|double|long|int|short|u?int[0-9]+|float[0-9]+(_e[0-9]m[0-9](fn|fnuz"
               r"|fnu)?|_e2m1fn_x2)?|complex[0-9]+|bits[0-9x]+|q(u)?int[0-9x]+|per_(tensor|channel)_[a-z_]+)"),
)

_REASONS = (
    (("os.", "posix.", "nt.", "subprocess.", "pty.", "commands."), "runs shell commands or touches the OS"),
    (("builtins.eval", "builtins.exec", "builtins.compile", "__builtin__.eval", "__builtin__.exec", "code.",
      "codeop."), "executes arbitrary Python code"),
    (("builtins.getattr", "__builtin__.getattr", "operator.attrgetter", "operator.methodcaller",
      "builtins.setattr", "builtins.delattr", "builtins.vars", "builtins.globals"),
     "reaches any attribute: a gadget that leads to calling anything"),
    (("builtins.__import__", "importlib.", "pydoc.locate", "pkgutil.", "imp."), "imports arbitrary modules"),
    (("runpy.",), "runs a Python file or module"),
    (("pip.", "setuptools.", "ensurepip."), "installs packages, running their setup code"),
    (("ctypes.", "_ctypes.", "cffi."), "loads and calls native code"),
    (("shutil.", "tempfile.", "pathlib.", "builtins.open", "io.", "_io."), "reads, writes or deletes files"),
    (("numpy.load", "numpy.lib.npyio", "pickle.", "_pickle.", "dill.", "joblib.", "torch.load", "marshal."),
     "loads a further file or pickle, which can run code of its own"),
    (("socket.", "urllib.", "http.", "requests.", "ftplib.", "smtplib."), "opens network connections"),
    (("webbrowser.", "signal.", "sys.", "threading.", "multiprocessing."), "controls the interpreter or process"),
)


@dataclass(frozen=True)
class Finding:
    file: str
    member: str | None
    global_name: str
    opcode: str
    reason: str

    @property
    def location(self) -> str:
        return f"{self.file}:{self.member}" if self.member else self.file

    def to_dict(self) -> dict:
        return {"file": self.file, "member": self.member, "global": self.global_name, "opcode": self.opcode,
                "reason": self.reason}


@dataclass
class ScanResult:
    file: str
    findings: list[Finding] = field(default_factory=list)
    globals_seen: set[str] = field(default_factory=set)
    pickles: int = 0
    error: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "findings": [f.to_dict() for f in self.findings], "pickles": self.pickles,
                "globals": sorted(self.globals_seen), "error": self.error, "note": self.note}


def is_allowed(global_name: str) -> bool:
    return global_name in ALLOWED_GLOBALS or any(p.fullmatch(global_name) for p in _ALLOWED_PATTERNS)


def danger_reason(global_name: str) -> str:
    for prefixes, reason in _REASONS:
        if any(global_name == p.rstrip(".") or global_name.startswith(p) for p in prefixes):
            return reason
    return "not in the allowlist of a plain tensor checkpoint; unpickling calls it, which may run code"


def scan_path(path: str | Path) -> list[ScanResult]:
    """Scan a file, or every pickle-suffixed file under a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink()
                       and f.suffix.lower() in PICKLE_SUFFIXES)
        return [scan_file(f) for f in files]
    return [scan_file(p)]


def scan_file(path: str | Path) -> ScanResult:
    p = Path(path)
    result = ScanResult(str(p))
    try:
        if not p.is_file():
            result.error = "no such file" if not p.exists() else "not a regular file"
            return result
        if p.suffix.lower() == ".safetensors":
            result.note = "safetensors holds no code; nothing to scan"
            return result
        if zipfile.is_zipfile(p):
            _scan_zip(p, result)
        elif tarfile.is_tarfile(p):
            _scan_tar(p, result)
        else:
            with open(p, "rb") as fh:
                _scan_stream(fh, result, member=None)
    except OSError as exc:
        result.error = f"cannot read ({exc.strerror or exc})"
    return result


def _scan_zip(path: Path, result: ScanResult) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".pkl")]
            if not members:
                result.note = "zip archive without pickles"
            for member in members:
                if member.file_size > MAX_MEMBER_BYTES:
                    result.error = f"{member.filename}: pickle member larger than {MAX_MEMBER_BYTES} bytes"
                    continue
                with archive.open(member) as fh:
                    _scan_stream(io.BytesIO(fh.read(MAX_MEMBER_BYTES + 1)), result, member=member.filename)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as exc:
        result.error = f"corrupt zip archive ({exc})"


def _scan_tar(path: Path, result: ScanResult) -> None:
    """torch's oldest format: a tar whose members start with pickles (torch.load still reads it)."""
    try:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                fh = archive.extractfile(member)
                if fh is not None:
                    _scan_stream(io.BytesIO(fh.read(MAX_MEMBER_BYTES)), result, member=member.name)
    except (tarfile.TarError, EOFError, ValueError) as exc:
        result.error = f"corrupt tar archive ({exc})"


def _scan_stream(stream: IO[bytes], result: ScanResult, member: str | None) -> None:
    """Scan the pickles in ``stream``: the first, then any that follow it (a loader may read several).

    torch's legacy format is exactly five pickles followed by raw tensor bytes, so after its magic
    number only those five are read. Trailing data that is not a complete pickle is not one: its
    findings are dropped, so raw bytes that happen to decode as opcodes raise no false alarm.
    """
    limit: int | None = None
    index = 0
    prefix = f"{member}: " if member else ""
    while limit is None or index < limit:
        start = stream.tell()
        if not stream.read(1):
            if index == 0:
                result.error = f"{prefix}empty file"
            return
        stream.seek(start)
        findings_before = len(result.findings)
        try:
            first_value = _scan_one_pickle(stream, result, member)
        except _NotAPickle as exc:
            if index == 0:
                result.error = f"{prefix}not a pickle or torch archive ({exc})"
            elif limit is not None:
                result.error = f"{prefix}malformed pickle #{index + 1} ({exc})"
            else:
                del result.findings[findings_before:]  # trailing bytes, not a pickle anyone loads
            return
        result.pickles += 1
        if index == 0 and first_value == TORCH_LEGACY_MAGIC:
            limit = TORCH_LEGACY_PICKLES
        index += 1


class _NotAPickle(Exception):
    pass


_MARK = object()
_STRING_OPS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}


def _scan_one_pickle(stream: IO[bytes], result: ScanResult, member: str | None):
    """Walk one pickle to its STOP, recording every global it names. Returns the value of a lone int pickle."""
    stack: list = []
    memo: dict = {}
    first_int = None
    ops = 0
    protocol = 0
    try:
        for opcode, arg, _pos in _genops(stream):
            ops += 1
            name = opcode.name
            if name == "PROTO":
                protocol = arg
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                _record(result, member, _python3_name(module, attr, protocol), name)
            elif name == "STACK_GLOBAL":
                attr, module = _pop(stack), _pop(stack)
                if isinstance(module, str) and isinstance(attr, str):
                    _record(result, member, _python3_name(module, attr, protocol), name)
                else:
                    _record(result, member, "<computed>", name, "the global's name is computed, not a constant: "
                            "a way to hide what it calls")
                stack.append(None)
                continue
            elif name in ("EXT1", "EXT2", "EXT4"):
                _record(result, member, f"<extension {arg}>", name, "refers to a global through the copyreg "
                        "extension registry, which can name any callable")
            if name in ("MEMOIZE",):
                memo[len(memo)] = stack[-1] if stack else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
            elif name in _STRING_OPS:
                stack.append(arg if isinstance(arg, str) else None)
            elif name in _INT_OPS:
                stack.append(arg)
                if ops <= 2:
                    first_int = arg
            else:
                _apply_stack_effect(opcode, stack)
    except _NotAPickle:
        raise
    except Exception as exc:  # pickletools raises ValueError and others on malformed input
        raise _NotAPickle(str(exc) or type(exc).__name__) from None
    return first_int


def _python3_name(module: str, attr: str, protocol: int) -> str:
    """The global the unpickler really imports: below protocol 3 it maps Python 2 names (commands -> subprocess)."""
    if protocol < 3:
        if (module, attr) in _compat_pickle.NAME_MAPPING:
            module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def _genops(stream: IO[bytes]) -> Iterator:
    return pickletools.genops(stream)


def _apply_stack_effect(opcode, stack: list) -> None:
    before, after = opcode.stack_before, opcode.stack_after
    if pickletools.markobject in before:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if stack:
            stack.pop()
        for _ in range(before.index(pickletools.markobject)):
            _pop(stack)
    elif opcode.name == "POP" and stack and stack[-1] is _MARK:
        stack.pop()
    else:
        for _ in before:
            _pop(stack)
    for item in after:
        stack.append(_MARK if item is pickletools.markobject else None)


def _pop(stack: list):
    return stack.pop() if stack else None


def _record(result: ScanResult, member: str | None, global_name: str, opcode: str, reason: str | None = None) -> None:
    result.globals_seen.add(global_name)
    if reason is None:
        if is_allowed(global_name):
            return
        reason = danger_reason(global_name)
    result.findings.append(Finding(result.file, member, global_name, opcode, reason))
