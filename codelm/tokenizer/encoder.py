"""Fast, lossless encode and decode for a code tokenizer, with HF `tokenizers` doing every BPE step.

HF's own pipeline (normalize, pre-tokenize, BPE, then an `Encoding` with offsets
and a token string for every token) costs about 2 us of CPU per piece: some 2 MB
per CPU-second, 1-6 MB/s on these two shared cores, batch or not. Code repeats
itself: 170 held-out standard-library files (6 MB) cut into 1.16M pieces, only 73k
of them distinct.
So `PieceEncoder` cuts text with the code pattern, looks each piece up in a cache
of piece -> ids, and asks HF's BPE model only for pieces it has not seen yet. The
ids are identical to HF's full pipeline (tested on the standard library and with
hypothesis); only the bookkeeping moved.

Two engines do the cutting and the cache, with the same results (tested):
- C++ (`pieces.cpp`, through `pieces.py`), wherever a C++ compiler built it: the
  cut, lookups and id assembly take about 0.05 s of CPU per 6 MB. The new pieces
  go to HF's BPE in a few long strings through `encode_batch_fast`, which runs
  them on every core (rayon): 0.1 s for 73k pieces on 2 cores, where one
  `BPE.tokenize` call per piece took 0.19 s holding the GIL.
- Python, otherwise (or with CODELM_NATIVE=0): `re` cuts with `pretokenize.COMPILED`
  (about 28 MB/s), a dict is the cache, and each new piece is one `BPE.tokenize` call.

Lone surrogates: a Python `str` may hold one, which is not Unicode, has no UTF-8
form and cannot cross into Rust (HF raises). Here it is encoded as U+FFFD, the
replacement character, so encode never fails and decode gives U+FFFD in its
place; every valid string round-trips exactly. (Keeping the surrogate's
`surrogatepass` bytes instead would round-trip it too, but then decode could hand
a lone surrogate to callers that print or serve the text, and those would fail.)

What it does not do: handle a tokenizer.json whose pre-tokenizer is not this
package's pattern (`CodeTokenizer` falls back to HF's pipeline for those).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from functools import reduce
from operator import iadd

from tokenizers import Tokenizer, models, pre_tokenizers

from codelm.tokenizer import pieces
from codelm.tokenizer.pretokenize import CHAR_TO_BYTE, COMPILED, PATTERN, to_byte_level

# Piece -> ids entries kept before the cache is emptied: at about 200 bytes an entry in
# Python (60 in C++) this bounds it near 50 MB. The standard library's train split has 220k
# distinct pieces.
CACHE_LIMIT = 1 << 18
# Characters of text cut and looked up per round of encode_batch: bounds the pieces held
# in memory (about 60 bytes each in Python, 3.6 characters per piece: some 17 MB).
CHUNK_CHARS = 1 << 20
# New pieces per string handed to HF's BPE: enough strings for every core, each long
# enough that its call overhead is small (measured: 64 strings for 73k pieces).
BPE_PIECES = 1024


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
    """Text <-> ids through a piece cache; the BPE of a new piece comes from HF's model.

    Safe to share between threads: the C++ cache is used under a lock; the Python one is
    a dict, whose single operations are atomic under the GIL."""

    def __init__(self, spec: dict, special: dict[str, int], native: bool | None = None):
        """`native`: use the C++ engine; default: where `pieces.available()`."""
        model = spec["model"]
        vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
        self._bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        # The new pieces arrive as one string, spelled in the byte-level alphabet, with a
        # space (which that alphabet lacks) between pieces.
        self._bpe.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
        self._model = self._bpe.model  # the same model, for one piece at a time
        table = [b""] * (max(vocab.values()) + 1)
        for tok, i in vocab.items():
            table[i] = bytes(CHAR_TO_BYTE[c] for c in tok) if tok not in special else tok.encode()
        for tok, i in special.items():
            table[i] = tok.encode()
        self.token_bytes = table  # id -> raw bytes (a special token: its name)
        self._cache: dict[str, tuple[int, ...]] = {}
        self._native: pieces.NativePieces | None = None
        if native if native is not None else pieces.available():
            ids = set(special.values())
            self._native = pieces.NativePieces([0 if i in ids else len(b) for i, b in enumerate(table)])
        self._lock = threading.Lock()

    @property
    def native(self) -> bool:
        """Whether the C++ engine cuts and caches."""
        return self._native is not None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text."""
        out: list[list[int]] = []
        for chunk in _chunks(texts, CHUNK_CHARS):
            if self._native is None:
                out += self._encode_python(chunk)
            else:
                with self._lock:
                    out += self._encode_native(self._native, chunk)
        return out

    def _encode_native(self, native: pieces.NativePieces, texts: list[str]) -> list[list[int]]:
        if native.cached() > CACHE_LIMIT:
            native.clear()
        fresh = native.scan(texts)
        firsts = range(0, fresh, BPE_PIECES)
        parts = [native.fresh(first, min(first + BPE_PIECES, fresh)) for first in firsts]
        encodings = self._bpe.encode_batch_fast(parts, add_special_tokens=False)
        for first, enc in zip(firsts, encodings, strict=True):
            want = min(BPE_PIECES, fresh - first)
            if native.learn(first, enc.ids) != want:
                raise RuntimeError("HF's BPE ids do not fit the pieces they were asked for")
        return native.emit()

    def _bpe_of(self, piece: str) -> tuple[int, ...]:
        return tuple(t.id for t in self._model.tokenize(to_byte_level(piece)))

    def _encode_python(self, texts: list[str]) -> list[list[int]]:
        cut = [COMPILED.findall(t) for t in texts]
        cache = self._cache
        new = [p for p in set().union(*cut) if p not in cache]
        if len(cache) + len(new) > CACHE_LIMIT:
            cache.clear()
            new = list(set().union(*cut))
        cache.update(zip(new, map(self._bpe_of, new), strict=True))
        get = cache.__getitem__
        out: list[list[int]] = []
        for text_pieces in cut:
            try:
                # reduce(iadd) extends one list in C: 20% faster than list(chain(...)) here
                out.append(reduce(iadd, map(get, text_pieces), []))
            except KeyError:  # another thread emptied the cache since: do without it
                out.append([i for p in text_pieces for i in self._bpe_of(p)])
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
