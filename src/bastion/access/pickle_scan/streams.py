"""One stream, every view: the pickles in it, and the containers it may be (``views``).

A stream is a file, an archive member, a decompressed stream or an ``.npy`` payload. Each one is
read as a sequence of pickles from offset 0 (what ``pickle.load`` reads, called again and again
by a loader that reads several, and ``torch.load`` on a file that is not a zip) and through every
container view at once (zip, tar, ``.npy``, compressed, safetensors), never one chosen by name.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from typing import IO, Callable

from bastion.access.pickle_scan import torch_legacy, views
from bastion.access.pickle_scan.allowlist import danger_reason, is_allowed
from bastion.access.pickle_scan.byteio import ByteSource, read_at
from bastion.access.pickle_scan.opcodes import OpcodeBudget, PickleWalk, walk_pickle
from bastion.access.pickle_scan.report import Finding, ScanLimits, ScanResult, Unscannable

HEAD_BYTES = 1024
SPOOL_IN_MEMORY = 32 << 20  # decompressed data beyond this goes to a temporary file

# What a file's name claims it is. The name never makes the scanner skip or clear anything: it only
# turns "no pickle here" into "unscannable" when a loader chosen by that name would get something
# the scanner cannot make out. Members claim only by the pickle names torch uses (data.pkl).
_FILE_CLAIMS = (
    ("a pickle", (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".pck")),
    ("a zip archive", (".zip", ".npz", ".pt2", ".mar")),
    ("a tar archive", (".tar", ".tgz")),
    ("a .npy array", (".npy",)),
    ("a compressed stream", (".gz", ".bz2", ".xz", ".lzma", ".zst", ".lz4", ".z")),
    ("a safetensors file", (".safetensors",)),
)
_MEMBER_CLAIMS = (("a pickle", (".pkl", ".pickle")),)


@dataclass(frozen=True)
class Stream:
    fh: IO[bytes]  # seekable; shared with the containing stream, so always seek before reading
    size: int
    where: tuple[str, ...]  # the path inside containers; () for the file itself
    name: str  # what a loader calls it: the file name or the member name
    is_file: bool  # the file itself, or its decompressed content: what pickle.load is handed
    depth: int = 0
    base: int = 0  # offset of this stream inside the stream ``where`` names (an .npy payload)
    role: str | None = None  # set when a loader is known to unpickle this stream
    uid: int = 0  # tells apart streams of the same name (duplicate archive members)


@dataclass
class Sequence:
    pickles: int = 0
    first_failure: PickleWalk | None = None  # when the stream does not begin with a complete pickle


class StreamScanner:
    """Scans the streams of one file into one :class:`ScanResult`, within one set of limits."""

    def __init__(self, result: ScanResult, limits: ScanLimits):
        self.result, self.limits = result, limits
        self.opcodes = OpcodeBudget(limits.max_opcodes)
        self.expanded_left = limits.max_expanded_bytes
        self.members_left = limits.max_members
        self._walked: dict[tuple[int, int], PickleWalk] = {}
        self._streams = 0

    def unscannable(self, stream: Stream, reason: str) -> None:
        self.result.unscannable.append(Unscannable(self.result.file, _member(stream.where), reason))

    def scan(self, stream: Stream) -> None:
        claim = _claim(stream)
        if stream.size == 0:
            if stream.role or claim:
                self.unscannable(stream, "empty file" if stream.is_file and not stream.where else
                                 f"empty, though {stream.role or 'named like ' + claim}")
            elif stream.is_file:
                self.result.notes.append("empty file")
            return
        head = read_at(stream.fh, 0, min(HEAD_BYTES, stream.size))
        sequence = self.pickle_sequence(stream)
        recognized = sequence.pickles > 0
        for view in views.VIEWS:
            recognized = view(self, stream, head) or recognized
        self.judge_first_pickle(stream, sequence, recognized, claim)

    def walk(self, stream: Stream, src: ByteSource, pos: int) -> PickleWalk:
        """Walk the pickle at ``pos`` once, recording its globals; a second view of it reuses the walk."""
        key = (stream.uid, stream.base + pos)
        if key in self._walked:
            return self._walked[key]
        walk = walk_pickle(src, pos, self.opcodes)
        self._walked[key] = walk
        self.result.pickles += walk.complete
        for ref in walk.globals:
            self.result.globals_seen.add(ref.name)
            if ref.reason is None and is_allowed(ref.name):
                continue
            self.result.findings.append(Finding(self.result.file, _member(stream.where), ref.name, ref.opcode,
                                                ref.reason or danger_reason(ref.name), stream.base + ref.offset))
        if walk.limit_hit:
            self.unscannable(stream, f"stopped after {self.limits.max_opcodes} pickle opcodes (the limit)")
        if walk.frame_overrun is not None:
            self.unscannable(stream, f"the pickle at byte {stream.base + pos} reads past the end of a FRAME at "
                                     f"byte {stream.base + walk.frame_overrun}: pickle.py refuses that, and "
                                     "_pickle.c reading a file skips the rest of the frame, so they read "
                                     "different opcodes")
        return walk

    def judge_first_pickle(self, stream: Stream, seq: Sequence, recognized: bool, claim: str | None) -> None:
        """What it means that the stream does not begin with a complete pickle."""
        first = seq.first_failure
        if seq.pickles or first is None or first.limit_hit:
            return
        if stream.role:
            self.unscannable(stream, f"the {stream.role} is not a complete pickle ({first.failure})")
        elif begins_a_pickle(first) and (first.globals or first.extension is not None or not recognized):
            # A pickle that names globals (checked already) or declares a protocol, then breaks off.
            if stream.is_file or claim == "a pickle":
                self.unscannable(stream, f"truncated or malformed pickle ({first.failure})")
        elif not recognized:
            if claim:
                self.unscannable(stream, f"not a pickle or a known container, though named like {claim} "
                                         f"({first.failure})")
            elif stream.is_file:
                self.result.notes.append("no pickle data (not a pickle, a known container or safetensors)")

    def pickle_sequence(self, stream: Stream) -> Sequence:
        """Every pickle in a row, as a loader calling pickle.load again and again reads them.

        torch's legacy format is five pickles and then raw storage bytes: those are stepped over
        the way torch.load reads them, and what follows is read on as pickles (torch.load then
        pickle.load on one file handle); a loader reading straight on into the storage bytes is
        followed too, as long as they parse as complete pickles.
        """
        src = ByteSource(stream.fh, stream.size)
        seq, pos = Sequence(), 0
        chain: list[PickleWalk] = []  # complete pickles since the start or the last legacy storages
        while pos < stream.size:
            walk = self.walk(stream, src, pos)
            if walk.limit_hit:
                return seq
            if walk.complete:
                seq.pickles += 1
                chain.append(walk)
                pos = walk.end
                if len(chain) == torch_legacy.TORCH_LEGACY_PICKLES and torch_legacy.is_legacy_start(chain[0]):
                    self._pickles_until_failure(stream, src, pos)
                    end = torch_legacy.storage_end(chain[3], chain[4], src, pos)
                    if end is None:
                        self.unscannable(stream, "torch legacy file whose storage layout cannot be followed")
                        return seq
                    pos, chain = end, []
                continue
            if seq.pickles == 0:
                seq.first_failure = walk
            elif chain and torch_legacy.is_legacy_start(chain[0]):
                self.unscannable(stream, f"torch legacy file: pickle {len(chain) + 1} of "
                                         f"{torch_legacy.TORCH_LEGACY_PICKLES} is truncated or malformed "
                                         f"({walk.failure})")
            elif begins_a_pickle(walk):
                self.unscannable(stream, f"the bytes after pickle {seq.pickles} begin a pickle that is "
                                         f"truncated or malformed ({walk.failure})")
            return seq
        if chain and torch_legacy.is_legacy_start(chain[0]):
            self.unscannable(stream, f"torch legacy file: it ends after pickle {len(chain)} of "
                                     f"{torch_legacy.TORCH_LEGACY_PICKLES}")
        return seq

    def _pickles_until_failure(self, stream: Stream, src: ByteSource, pos: int) -> None:
        """Complete pickles from ``pos`` on; where they stop is data (raw storage bytes, by design)."""
        while pos < stream.size:
            walk = self.walk(stream, src, pos)
            if not walk.complete:
                return
            pos = walk.end

    # -- for the container views ---------------------------------------------------------------

    def child(self, stream: Stream, fh: IO[bytes], size: int, label: str, *, name: str | None = None,
              is_file: bool = False) -> Stream:
        """A stream inside ``stream`` (an archive member, a decompressed stream), one level deeper."""
        self._streams += 1
        return Stream(fh, size, stream.where + (label,), label if name is None else name, is_file,
                      depth=stream.depth + 1, uid=self._streams)

    def enter(self, stream: Stream, kind: str) -> bool:
        """Whether a container may be opened at this depth (if not, the stream is unscannable)."""
        if stream.depth < self.limits.max_depth:
            return True
        self.unscannable(stream, f"{kind} nested more than {self.limits.max_depth} levels deep (the limit)")
        return False

    def count_member(self, stream: Stream) -> bool:
        self.members_left -= 1
        if self.members_left >= 0:
            return True
        if self.members_left == -1:
            self.unscannable(stream, f"more than {self.limits.max_members} archive members (the limit)")
        return False

    def expansion_limit_reason(self) -> str:
        return (f"decompressed data exceeds {self.limits.max_expanded_bytes} bytes (the limit): "
                "a compression bomb, or a file larger than the scanner was allowed to expand")

    def expand(self, stream: Stream, open_reader: Callable[[IO[bytes]], IO[bytes]], *, name: str,
               label: str | None, strong: bool = True) -> Stream | None:
        """Decompress ``stream`` into a temporary file, within the byte budget, as a stream of its
        own (labelled ``label`` one level down, or taking ``stream``'s place if ``label`` is None).
        A loader reading a stream that fails part way has already unpickled what came before, so
        a partial result is scanned too. With ``strong=False`` (a magic number often met by
        chance) a failure is no finding, and None means nothing decompressed at all."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        size, error = 0, None
        try:
            stream.fh.seek(0)
            with open_reader(stream.fh) as reader:
                while True:
                    chunk = reader.read(min(1 << 20, self.expanded_left + 1))
                    if not chunk:
                        break
                    if len(chunk) > self.expanded_left:
                        error = self.expansion_limit_reason()
                        break
                    spool.write(chunk)
                    size += len(chunk)
                    self.expanded_left -= len(chunk)
        except Exception as exc:  # each decompressor has its own error types (zlib.error, LZMAError, ...)
            error = f"cannot decompress ({exc or type(exc).__name__})"
        if error and not strong:
            error = None
            if size == 0:
                spool.close()
                return None
        target = stream if label is None else self.child(stream, spool, size, label)
        if error:
            self.unscannable(target, error)
        return replace(target, fh=spool, size=size, name=name, is_file=stream.is_file if label else False)


def begins_a_pickle(walk: PickleWalk) -> bool:
    """A run that failed but looked like a pickle: it declared a protocol, named a global or an extension."""
    return walk.began_with_proto or bool(walk.globals) or walk.extension is not None


def _member(where: tuple[str, ...]) -> str | None:
    return "!".join(where) or None


def _claim(stream: Stream) -> str | None:
    name = stream.name.lower()
    for claim, suffixes in (_FILE_CLAIMS if stream.is_file else _MEMBER_CLAIMS):
        if name.endswith(suffixes):
            return claim
    return None
