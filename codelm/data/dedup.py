"""Exact and near-duplicate detection: whitespace-normalised hashes and MinHash LSH.

Exact duplicates share `exact_key`: a hash of the text with every whitespace run
collapsed. Near duplicates are found with `datasketch` MinHash LSH over
shingles of the token *shape* of a file: identifiers other than keywords and
builtins become one placeholder, comments are dropped, and string literals keep
their words. So a copy with renamed variables and re-flowed whitespace has
the same shingle set as its original, while distinct code (whose structure and
literals differ) does not. Files under `min_tokens` tokens are left to exact dedup.

Signatures are computed in worker processes (`signature`); the index that
decides (`NearDupIndex`) lives in the main process and keeps one signature per
kept file, never the texts. The first file of a cluster, in input order, is its
representative: later members are dropped. The dask engine takes the same
decisions band by band on a cluster (lsh.py), from the same `lsh_bands` and
`min_equal`.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import keyword
import re
import zlib
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from codelm.errors import CodelmError

# One regex for every token: a comment, a string literal (with prefixes and triple
# quotes), a name, a number, or any other single character. Enough for shingling
# and n-grams; not a full tokenizer.
TOKEN_RE = re.compile(
    r"""\#[^\n]*"""
    r"""|[rRbBuUfF]{0,2}(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')"""
    r"""|[^\W\d]\w*|\d[\w.]*|\S"""
)
_QUOTES = "\"'"
_KEPT = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))
_PLACEHOLDER = "\x00id"  # what every user-chosen identifier becomes in a shape
_SCHEME = "affine32"  # datasketch 2's default, named so the signatures never change silently
_CHUNK = 8192  # shingles per MinHash update: bounds the (shingles x num_perm) work array


@dataclass(frozen=True)
class DedupConfig:
    near_dup_threshold: float = 0.85  # Jaccard similarity of shingle sets, in (0, 1)
    num_perm: int = 128  # MinHash permutations: more is more accurate and slower
    shingle_size: int = 5  # tokens per shingle
    seed: int = 1  # MinHash permutation seed; fixed so the clusters are reproducible
    # Files with fewer shape tokens are only deduplicated exactly: over a few lines, code that
    # differs only in its names (a getter, a small wrapper) is usually different code, not a copy.
    min_tokens: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.near_dup_threshold < 1:
            raise CodelmError(f"near_dup_threshold must be in (0, 1), got {self.near_dup_threshold}")
        # Fewer permutations make the Jaccard estimate too noisy to cluster on.
        for name, low in (("num_perm", 16), ("shingle_size", 1), ("min_tokens", 0)):
            if getattr(self, name) < low:
                raise CodelmError(f"{name} must be at least {low}, got {getattr(self, name)}")


def exact_key(text: str) -> bytes:
    """Exact-duplicate key: the content with all whitespace runs collapsed."""
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _normal_string(tok: str) -> str:
    return " ".join(tok.split())


def code_tokens(text: str) -> list[str]:
    """Tokens without comments; a string literal's inner whitespace is collapsed."""
    # A string token ends with a quote (the regex needs the closing one); nothing else does.
    return [_normal_string(t) if t[-1] in _QUOTES else t for t in TOKEN_RE.findall(text) if t[0] != "#"]


def shape_tokens(text: str) -> list[str]:
    """`code_tokens` with every identifier but keywords and builtins replaced by one placeholder."""
    return [
        _normal_string(t) if t[-1] in _QUOTES else _PLACEHOLDER if t.isidentifier() and t not in _KEPT else t
        for t in TOKEN_RE.findall(text)
        if t[0] != "#"
    ]


def shingle_hashes(tokens: list[str], k: int) -> np.ndarray:
    """Sorted unique 32-bit hashes of every run of `k` tokens (one shingle if fewer)."""
    if not tokens:
        return np.zeros(0, np.uint64)
    # crc32 is stable across processes and machines, unlike hash(); each distinct token once
    table = {t: zlib.crc32(t.encode("utf-8", "surrogatepass")) for t in set(tokens)}
    h = np.fromiter(map(table.__getitem__, tokens), np.uint64, len(tokens))
    k = min(k, len(h))
    n = len(h) - k + 1
    acc = np.zeros(n, np.uint64)
    for j in range(k):  # polynomial rolling combination; wraps mod 2**64 on purpose
        acc = acc * np.uint64(1_000_003) + h[j : j + n]
    return np.unique((acc ^ (acc >> np.uint64(32))) & np.uint64(0xFFFFFFFF))


@functools.cache
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    """datasketch draws the permutations from a seeded RNG; draw them once per process."""
    return MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations


def signature(text: str, cfg: DedupConfig) -> np.ndarray | None:
    """The MinHash signature (uint32[num_perm]) of a text's shape; None below `min_tokens`."""
    tokens = shape_tokens(text)
    if not tokens or len(tokens) < cfg.min_tokens:  # too short to judge; exact dedup still applies
        return None
    shingles = shingle_hashes(tokens, cfg.shingle_size)
    perms = _permutations(cfg.num_perm, cfg.seed)
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=int, permutations=perms, scheme=_SCHEME)
    for start in range(0, len(shingles), _CHUNK):
        m.update_batch(shingles[start : start + _CHUNK].tolist())
    return m.hashvalues.astype(np.uint32)


def lsh_bands(cfg: DedupConfig) -> list[tuple[int, int]]:
    """The signature slots of each LSH band, as datasketch chooses them for the threshold (its
    `hashranges`): two files are candidates when all slots of some band are equal."""
    return list(MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm).hashranges)


def min_equal(cfg: DedupConfig) -> float:
    """Equal signature slots a candidate needs to be a near duplicate: the estimated Jaccard."""
    return cfg.near_dup_threshold * cfg.num_perm


class NearDupIndex:
    """Greedy clustering: a signature matches the earliest kept one within the threshold."""

    def __init__(self, cfg: DedupConfig):
        self.cfg = cfg
        self.lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
        self.permutations = _permutations(cfg.num_perm, cfg.seed)
        self.min_equal = min_equal(cfg)
        self.sigs = np.zeros((1024, cfg.num_perm), np.uint32)
        self.size = 0

    def match_or_add(self, sig: np.ndarray) -> int | None:
        """The index of the kept file `sig` duplicates, or None after adding it as a new one."""
        m = MinHash(
            num_perm=self.cfg.num_perm,
            seed=self.cfg.seed,
            hashvalues=sig,
            permutations=self.permutations,
            scheme=_SCHEME,
        )
        for key in sorted(self.lsh.query(m)):  # LSH gives candidates; the signatures decide
            if np.count_nonzero(self.sigs[key] == sig) >= self.min_equal:
                return key
        if self.size == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
        self.sigs[self.size] = sig
        self.lsh.insert(self.size, m)
        self.size += 1
        return None
