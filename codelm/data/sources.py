"""Where raw code comes from: the running interpreter's standard library, or a directory.

A source yields `Document`s lazily, so a large tree is never held in memory.
Reading is byte-exact; decoding and filtering happen in `filters.py`.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import CodelmError

# Language by file extension. Adding a language means adding an entry here.
LANGUAGES: dict[str, str] = {".py": "python"}

# Folders that never hold code worth learning from.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        "node_modules",
        ".venv",
        "venv",
        "env",
        "build",
        "dist",
        ".tox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "site-packages",
    }
)


@dataclass(frozen=True)
class RawFile:
    """One file as read from a source: its bytes are not decoded yet."""

    path: str  # relative to the source root, with forward slashes
    data: bytes
    source: str  # the source spec it came from, e.g. "stdlib" or a directory


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def iter_directory(root: Path, source: str) -> Iterator[RawFile]:
    """Files under `root` whose extension is in LANGUAGES, in sorted (stable) order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if Path(name).suffix not in LANGUAGES:
                continue
            full = Path(dirpath) / name
            try:
                data = full.read_bytes()
            except OSError:
                continue  # unreadable: skipped; the corpus issue counts these
            yield RawFile(full.relative_to(root).as_posix(), data, source)


def iter_source(spec: str) -> Iterator[RawFile]:
    """Dispatch a source spec: "stdlib" or a directory path."""
    if spec == "stdlib":
        return iter_directory(stdlib_root(), "stdlib")
    path = Path(spec)
    if not path.exists():
        raise CodelmError(f"source not found: {spec}")
    if not path.is_dir():
        raise CodelmError(f"source is not a directory: {spec}")
    return iter_directory(path, str(path))
