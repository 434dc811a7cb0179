"""What a pickle scan reports: findings, what could not be scanned, and the limits it ran under."""

from __future__ import annotations

from dataclasses import dataclass, field

CLEAN, DANGEROUS, UNSCANNABLE = 0, 1, 2  # also the CLI's exit statuses


@dataclass(frozen=True)
class ScanLimits:
    """Bounds on the work one file may cause; reaching one makes the file unscannable, never clean."""

    max_depth: int = 4  # containers inside containers (zip, tar, compressed stream), the file counting as 0
    max_expanded_bytes: int = 4 << 30  # bytes decompressed for one file (compressed members and streams)
    max_members: int = 100_000  # zip and tar members in one file, all levels together
    max_opcodes: int = 50_000_000  # pickle opcodes walked in one file


def _location(file: str, member: str | None) -> str:
    return f"{file}:{member}" if member else file


@dataclass(frozen=True)
class Finding:
    """A global outside the allowlist that unpickling a reachable stream would import."""

    file: str
    member: str | None  # path inside containers, levels joined by "!"; None for the file's own bytes
    global_name: str
    opcode: str
    reason: str
    offset: int | None = None  # byte offset of the opcode in the stream named by file and member

    @property
    def location(self) -> str:
        return _location(self.file, self.member)

    def to_dict(self) -> dict:
        return {"file": self.file, "member": self.member, "global": self.global_name, "opcode": self.opcode,
                "reason": self.reason, "offset": self.offset}


@dataclass(frozen=True)
class Unscannable:
    """A stream a loader could reach that the scanner could not examine completely, and why."""

    file: str
    member: str | None
    reason: str

    @property
    def location(self) -> str:
        return _location(self.file, self.member)

    @property
    def message(self) -> str:
        return f"{self.member}: {self.reason}" if self.member else self.reason

    def to_dict(self) -> dict:
        return {"file": self.file, "member": self.member, "reason": self.reason}


@dataclass
class ScanResult:
    file: str
    findings: list[Finding] = field(default_factory=list)
    unscannable: list[Unscannable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    globals_seen: set[str] = field(default_factory=set)
    pickles: int = 0  # complete pickles walked, in every stream of the file

    @property
    def status(self) -> int:
        """CLEAN only when every reachable stream was scanned and named only allowed globals."""
        return DANGEROUS if self.findings else UNSCANNABLE if self.unscannable else CLEAN

    @property
    def clean(self) -> bool:
        return self.status == CLEAN

    @property
    def error(self) -> str | None:
        """Why (part of) the file could not be scanned, or None."""
        return "; ".join(u.message for u in self.unscannable) or None

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) or None

    def to_dict(self) -> dict:
        return {"file": self.file, "status": ("clean", "dangerous", "unscannable")[self.status],
                "findings": [f.to_dict() for f in self.findings],
                "unscannable": [u.to_dict() for u in self.unscannable], "pickles": self.pickles,
                "globals": sorted(self.globals_seen), "error": self.error, "note": self.note}


def printable(text: str) -> str:
    """``text`` on one line with no terminal control: every non-printable character (newlines,
    escape sequences, bidi overrides, undecodable bytes) becomes an escape, and backslashes are
    doubled so the escaping cannot be forged."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
