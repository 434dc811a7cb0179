"""Files in and out: atomic writes (a reader sees the old file or the new one, never a partial one),
checks that an output can be written before the work that produces it starts, and reading a small
input file without ever blocking on a FIFO or following it into a device.

Every problem is a one-line :class:`~bastion.errors.OutputError` (writing) or the caller's error
type (reading) naming the path.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bastion.errors import BastionError, OutputError


@contextmanager
def atomic_path(path: str | Path, mode: int | None = None):
    """Yield a temporary path beside ``path``; on success fsync and rename it over ``path``.

    A folder that cannot be created or written, a directory in the way or a full disk raises
    :class:`OutputError`; the temporary file is removed whatever happens.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
    os.close(fd)
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def check_output_file(path: str | Path, what: str = "output file", *, appends: bool = False) -> Path:
    """Refuse, before any work, a file output that cannot be written: an empty name, a directory or
    special file (a FIFO, a device) in its place, a folder that does not exist or is read-only.
    (An existing regular file is replaced atomically when the result is written.) A file that is
    ``appends`` to (a log) may be an existing FIFO or device, and is then not probed."""
    if not str(path):
        raise OutputError(f"the {what} name is empty")
    target = Path(path)
    folder = target.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{target}: cannot write the {what}: {folder} is {file_kind(folder.stat().st_mode)}, "
                          "not a folder")
    try:
        info = target.lstat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"{target}: cannot write the {what} ({_reason(exc)})") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{target}: is a directory; give a file name for the {what}")
    if info is not None and appends:
        return target
    if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        raise OutputError(f"{target}: exists and is not a regular file ({file_kind(info.st_mode)}); "
                          f"refusing to replace it with the {what}")
    if not folder.is_dir():
        raise OutputError(f"{target}: no such directory {folder} (create it first)")
    _probe_writable(folder, target, what)
    return target


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Refuse, before any work, a folder output that cannot be written: an empty name, a file in its
    place, or (where it does not exist yet) a nearest existing parent that is not a writable folder."""
    if not str(path):
        raise OutputError(f"the {what} name is empty")
    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise OutputError(f"{existing}: is a broken symbolic link; cannot create the {what} there")
        existing = existing.parent
    if not existing.is_dir():
        kind = file_kind(existing.stat().st_mode)
        if existing == target:
            raise OutputError(f"{target}: is {kind}, not a folder; give a folder for the {what}")
        raise OutputError(f"{target}: cannot create the {what}: {existing} is {kind}, not a folder")
    _probe_writable(existing, target, what)
    return target


def make_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create the folder ``path`` (and its parents) once :func:`check_output_dir` passed it."""
    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create the {what} ({_reason(exc)})") from None
    return target


def read_regular_file(path: str | Path, *, limit: int, error: type[BastionError], what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Missing, a directory, a FIFO, socket or device, unreadable, or larger than ``limit``: ``error``
    naming the path. The file is opened without blocking, so a FIFO is refused, not waited on.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{p}: no such {what}") from None
    except OSError as exc:
        raise error(f"{p}: cannot read the {what} ({_reason(exc)})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{p}: cannot read the {what}: it is {file_kind(info.st_mode)}")
        if info.st_size > limit:
            raise error(f"{p}: cannot read the {what}: it is {info.st_size:,} bytes, over the {limit:,}-byte limit")
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # the file object closes it now
            data = fh.read(limit + 1)  # bounded even if the file grows after the check
    except OSError as exc:
        raise error(f"{p}: cannot read the {what} ({_reason(exc)})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise error(f"{p}: cannot read the {what}: it is over the {limit:,}-byte limit")
    return data


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words: 'a directory', 'a FIFO', ..."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def _probe_writable(folder: Path, target: Path, what: str) -> None:
    """Create and remove a temporary file in ``folder``: the one test of writability that also holds
    for root, read-only mounts and full disks."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".bastion-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write the {what} in {folder} ({_reason(exc)})") from None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
