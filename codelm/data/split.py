"""Stable train/val/test assignment by a hash of a group key (by default, the file path).

The hash is blake2b, not Python's `hash()`, so the split is the same in every
process and on every machine, and a file can only ever land in one split.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def split_of(key: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split for `key`: a uniform draw in [0, 1) from its hash, cut by `fractions`."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]
