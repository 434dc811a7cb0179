"""torch's legacy formats, where pickles and raw storage bytes alternate: what torch.load skips.

- The legacy file (``torch.save(..., _use_new_zipfile_serialization=False)``): five pickles
  (magic number, protocol, system info, the object, the storage keys), then for each key of the
  fifth pickle an int64 element count and that many elements of the storage's type, which the
  fourth pickle's persistent ids name: ``("storage", storage class, key, location, numel, view)``.
- The legacy tar (torch's oldest format, still read by ``torch.load``): members ``storages``
  (a count, then per storage a pickle ``(key, location, storage class)``, an int64 element count
  and the elements, then a pickle of storage views), ``tensors`` (a count, then per tensor a
  pickle and int32 ndim, 4 bytes, 16*ndim bytes and 8 more) and ``pickle``.
"""

from __future__ import annotations

import struct

from bastion.access.pickle_scan.byteio import ByteSource
from bastion.access.pickle_scan.opcodes import ImportedGlobal, PickleWalk

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PICKLES = 5
LEGACY_TAR_LAYOUTS = ("storages", "tensors")
_STORAGE_ELEMENT_SIZES = {
    "Double": 8, "Float": 4, "Half": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1, "Bool": 1,
    "BFloat16": 2, "ComplexDouble": 16, "ComplexFloat": 8, "QUInt8": 1, "QInt8": 1, "QInt32": 4,
    "QUInt4x2": 1, "QUInt2x4": 1,
}


def is_legacy_start(first: PickleWalk) -> bool:
    return first.value == TORCH_LEGACY_MAGIC


def storage_end(obj: PickleWalk, keys: PickleWalk, src: ByteSource, pos: int) -> int | None:
    """Where torch.load stops reading a legacy file whose storage bytes start at ``pos``, or None
    if that cannot be told from its fourth and fifth pickles."""
    element_sizes = {}
    for pid in obj.persistent_ids:
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[2], (str, int)):
            element_sizes[pid[2]] = _storage_element_size(pid[1])
    if not isinstance(keys.value, list):
        return None
    for key in keys.value:
        if not isinstance(key, (str, int)) or element_sizes.get(key) is None:
            return None
        src.pos = pos
        count = _read_int(src, "<q")
        if count is None or count < 0 or pos + 8 + count * element_sizes[key] > src.size:
            return src.size  # torch.load fails here: nothing after it is read
        pos += 8 + count * element_sizes[key]
    return pos


def tar_raw_bytes(member: str, entry, src: ByteSource) -> int | None:
    """How many raw bytes follow an entry pickle of a legacy tar member (reading their header
    from ``src``), or None where torch.load reads no more entries or fails."""
    if member == "storages":  # the entry is (key, location, storage class)
        element_size = _storage_element_size(entry[2]) if isinstance(entry, tuple) and len(entry) == 3 else None
        count = _read_int(src, "<q")
        return None if element_size is None or count is None else count * element_size
    ndim = _read_int(src, "<i")
    return None if ndim is None or ndim < 0 else 4 + 16 * ndim + 8


def _storage_element_size(storage_class) -> int | None:
    """Bytes per element of a storage class global (torch.FloatStorage: 4)."""
    if not isinstance(storage_class, ImportedGlobal):
        return None
    name = storage_class.name
    for prefix in ("torch.cuda.", "torch."):
        if name.startswith(prefix) and name.endswith("Storage"):
            return _STORAGE_ELEMENT_SIZES.get(name[len(prefix):-len("Storage")])
    return None


def _read_int(src: ByteSource, fmt: str) -> int | None:
    data = src.read(struct.calcsize(fmt))
    return None if data is None else struct.unpack(fmt, data)[0]
