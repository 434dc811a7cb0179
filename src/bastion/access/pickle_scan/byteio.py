"""Byte access for the scanner: buffered reads at a position, windows onto a file, a zlib reader."""

from __future__ import annotations

import errno
import io
import zlib
from typing import IO

MAX_KEPT_STRING = 4096  # longer strings are skipped, keeping a prefix: no allowed name is that long


class ByteSource:
    """Buffered reads from a seekable binary file of known size, at an absolute position."""

    CHUNK = 1 << 16

    def __init__(self, fh: IO[bytes], size: int):
        self._fh, self.size = fh, size
        self._buf, self._buf_start = b"", 0
        self.pos = 0

    def _fill(self) -> None:
        self._fh.seek(self.pos)
        self._buf, self._buf_start = self._fh.read(min(self.CHUNK, self.size - self.pos)), self.pos

    def byte(self) -> int:
        off = self.pos - self._buf_start
        if not 0 <= off < len(self._buf):
            if self.pos >= self.size:
                return -1
            self._fill()
            off = 0
            if not self._buf:
                return -1
        self.pos += 1
        return self._buf[off]

    def read(self, n: int, keep: int | None = None) -> bytes | None:
        """The next ``n`` bytes (only the first ``keep`` of them kept), or None if the data ends first."""
        if n > self.size - self.pos:
            return None
        want = n if keep is None else min(n, keep)
        off = self.pos - self._buf_start
        if not (0 <= off and off + want <= len(self._buf)):
            if want > self.CHUNK:
                self._fh.seek(self.pos)
                data = self._fh.read(want)
                if len(data) != want:
                    return None
                self.pos += n
                return data
            self._fill()
            off = 0
        data = self._buf[off:off + want]
        if len(data) != want:
            return None
        self.pos += n
        return data

    def readline(self, keep: int = MAX_KEPT_STRING) -> tuple[bytes, int]:
        """``readline()[:-1]`` as the unpickler does it: up to the newline, or at the end of the
        data everything but the last byte (nothing at all if the data has ended). Returns (the
        first ``keep`` bytes, the full length)."""
        if self.pos >= self.size:
            return b"", 0
        kept, length = bytearray(), 0
        while True:
            off = self.pos - self._buf_start
            if not 0 <= off < len(self._buf):
                self._fill()
                off = 0
                if not self._buf:  # the file shrank under us
                    return bytes(kept), len(kept)
            newline = self._buf.find(b"\n", off)
            piece = self._buf[off:newline if newline >= 0 else len(self._buf)]
            if len(kept) < keep:
                kept += piece[:keep - len(kept)]
            length += len(piece)
            self.pos += len(piece)
            if newline >= 0:
                self.pos += 1
                return bytes(kept), length
            if self.pos >= self.size:
                length = max(length - 1, 0)
                return bytes(kept[:length]), length


class Window(io.RawIOBase):
    """Bytes ``[start, start + size)`` of a seekable file, as a file of their own (nothing copied)."""

    def __init__(self, fh: IO[bytes], start: int, size: int):
        super().__init__()
        self._fh, self._start, self._size, self._pos = fh, start, max(size, 0), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


class ZlibReader(io.RawIOBase):
    """A raw zlib stream as a readable file (what joblib's zlib compression writes)."""

    def __init__(self, fh: IO[bytes]):
        super().__init__()
        self._fh, self._z, self._pending = fh, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._z.eof:
            chunk = self._z.unconsumed_tail or self._fh.read(1 << 16)
            if not chunk:
                raise EOFError("the zlib stream ends early")
            self._pending = self._z.decompress(chunk, len(buffer))
        data, self._pending = self._pending[:len(buffer)], self._pending[len(buffer):]
        buffer[:len(data)] = data
        return len(data)


def read_at(fh: IO[bytes], offset: int, n: int) -> bytes:
    fh.seek(offset)
    return fh.read(n)
