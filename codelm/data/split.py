"""Stable train/val/test assignment by a hash of a group key.

The group key of a document is its source and path (`group_key`). A file's
pairs use the file's key, and a near-duplicate cluster keeps only its
representative, so every document derived from one piece of code lands in one
split. The hash is blake2b, not Python's `hash()`, so the split is the same in
every process and on every machine.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

from codelm.data.dataset import SPLITS
from codelm.errors import CodelmError


def group_key(source: str, path: str) -> str:
    """The key a document is split by: the source's name (not where it lies on disk) and the path.

    Using the last component of the source spec means that moving or re-spelling
    a repository's location (`~/src/x` vs `/home/me/src/x`) keeps every split.
    """
    name = PurePosixPath(source.rstrip("/")).name or source
    return f"{name}:{path}"


def check_fractions(fractions: tuple[float, ...]) -> None:
    """Raise ValueError unless `fractions` are three non-negative numbers summing to 1."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}"
        )


def parse_fractions(spec: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); a malformed spec is a one-line CodelmError."""
    try:
        fractions = tuple(float(x) for x in spec.split(","))
        check_fractions(fractions)
    except ValueError as e:
        msg = str(e) if "fractions" in str(e) else f"bad split fractions {spec!r}: expected e.g. 0.8,0.1,0.1"
        raise CodelmError(msg) from None
    return fractions  # type: ignore[return-value]


def split_of(key: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split for `key`: a uniform draw in [0, 1) from its hash, cut by `fractions`."""
    check_fractions(fractions)
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]
