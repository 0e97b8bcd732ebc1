"""Crash-safe file writes shared by every stage, and `read_json` for the JSON files they read.

A file is written to a temporary name in the same directory, flushed, fsynced
and renamed over the target, so a reader sees the old file or the new one and
never half of either. A directory is built under a temporary name and swapped
in the same way. A full disk while writing is a `DiskFull` error naming the final
path (the temporary one is removed), not a library's traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from codelm.errors import CodelmError, first_line

# pyarrow and safetensors report a full disk in their own exception types; their text
# still carries the C library's message or Rust's "os error 28".
_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


class DiskFull(CodelmError):
    """The disk filled up while writing a path; what was written before it is intact."""


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, Exception) and any(t in str(e) for t in _FULL_TEXT)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk inside the block into a one-line DiskFull naming `path`."""
    try:
        yield
    except DiskFull:  # from a temporary file inside `path`: name what the user knows
        raise DiskFull(f"no space left on device writing {path}") from None
    except CodelmError:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise DiskFull(f"no space left on device writing {path}") from None


def check_can_create(path: str | os.PathLike) -> Path:
    """Check, creating nothing, that the directory `path` exists or can be made: a one-line
    CodelmError where a file is in the way or the nearest existing directory takes no
    writes. A command checks its --out with this before its work, and creates it after."""
    path = Path(path)
    there = next(a for a in (path, *path.parents) if a.exists() or a == a.parent)
    if not there.is_dir():
        if there == path:
            raise CodelmError(f"{path} is a file, not a directory")
        raise CodelmError(f"cannot create {path}: {there} is a file")
    if not os.access(there, os.W_OK | os.X_OK):
        raise CodelmError(f"cannot write in {there}: permission denied")
    return path


def make_dirs(path: str | os.PathLike) -> Path:
    """`mkdir -p path`, for a place the user named to write to: where it cannot be made (a
    file in the way, a read-only or missing mount), a one-line CodelmError naming it
    instead of the traceback of whichever library was about to write there."""
    path = check_can_create(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CodelmError(f"cannot create {path}: {e.strerror or e}") from None
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks (a checkpoint may be gigabytes)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_mode(path: str | os.PathLike) -> None:
    """Give a file written by a library the mode a plain `open` gives (0666 less the umask):
    safetensors' `save_file` writes a 0600 temporary file and renames it, which left every
    run's weights unreadable to the other accounts of a shared machine or a server."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    make_dirs(path.parent)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        _write_and_rename(fd, tmp, path, data)


def _write_and_rename(fd: int, tmp: str, path: Path, data: bytes) -> None:
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 (usual_mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path`, on failure it is removed.
    A full disk anywhere in the block is a DiskFull naming `path`."""
    path = Path(path)
    make_dirs(path.parent)
    with writing(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        with writing(path):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from `path`; a one-line CodelmError for a file that is missing, not JSON,
    or not an object."""
    path = Path(path)
    try:
        read = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CodelmError(f"cannot read {path}: {first_line(e)}") from None
    if not isinstance(read, dict):
        raise CodelmError(f"cannot read {path}: a JSON {type(read).__name__}, not an object")
    return read
