"""The C++ piece encoder (pieces.cpp) through ctypes: cut, cache lookup and id assembly in C++.

`available()` builds pieces.cpp with the system's C++ compiler once per machine
(about 1 s, cached in ~/.cache/codelm; see `codelm.cbuild`) and loads it. It is
False, with the reason in `reason()`, without a compiler, where the build or load
fails, or with CODELM_NATIVE=0 in the environment; `encoder.PieceEncoder` then
cuts with Python's `re`, the same pieces a few times slower.

`NativePieces` holds one piece cache. It is not thread-safe: the caller locks.
BPE is not here: `scan` hands back the pieces the cache has not seen, spelled in
the byte-level alphabet, and `learn` takes their ids from HF's BPE.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
import weakref
from array import array
from itertools import accumulate
from pathlib import Path

from codelm import cbuild

SOURCE = Path(__file__).with_name("pieces.cpp")
_FLAGS = ["-O2", "-shared", "-fPIC", "-std=c++17"]  # no -march=native: the build fits any CPU

_reason = ""
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {  # name: (result, arguments)
    "pieces_new": (_PTR, []),
    "pieces_free": (None, [_PTR]),
    "pieces_cached": (_I64, [_PTR]),
    "pieces_clear": (None, [_PTR]),
    "pieces_set_lengths": (None, [_PTR, _PTR, _I64]),
    "pieces_scan": (_I64, [_PTR, ctypes.c_char_p, _PTR, _I64]),
    "pieces_fresh": (_PTR, [_PTR, _I64, _I64, ctypes.POINTER(_I64)]),
    "pieces_learn": (_I64, [_PTR, _I64, _PTR, _I64]),
    "pieces_total": (_I64, [_PTR]),
    "pieces_emit": (None, [_PTR, _PTR, _PTR]),
    "pieces_cut": (_I64, [ctypes.c_char_p, _I64, _PTR, _I64]),
}


def _command(out: Path) -> list[str]:
    return [cbuild.compiler(), *_FLAGS, str(SOURCE), "-o", str(out)]


def _key() -> tuple[str, ...]:
    return (" ".join(_FLAGS), sys.platform, platform.machine())


def _library() -> Path:
    """Where this source's build lives."""
    return cbuild.library_path(SOURCE, _key())


@functools.cache
def _load() -> ctypes.CDLL | None:
    global _reason
    what = "the tokenizer's piece encoder (about 1 s)"
    try:
        lib = cbuild.build_and_load(SOURCE, _key(), _command, what, lambda path: ctypes.CDLL(str(path)))
    except RuntimeError as e:
        _reason = str(e)
        return None
    for name, (result, args) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = result, args
    return lib


def available() -> bool:
    """Whether the piece encoder is loaded (built first if needed); see `reason()` if not."""
    global _reason
    if os.environ.get("CODELM_NATIVE", "1") == "0":
        _reason = "CODELM_NATIVE=0"
        return False
    return _load() is not None


def _require() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the piece encoder is not available: {_reason}")
    return lib


def reason() -> str:
    """Why `available()` is False ("" when it is True or was not asked)."""
    return _reason


def _address(buf: array) -> int:
    return buf.buffer_info()[0]


class NativePieces:
    """One piece cache in C++: piece -> ids. `token_sizes[i]`: bytes token id i stands for
    (0 for ids BPE never produces, such as special tokens)."""

    def __init__(self, token_sizes: list[int]):
        self._lib = lib = _require()
        self._h = lib.pieces_new()
        weakref.finalize(self, lib.pieces_free, self._h)
        sizes = array("i", token_sizes)
        lib.pieces_set_lengths(self._h, _address(sizes), len(sizes))
        self._texts = 0  # texts in the last scan

    def cached(self) -> int:
        return self._lib.pieces_cached(self._h)

    def clear(self) -> None:
        self._lib.pieces_clear(self._h)

    def scan(self, texts: list[str]) -> int:
        """Cut `texts` into pieces; returns how many distinct pieces the cache lacks."""
        data = [t.encode("utf-8", "surrogatepass") for t in texts]
        ends = array("q", [0])
        ends.extend(accumulate(map(len, data)))
        self._texts = len(texts)
        return self._lib.pieces_scan(self._h, b"".join(data), _address(ends), len(texts))

    def fresh(self, first: int, last: int) -> str:
        """The byte-level spelling of the lacking pieces first..last-1, joined by spaces
        (which the byte-level alphabet never contains)."""
        size = _I64()
        ptr = self._lib.pieces_fresh(self._h, first, last, ctypes.byref(size))
        return ctypes.string_at(ptr, size.value).decode("utf-8")

    def learn(self, first: int, ids: list[int]) -> int:
        """Give the lacking pieces first, first+1, ... their BPE ids, back to back; returns
        how many pieces they covered (-1 if they do not fit the pieces' sizes)."""
        buf = array("i", ids)
        return self._lib.pieces_learn(self._h, first, _address(buf), len(buf))

    def emit(self) -> list[list[int]]:
        """The ids of each text of the last scan (after every lacking piece is learned)."""
        total = self._lib.pieces_total(self._h)
        if total < 0:
            raise RuntimeError("a piece was never learned")
        out, ends = array("i", bytes(4 * total)), array("q", bytes(8 * self._texts))
        self._lib.pieces_emit(self._h, _address(out), _address(ends))
        flat, start, result = out.tolist(), 0, []
        for end in ends:
            result.append(flat[start:end])
            start = end
        return result


def cut(text: str) -> list[str]:
    """The pieces of `text` as the C++ cut gives them (`pretokenize.split`'s twin), for tests."""
    lib = _require()
    data = text.encode("utf-8", "surrogatepass")
    ends = array("q", bytes(8 * len(data)))
    n = lib.pieces_cut(data, len(data), _address(ends), len(ends))
    starts = [0, *ends[: n - 1]] if n else []
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, ends[:n], strict=False)]
