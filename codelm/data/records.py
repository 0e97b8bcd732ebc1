"""What a source yields: a `RawFile` (bytes read, not decoded yet) or a `Skip` (not read, and why).

These types live apart from the readers so that sources.py and gitsource.py,
and the build stages that consume their output (process.py, build.py), share
them without importing one another. This module reads nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawFile:
    """One file or record as read from a source: its bytes are not decoded yet."""

    path: str  # relative to the source root, with forward slashes
    data: bytes
    source: str  # the source spec it came from, e.g. "stdlib" or a directory
    language: str | None = "python"  # None: unknown (a record without a path), not parsed
    # A record of an instruction dataset (instruct.py): `data` is the answer's code, this its
    # instruction, and the record becomes one pair and no document.
    instruction: str | None = None


@dataclass(frozen=True)
class Skip:
    """A file or record that was not read. `reason` is counted in stats.json."""

    path: str
    source: str
    reason: str  # a stats key: "dropped_too_large", "skipped_unreadable", ...
    message: str = ""  # one line for the user; empty for per-record reasons not worth a line
