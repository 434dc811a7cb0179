"""The containers a stream may also be, each opened the way its loaders open it.

- zip, if a zip reader finds an end-of-central-directory record (so data glued in front of a
  zip hides it from no zip reader, nor the zip from ``pickle.load``); every member taken by its
  central-directory entry, whatever its name, duplicates included;
- tar (``torch.load`` tries tar before pickle), torch's legacy tar layout followed where
  pickles sit between raw storage bytes;
- ``.npy``, whose object-dtype payload is a pickle ``np.load(allow_pickle=True)`` runs
  (``.npz`` members are found by the zip view and examined like any member);
- compressed (gzip, bzip2, xz, lzma, zlib: what ``joblib.load`` and ``pandas.read_pickle``
  decompress), within the byte budget;
- safetensors, validated (header length, JSON header inside the file, tensor offsets inside the
  data), so that a file named ``.safetensors`` that is not one is not waved through.

Each view takes ``(scanner, stream, head)`` and says whether the stream is of its kind.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import struct
import tarfile
import zipfile
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Callable

from bastion.access.pickle_scan import torch_legacy
from bastion.access.pickle_scan.byteio import ByteSource, Window, ZlibReader, read_at

if TYPE_CHECKING:
    from bastion.access.pickle_scan.streams import Stream, StreamScanner

MAX_NPY_HEADER = 1 << 20
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit


# -- zip ---------------------------------------------------------------------------------------

def zip_view(scanner: StreamScanner, stream: Stream, head: bytes) -> bool:
    looks_like_zip = head[:4] in (b"PK\x03\x04", b"PK\x05\x06")  # what torch.load and np.load test
    stream.fh.seek(0)
    if not zipfile.is_zipfile(stream.fh):
        if looks_like_zip:
            scanner.unscannable(stream, "starts like a zip archive but has no readable central directory")
        return looks_like_zip
    if not scanner.enter(stream, "zip archive"):
        return True
    try:
        archive = zipfile.ZipFile(stream.fh)
    except Exception as exc:  # zipfile raises many types on a damaged directory
        scanner.unscannable(stream, f"corrupt zip archive ({exc})")
        return True
    if looks_like_zip and _directory_shift(stream.fh, archive):
        # zipfile finds the directory where it lies and shifts every offset to match (for data
        # glued in front); torch's reader uses the offsets as recorded. With a local header at
        # offset 0 nothing was glued in front, so the two read different directories: members
        # torch.load would load may be invisible to zipfile.
        scanner.unscannable(stream, "zip archive whose central directory is not where its end record says: "
                                    "zip readers disagree on its members")
    with archive:
        for info in archive.infolist():
            if not scanner.count_member(stream):
                break
            member = _zip_member(scanner, stream, archive, info)
            if member is not None:
                with member.fh:
                    scanner.scan(member)
    return True


def _zip_member(scanner: StreamScanner, stream: Stream, archive: zipfile.ZipFile,
                info: zipfile.ZipInfo) -> Stream | None:
    placeholder = scanner.child(stream, io.BytesIO(), 0, info.filename)
    if info.flag_bits & 0x1:
        scanner.unscannable(placeholder, "encrypted member: its content cannot be read without the password")
        return None
    if info.compress_type == zipfile.ZIP_STORED:  # read in place, however large
        start = _zip_data_offset(stream.fh, info.header_offset)
        length = min(info.compress_size, info.file_size)
        if start is None or start + length > stream.size:
            scanner.unscannable(placeholder, "the member's local header or data lies outside the archive")
            return None
        return replace(placeholder, fh=Window(stream.fh, start, length), size=length)
    if info.file_size > scanner.expanded_left:
        scanner.unscannable(placeholder, scanner.expansion_limit_reason())
        return None
    return scanner.expand(placeholder, lambda _fh: archive.open(info), name=info.filename, label=None)


def _directory_shift(fh: IO[bytes], archive: zipfile.ZipFile) -> int:
    """How far zipfile moved the central directory from the offset the end record gives."""
    try:
        fh.seek(0)
        end_record = zipfile._EndRecData(fh)  # zipfile's own reading of the end record, which it just used
        return archive.start_dir - end_record[zipfile._ECD_OFFSET]
    except Exception:  # a private helper: if it ever changes, say the directory cannot be placed
        return 1


def _zip_data_offset(fh: IO[bytes], header_offset: int) -> int | None:
    """Where a member's data starts: after its local header, as zip readers compute it."""
    if header_offset < 0:  # zipfile's correction for data glued in front can go below zero
        return None
    header = read_at(fh, header_offset, 30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return header_offset + 30 + name_len + extra_len


# -- tar ---------------------------------------------------------------------------------------

def tar_view(scanner: StreamScanner, stream: Stream, head: bytes) -> bool:
    looks_like_tar = head[257:262] == b"ustar"
    try:
        stream.fh.seek(0)
        tarfile.open(fileobj=stream.fh, mode="r:").close()
    except Exception as exc:  # tarfile raises many types on data that is not a tar
        if looks_like_tar:
            scanner.unscannable(stream, f"starts like a tar archive but cannot be read ({exc})")
        return looks_like_tar
    if not scanner.enter(stream, "tar archive"):
        return True
    stream.fh.seek(0)
    read = 0
    try:  # ignore_zeros: also the members a reader that skips end-of-archive blocks finds
        with tarfile.open(fileobj=stream.fh, mode="r:", ignore_zeros=True) as archive:
            for info in archive:
                if not scanner.count_member(stream):
                    break
                read += 1
                # Links resolve to other members, scanned as themselves; directories and devices
                # hold no data.
                if info.isreg():
                    _tar_member(scanner, stream, archive, info)
    except Exception as exc:
        scanner.unscannable(stream, f"corrupt tar archive after {read} member(s) ({exc})")
    return True


def _tar_member(scanner: StreamScanner, stream: Stream, archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
    fh = archive.extractfile(info)
    member = scanner.child(stream, fh, info.size, info.name)
    with fh:
        scanner.scan(member)
        name = info.name.rstrip("/")
        if name in torch_legacy.LEGACY_TAR_LAYOUTS:
            _legacy_tar_entries(scanner, member, name)


def _legacy_tar_entries(scanner: StreamScanner, member: Stream, name: str) -> None:
    """The pickles torch.load reads between raw bytes in a legacy tar's storages or tensors."""
    src = ByteSource(member.fh, member.size)
    walk = scanner.walk(member, src, 0)  # the count: entries are walked until one is not an entry
    pos = walk.end if walk.complete else member.size
    while pos < member.size:
        walk = scanner.walk(member, src, pos)  # an entry's pickle (for storages, at last the views)
        if not walk.complete:
            return
        src.pos = walk.end
        raw = torch_legacy.tar_raw_bytes(name, walk.value, src)
        if raw is None or not 0 <= raw <= member.size - src.pos:
            return  # the views pickle, or where torch.load fails
        pos = src.pos + raw


# -- numpy -------------------------------------------------------------------------------------

def npy_view(scanner: StreamScanner, stream: Stream, head: bytes) -> bool:
    if not head.startswith(b"\x93NUMPY"):
        return False
    try:
        header_end, has_object = _npy_header(stream)
    except ValueError as exc:
        scanner.unscannable(stream, f"corrupt .npy header ({exc})")
        return True
    if has_object:  # np.load(allow_pickle=True) unpickles the rest of the file
        payload = replace(stream, fh=Window(stream.fh, header_end, stream.size - header_end),
                          size=stream.size - header_end, base=stream.base + header_end,
                          role="object array payload of the .npy data")
        if payload.size == 0:
            scanner.unscannable(payload, f"the {payload.role} is empty")
        else:
            scanner.judge_first_pickle(payload, scanner.pickle_sequence(payload), False, None)
    return True


def _npy_header(stream: Stream) -> tuple[int, bool]:
    """Where the .npy data starts and whether its dtype holds Python objects, read as np.load does."""
    import ast

    from numpy.lib.format import descr_to_dtype

    fixed = read_at(stream.fh, 0, 12)
    major, minor = fixed[6:7], fixed[7:8]
    if (major, minor) == (b"\x01", b"\x00") and len(fixed) >= 10:
        length, start, encoding = struct.unpack("<H", fixed[8:10])[0], 10, "latin1"
    elif (major, minor) in ((b"\x02", b"\x00"), (b"\x03", b"\x00")) and len(fixed) >= 12:
        length, start, encoding = struct.unpack("<I", fixed[8:12])[0], 12, "latin1" if major == b"\x02" else "utf8"
    else:
        raise ValueError(f"unknown format version or cut-off header ({fixed[6:8].hex()})")
    if length > MAX_NPY_HEADER:
        raise ValueError(f"header of {length} bytes is over the scanner's limit of {MAX_NPY_HEADER}")
    raw = read_at(stream.fh, start, length)
    if len(raw) < length:
        raise ValueError("the header is cut off")
    try:
        header = ast.literal_eval(raw.decode(encoding))
        dtype = descr_to_dtype(header["descr"])
    except Exception as exc:  # literal_eval and numpy's dtype parser raise many types on bad input
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    return start + length, bool(dtype.hasobject)


# -- compressed streams --------------------------------------------------------------------------

def compressed_view(scanner: StreamScanner, stream: Stream, head: bytes) -> bool:
    for label, matches, opener, strong in _COMPRESSIONS:
        start = matches(head)
        if start is None:
            continue
        if opener is None:
            scanner.unscannable(stream, f"{label}-compressed: this scanner cannot decompress it")
            return True
        if not scanner.enter(stream, f"{label} stream"):
            return True
        expanded = scanner.expand(stream, lambda fh, o=opener, s=start: o(Window(fh, s, stream.size - s)),
                                  name=_strip_suffix(stream.name), label=f"[{label}]", strong=strong)
        if expanded is None:
            return strong
        with expanded.fh:
            scanner.scan(expanded)
        return True
    return False


def _strip_suffix(name: str) -> str:
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and suffix.lower() in ("gz", "bz2", "xz", "lzma", "z", "zst", "lz4") else name


def _zlib_start(head: bytes) -> int | None:
    return 0 if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0 else None


def _joblib_zfile_start(head: bytes) -> int | None:
    """joblib's oldest compressed format: b"ZF", a 19-character hex length, maybe a space, zlib data."""
    if not head.startswith(b"ZF"):
        return None
    try:
        int(head[2:21], 16)
    except ValueError:
        return None
    return 22 if head[21:22] == b" " else 21


def _prefix(magic: bytes, also: Callable[[bytes], bool] = lambda head: True) -> Callable[[bytes], int | None]:
    return lambda head: 0 if head.startswith(magic) and also(head) else None


# (label, where the compressed data starts or None, opener or None if unsupported, strong magic?)
_COMPRESSIONS = (
    ("gzip", _prefix(b"\x1f\x8b\x08"), lambda fh: gzip.GzipFile(fileobj=fh, mode="rb"), True),
    ("bzip2", _prefix(b"BZh", lambda h: h[3:4] in b"123456789" and h[4:10] in (b"1AY&SY", b"\x17rE8P\x90")),
     bz2.BZ2File, True),
    ("xz", _prefix(b"\xfd7zXZ\x00"), lambda fh: lzma.LZMAFile(fh, format=lzma.FORMAT_XZ), True),
    ("lzma", _prefix(b"\x5d\x00"), lambda fh: lzma.LZMAFile(fh, format=lzma.FORMAT_ALONE), False),
    ("zlib", _joblib_zfile_start, ZlibReader, False),
    ("zlib", _zlib_start, ZlibReader, False),
    ("lz4", _prefix(b"\x04\x22\x4d\x18"), None, True),
    ("zstd", _prefix(b"\x28\xb5\x2f\xfd"), None, True),
)


# -- safetensors -------------------------------------------------------------------------------

def safetensors_view(scanner: StreamScanner, stream: Stream, head: bytes) -> bool:
    if stream.size < 10 or head[8:9] != b"{":
        return False
    header_len = int.from_bytes(head[:8], "little")
    if not 2 <= header_len <= min(MAX_SAFETENSORS_HEADER, stream.size - 8):
        return False
    try:
        header = json.loads(read_at(stream.fh, 8, header_len).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not _valid_safetensors_header(header, stream.size - 8 - header_len):
        return False
    if stream.is_file and not stream.where:
        scanner.result.notes.append("safetensors file (tensors only, no pickle)")
    return True


def _valid_safetensors_header(header, data_len: int) -> bool:
    if not isinstance(header, dict):
        return False
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict):
                return False
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
            return False
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            return False
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_len):
            return False
    return True


VIEWS = (zip_view, tar_view, npy_view, compressed_view, safetensors_view)
