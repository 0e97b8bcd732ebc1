"""Near-duplicate detection sharded by LSH band: plain numpy functions the dask engine runs as tasks.

They take the same decisions as dedup.NearDupIndex, whose greedy rule is: a
file is dropped when some *kept* file before it shares all slots of an LSH band
with it (`lsh_bands`) and at least `min_equal` slots overall. Here that rule is
split into work that shards by band and a small sequential step:

1. `band_keys`: per partition of files, one 64-bit key per band (a hash of the
   band's slots; a collision only adds a candidate that step 3 rejects).
2. `band_buckets`: per band, the files grouped by key; only buckets of two or
   more files are kept.
3. `band_edges`: per band, every pair (earlier j, later i) of a bucket whose band
   slots are truly equal and whose signatures agree in `min_equal` slots.
4. `resolve`: on the client, over the union of every band's edges in input
   order: i is dropped when an edge comes from a j that was kept. A file with no
   edge is kept, so this step holds only the files that have near duplicates.

Which files are dropped does not depend on how files are partitioned or which
worker runs what. A bucket of n files costs n*(n-1)/2 comparisons (step 3),
where the greedy index compares a file only with the kept ones: many distinct
files sharing one bucket is the slow case. This module knows nothing of Dask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MUL = np.uint64(0x9E3779B97F4A7C15)  # an odd 64-bit multiplier: spreads the slots' bits

Bands = Sequence[tuple[int, int]]


def band_keys(sigs: np.ndarray, bands: Bands) -> np.ndarray:
    """uint64[n, len(bands)]: for each signature (a row of `sigs`), one key per band."""
    keys = np.zeros((len(sigs), len(bands)), np.uint64)
    with np.errstate(over="ignore"):  # the hash wraps mod 2**64 on purpose
        for b, (start, end) in enumerate(bands):
            acc = np.zeros(len(sigs), np.uint64)
            for col in range(start, end):
                acc = (acc ^ sigs[:, col].astype(np.uint64)) * _MUL
            keys[:, b] = acc ^ (acc >> np.uint64(29))
    return keys


def band_buckets(band: int, *parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The buckets of two or more files in `band`, from each partition's (index, band_keys).

    Returns (members, starts): the files' indices, bucket by bucket, each bucket in
    input order; bucket k is members[starts[k]:starts[k + 1]].
    """
    index = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    keys = np.concatenate([p[1][:, band] for p in parts]) if parts else np.zeros(0, np.uint64)
    order = np.lexsort((index, keys))  # by key, then input order
    index, keys = index[order], keys[order]
    edges = np.flatnonzero(np.diff(keys)) + 1
    bounds = np.concatenate([[0], edges, [len(keys)]]).astype(np.int64)
    sizes = np.diff(bounds)
    big = np.flatnonzero(sizes >= 2)
    members = np.concatenate([index[bounds[k] : bounds[k + 1]] for k in big]) if len(big) else index[:0]
    starts = np.concatenate([[0], np.cumsum(sizes[big])]).astype(np.int64)
    return members.astype(np.int64), starts


def band_members(*buckets: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The sorted indices of every file in some bucket of two or more, in any band."""
    return np.unique(np.concatenate([b[0] for b in buckets])) if buckets else np.zeros(0, np.int64)


def band_edges(
    buckets: tuple[np.ndarray, np.ndarray],
    band: tuple[int, int],
    min_equal: float,
    *parts: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """int64[m, 2] pairs (j, i), j before i, of one band's buckets that are near duplicates.

    `parts`: (index, signatures) of the files in the buckets, index sorted within each part
    and the parts in input order (so their concatenation is sorted).
    """
    members, starts = buckets
    index = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    sigs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 0), np.uint32)
    start, end = band
    found: list[np.ndarray] = []
    for k in range(len(starts) - 1):
        ids = members[starts[k] : starts[k + 1]]
        group = sigs[np.searchsorted(index, ids)]
        for t in range(1, len(ids)):  # a row at a time: memory n * num_perm, not n * n * num_perm
            same_band = np.all(group[:t, start:end] == group[t, start:end], axis=1)
            similar = np.count_nonzero(group[:t] == group[t], axis=1) >= min_equal
            js = ids[:t][same_band & similar]
            if len(js):
                found.append(np.stack([js, np.full(len(js), ids[t])], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), np.int64)


def resolve(edges: np.ndarray) -> set[int]:
    """The files dropped by the greedy rule, from the union of every band's edges (j, i).

    In input order, i is dropped when one of its j was kept; a j is kept unless dropped
    itself. A file without an edge to an earlier one is kept.
    """
    if len(edges) == 0:
        return set()
    edges = np.unique(edges, axis=0)  # a pair found in several bands counts once; sorted by j, i
    order = np.argsort(edges[:, 1], kind="stable")
    later, earlier = edges[order, 1], edges[order, 0]
    dropped: set[int] = set()
    bounds = np.flatnonzero(np.diff(later)) + 1
    for i_group, j_group in zip(np.split(later, bounds), np.split(earlier, bounds), strict=True):
        # every j is before i, so its fate is already decided
        if any(int(j) not in dropped for j in j_group):
            dropped.add(int(i_group[0]))
    return dropped
