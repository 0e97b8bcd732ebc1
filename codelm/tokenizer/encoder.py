"""Fast, lossless encode and decode for a code tokenizer, with HF `tokenizers` doing every BPE step.

HF's own pipeline (normalize, pre-tokenize, BPE, then an `Encoding` with offsets
and a token string for every token) costs about 2 us of CPU per piece: some 2 MB
per CPU-second, 1-6 MB/s on these two shared cores, batch or not. Code repeats
itself: 170 held-out standard-library files (3 MB) cut into 0.82M pieces, only 40k
of them distinct.
So `PieceEncoder` cuts text with the same pattern in Python's `re`
(`pretokenize.split`), looks each piece up in a cache of piece -> ids, and asks
HF's BPE model only for pieces it has not seen yet. The ids are identical to HF's
full pipeline (tested on the standard library and with hypothesis); only the
bookkeeping moved.

Lone surrogates: a Python `str` may hold one, which is not Unicode, has no UTF-8
form and cannot cross into Rust (HF raises). Here it is encoded as U+FFFD, the
replacement character, so encode never fails and decode gives U+FFFD in its
place; every valid string round-trips exactly. (Keeping the surrogate's
`surrogatepass` bytes instead would round-trip it too, but then decode could hand
a lone surrogate to callers that print or serve the text, and those would fail.)

Cores: the cutting holds the GIL, so threads do not help. A batch of at least
PARALLEL_MIN_CHARS is split into one contiguous share per core: this process
encodes the first while helper processes (spawned once, on first need, each
with its own piece cache) encode the others. Smaller batches, and any failure
to start or reach a helper, stay in this process.

What it does not do: handle a tokenizer.json whose pre-tokenizer is not this
package's pattern (`CodeTokenizer` falls back to HF's pipeline for those).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from functools import reduce
from multiprocessing import get_context
from operator import iadd

from tokenizers import models

from codelm.tokenizer.pretokenize import CHAR_TO_BYTE, COMPILED, PATTERN, to_byte_level

# Piece -> ids entries kept before the cache is emptied: at about 200 bytes an entry this
# bounds it near 50 MB. The standard library's train split has 220k distinct pieces.
CACHE_LIMIT = 1 << 18
# Characters of text cut and looked up per round of encode_batch: bounds the pieces held
# in memory (about 60 bytes each, 3.6 characters per piece: some 17 MB).
CHUNK_CHARS = 1 << 20
# Characters in a batch before helper processes share it: below this, sending the text
# and the ids between processes costs more than it saves.
PARALLEL_MIN_CHARS = 1 << 20


def is_code_pipeline(spec: dict) -> bool:
    """Whether a tokenizer.json (parsed) cuts text exactly as `pretokenize.PATTERN` says,
    so the fast path gives the same ids as HF's pipeline."""
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    return (
        spec.get("normalizer") is None
        and len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern") == {"Regex": PATTERN}
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("type") == "ByteLevel"
        and steps[1].get("use_regex") is False
        and not steps[1].get("add_prefix_space")
        and model.get("type") == "BPE"
        and not model.get("dropout")
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("byte_fallback")
    )


class PieceEncoder:
    """Text <-> ids through a piece cache; the BPE of a new piece comes from HF's model."""

    def __init__(self, spec: dict, special: dict[str, int], workers: int | None = None):
        """`workers`: processes sharing a large batch, this one included; default: the
        cores this process may run on."""
        self._spec, self._special = spec, special
        if workers is None:
            workers = (
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            )
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        model = spec["model"]
        vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
        # The BPE model alone, called once per new piece: 2.5 us a piece, where a batch through
        # a Tokenizer costs 5-6 us (an added-token split, an Encoding, offsets).
        self._bpe = models.BPE(vocab=vocab, merges=merges)
        self._cache: dict[str, tuple[int, ...]] = {}
        table = [b""] * (max(vocab.values()) + 1)
        for tok, i in vocab.items():
            table[i] = bytes(CHAR_TO_BYTE[c] for c in tok) if tok not in special else tok.encode()
        for tok, i in special.items():
            table[i] = tok.encode()
        self.token_bytes = table  # id -> raw bytes (a special token: its name)

    def _bpe_of(self, piece: str) -> tuple[int, ...]:
        return tuple(t.id for t in self._bpe.tokenize(to_byte_level(piece)))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text; a large batch is shared with helper processes."""
        if self.workers < 2 or sum(map(len, texts)) < PARALLEL_MIN_CHARS:
            return self._encode_here(texts)
        shares = _shares(texts, self.workers)
        if len(shares) == 1:
            return self._encode_here(texts)
        pending: list[Future] | None = None
        try:
            pool = self._helpers()
            pending = [pool.submit(_helper_encode, share) for share in shares[1:]]
        except Exception:  # noqa: BLE001 - no helpers here (a sandbox, no semaphores): do it alone
            self.workers = 1
        out = self._encode_here(shares[0] if pending else texts)
        for i, fut in enumerate(pending or []):
            try:
                out += fut.result()
            except Exception:  # noqa: BLE001 - a helper died: encode its share here
                out += self._encode_here(shares[i + 1])
        return out

    def _helpers(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                # spawn, not fork: this process may hold threads (torch, HF) that fork would copy
                # mid-lock. A helper imports the tokenizer stage only (no torch).
                self._pool = ProcessPoolExecutor(
                    self.workers - 1,
                    mp_context=get_context("spawn"),
                    initializer=_helper_init,
                    initargs=(self._spec, self._special),
                )
                weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
            return self._pool

    def _encode_here(self, texts: list[str]) -> list[list[int]]:
        out: list[list[int]] = []
        for chunk in _chunks(texts, CHUNK_CHARS):
            cut = [COMPILED.findall(t) for t in chunk]
            cache = self._cache
            new = [p for p in set().union(*cut) if p not in cache]
            if len(cache) + len(new) > CACHE_LIMIT:
                cache.clear()
                new = list(set().union(*cut))
            cache.update(zip(new, map(self._bpe_of, new), strict=True))
            get = cache.__getitem__
            for pieces in cut:
                try:
                    # reduce(iadd) extends one list in C: 20% faster than list(chain(...)) here
                    out.append(reduce(iadd, map(get, pieces), []))
                except KeyError:  # another thread emptied the cache since: do without it
                    out.append([i for p in pieces for i in self._bpe_of(p)])
        return out

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if ids and min(ids) < 0:
            raise ValueError(f"token id {min(ids)} is negative")
        try:
            data = b"".join(map(self.token_bytes.__getitem__, ids))
        except IndexError:
            raise ValueError(
                f"token id {max(ids)} is outside the vocabulary ({len(self.token_bytes)})"
            ) from None
        # "replace" substitutes maximal invalid subparts, as HF (Rust's from_utf8_lossy) does
        return data.decode("utf-8", "replace")


_HELPER: PieceEncoder | None = None  # in a helper process: its encoder and piece cache


def _helper_init(spec: dict, special: dict[str, int]) -> None:
    global _HELPER
    _HELPER = PieceEncoder(spec, special, workers=1)


def _helper_encode(texts: list[str]) -> list[list[int]]:
    assert _HELPER is not None
    return _HELPER.encode_batch(texts)


def _shares(texts: list[str], n: int) -> list[list[str]]:
    """`texts` cut into at most `n` consecutive slices of about equal characters: each text
    goes to the share its middle character falls in."""
    total = sum(map(len, texts)) or 1
    out: list[list[str]] = [[] for _ in range(n)]
    size = 0
    for t in texts:
        out[min(n - 1, int((size + len(t) / 2) * n / total))].append(t)
        size += len(t)
    return [share for share in out if share]


def _chunks(texts: list[str], chars: int) -> Iterator[list[str]]:
    """Consecutive slices of `texts` holding about `chars` characters each (at least one text)."""
    start, size = 0, 0
    for i, t in enumerate(texts):
        size += len(t)
        if size >= chars:
            yield texts[start : i + 1]
            start, size = i + 1, 0
    if start < len(texts):
        yield texts[start:]
