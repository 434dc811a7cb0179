"""A model's manifest: every file it holds, in the OpenSSF model-signing order, with its digest.

Rules of the format (model-signing v1.x, "files" serialization):

- A model is one regular file or a directory. A single file's one resource is
  named ``"."``; in a directory each file is named by its POSIX path relative
  to the directory.
- Resources are sorted by path *components* (``B``, ``a/b``, ``a-b``,
  ``a.txt``), not by the plain string.
- ``.git``, ``.gitattributes``, ``.github`` and ``.gitignore`` are ignored, and
  so is the signature file when it lies inside the model directory. An ignored
  path also ignores everything below it.

bastion ignores its own files (the signature, the attestation) as *files only*
(:class:`Ignores`): a directory, link or anything else that merely bears such a
name is listed, hashed or refused like any other entry, so it cannot carry
unsigned files past verification.
- The model's digest (the statement's subject) is SHA-256 over the raw
  digests of the resources, concatenated in that order.

bastion adds no way to skip unsigned files and never follows a symbolic link:
a link anywhere in the model is an error, not something to hash through.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bastion.access.hashing import hash_files
from bastion.errors import VerificationError

GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
SINGLE_FILE_NAME = "."


@dataclass(frozen=True)
class Resource:
    name: str
    digest: bytes


@dataclass
class Manifest:
    """What a signature lists, or what is on disk: resources in format order."""

    model_name: str
    hash_type: str
    resources: list[Resource]
    ignore_paths: list[str] = field(default_factory=list)

    @property
    def root_digest(self) -> str:
        return root_digest(self.resources)

    def by_name(self) -> dict[str, bytes]:
        return {r.name: r.digest for r in self.resources}


def sort_key(name: str) -> tuple[str, ...]:
    return PurePosixPath(name).parts


def root_digest(resources: list[Resource]) -> str:
    hasher = hashlib.sha256()
    for resource in resources:
        hasher.update(resource.digest)
    return hasher.hexdigest()


def model_name(path: Path) -> str:
    return path.name or path.resolve().name


def normalise_ignore_path(text: str) -> PurePosixPath | None:
    """An ignore path as relative POSIX parts; None for one that cannot name anything inside the model."""
    parts = [p for p in PurePosixPath(text).parts if p not in ("", ".")]
    if not parts or PurePosixPath(text).is_absolute() or ".." in parts:
        return None
    return PurePosixPath(*parts)


def is_ignored(name: PurePosixPath, ignored: set[PurePosixPath]) -> bool:
    return any(name.parts[:len(ig.parts)] == ig.parts for ig in ignored)


@dataclass(frozen=True)
class Ignores:
    """What a manifest leaves out, in two kinds.

    ``paths``: a path and everything below it, whatever it is (the git paths, the
    paths a signer listed). ``files``: only a regular file at exactly that path
    (bastion's own signature and attestation files).
    """

    paths: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()

    def listed(self) -> list[str]:
        """The one list the format records (its ``ignore_paths``)."""
        return sorted(self.paths | self.files)


def list_model_files(path: str | Path, ignore_paths: set[str] | frozenset[str] = frozenset(),
                     ignore_files: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, Path]]:
    """(resource name, file path) for every file in the model, in format order.

    ``ignore_paths`` leave out a path and everything below it; ``ignore_files`` only a
    regular file at exactly that path (see :class:`Ignores`). Raises
    VerificationError for a symlink, a special file, an unreadable directory, or a
    file name that is not valid UTF-8.
    """
    root = Path(path)
    try:
        info = os.lstat(root)
    except OSError:
        raise VerificationError(f"{root}: no such file or directory") from None
    if stat.S_ISLNK(info.st_mode):
        raise VerificationError(f"{root}: is a symbolic link; sign or verify the real path")
    if stat.S_ISREG(info.st_mode):
        return [(SINGLE_FILE_NAME, root)]
    if not stat.S_ISDIR(info.st_mode):
        raise VerificationError(f"{root}: not a regular file or directory")
    ignored = {p for p in (normalise_ignore_path(t) for t in ignore_paths) if p is not None}
    files = {p for p in (normalise_ignore_path(t) for t in ignore_files) if p is not None}
    found: list[tuple[str, Path]] = []
    _walk(root, PurePosixPath(), ignored, files, found)
    found.sort(key=lambda item: sort_key(item[0]))
    return found


def _walk(directory: Path, prefix: PurePosixPath, ignored: set[PurePosixPath], files: set[PurePosixPath],
          found: list) -> None:
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise VerificationError(f"{directory}: cannot list directory ({exc.strerror})") from None
    for entry in entries:
        name = prefix / _utf8_name(entry.name, directory)
        if is_ignored(name, ignored):
            continue
        if entry.is_symlink():
            raise VerificationError(f"{entry.path}: is a symbolic link; a signed model may not contain links")
        if entry.is_dir(follow_symlinks=False):
            _walk(Path(entry.path), name, ignored, files, found)
        elif entry.is_file(follow_symlinks=False):
            if name not in files:
                found.append((str(name), Path(entry.path)))
        else:
            raise VerificationError(f"{entry.path}: not a regular file (a device, socket or pipe)")


def _utf8_name(name: str, directory: Path) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise VerificationError(f"{directory}: holds a file whose name is not valid UTF-8 "
                                f"({name.encode('utf-8', 'surrogateescape')!r}); rename it") from None
    return name


def build_manifest(path: str | Path, hash_type: str = "sha256", ignore_paths: set[str] | frozenset[str] = frozenset(),
                   workers: int | None = None, *, ignore_files: set[str] | frozenset[str] = frozenset()) -> Manifest:
    """Hash every file of the model at ``path`` (see the module docstring for the rules)."""
    files = list_model_files(path, ignore_paths, ignore_files)
    digests = hash_files([p for _, p in files], hash_type, workers=workers)
    resources = [Resource(name, digest) for (name, _), digest in zip(files, digests)]
    return Manifest(model_name(Path(path)), hash_type, resources, sorted(set(ignore_paths) | set(ignore_files)))


def default_ignores(model: Path, *own_files: Path | None) -> Ignores:
    """The git paths, plus each of ``own_files`` (signature, attestation) inside the model directory, as a file."""
    files = set()
    if model.is_dir():
        root = model.resolve()
        for candidate in own_files:
            if candidate is None:
                continue
            try:
                files.add(Path(os.path.abspath(candidate)).resolve().relative_to(root).as_posix())
            except ValueError:
                continue  # outside the model: nothing to ignore
    return Ignores(frozenset(GIT_PATHS), frozenset(files))
