"""Find a declarative file (attack suite, defense recipe, policy) by name or by path.

The files live in the repository's top-level ``attacks/``, ``defenses/`` and
``policies/`` folders; the wheel carries them as ``bastion/_catalog/<kind>/``
(see pyproject's force-include), so a name works after a plain ``pip install``
and in an editable install alike.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bastion.errors import ConfigError
from bastion.fsutil import file_kind

KINDS = ("attacks", "defenses", "policies")
_REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """The file ``name_or_path`` names: an existing path first, then the source tree's
    top-level ``<kind>/`` folder (editable installs), then the installed catalog
    (``bastion/_catalog/<kind>/``)."""
    _check_kind(kind)
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix == ".toml" or "/" in text or "\\" in text:
        if path.exists():
            raise ConfigError(f"{text}: is {file_kind(path.stat().st_mode)}, not a TOML file")
        raise ConfigError(f"{text}: no such file")
    filename = f"{text}.toml"
    for folder in _folders(kind):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    known = list_names(kind)
    listing = f" (known: {', '.join(known)})" if known else ""
    raise ConfigError(f"no {kind} file named {text!r}{listing}; give a name or a path to a .toml file")


def list_names(kind: str) -> list[str]:
    """Names (file stems) of every ``<kind>`` file bastion ships, sorted."""
    _check_kind(kind)
    return sorted({p.stem for folder in _folders(kind) for p in folder.glob("*.toml")})


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown catalog kind {kind!r}: use one of {', '.join(KINDS)}")


def _folders(kind: str) -> list[Path]:
    # The source tree first: an editable install's _catalog is a copy made at install time,
    # so it goes stale as the files are edited. A wheel has no source tree beside it.
    folders = []
    source = _REPO_ROOT / kind
    if source.is_dir():
        folders.append(source)
    try:
        installed = Path(str(resources.files("bastion").joinpath("_catalog", kind)))
        if installed.is_dir() and installed not in folders:
            folders.append(installed)
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    return folders
