"""Build one C++ source file into a shared library, once per machine, cached on disk.

Used by the tokenizer's piece encoder (`tokenizer/pieces.cpp`) and the model's CPU
kernels (`model/kernels.cpp`). The library lives in ~/.cache/codelm (or
$XDG_CACHE_HOME/codelm) under a name keyed by the source and whatever else the
caller says the build depends on (compiler flags, torch, the CPU). A build is
written under a temporary name and renamed, so concurrent first uses never load a
half-written file; one that fails to load (a damaged file) is removed, so the next
run builds it again.

What it does not do: find a compiler. It runs $CXX (default g++), and a failure
is a RuntimeError with the compiler's last line; callers fall back to Python or aten.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from codelm.errors import first_line

T = TypeVar("T")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "codelm"


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def library_path(source: Path, key_parts: tuple[str, ...]) -> Path:
    """Where the build of `source` with these dependencies lives."""
    parts = (source.read_text(), *key_parts)
    key = hashlib.sha256(b"\0".join(s.encode() for s in parts)).hexdigest()[:16]
    return cache_dir() / f"{source.stem}-{key}.so"


def build(source: Path, key_parts: tuple[str, ...], command: Callable[[Path], list[str]], what: str) -> Path:
    """The cached library of `source`, compiled first if missing. `command(out)` is the
    compiler's argv writing to `out`; `what` names the build in the one line printed
    to stderr while it compiles."""
    out = library_path(source, key_parts)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    print(f"codelm: compiling {what}, once for this machine", file=sys.stderr)
    try:
        done = subprocess.run(command(Path(tmp)), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"compiling {source.name} failed: {last}")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def build_and_load(
    source: Path,
    key_parts: tuple[str, ...],
    command: Callable[[Path], list[str]],
    what: str,
    load: Callable[[Path], T],
) -> T:
    """`load(library)` of `source`'s build (see `build`). Raises RuntimeError with a one-line
    reason when the build or the load fails; a library that fails to load is removed."""
    try:
        built = build(source, key_parts, command, what)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        raise RuntimeError(first_line(e)) from None
    try:
        return load(built)
    except OSError as e:  # a damaged file (a full disk, say)
        built.unlink(missing_ok=True)
        raise RuntimeError(f"loading {built.name} failed: {first_line(e)}") from None
