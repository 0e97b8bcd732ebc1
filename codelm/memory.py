"""glibc's malloc, tuned per use: keep freed memory while training, give it back while serving.

Training (`keep_freed_memory`): glibc serves each allocation above its mmap threshold (128
KB at start, adapting up to 32 MB) with fresh pages from mmap, and returns them to the
kernel when freed. A training step frees and re-allocates the same tens of MB every time
(activations, logits, optimizer temporaries), so every step faults all of those pages in
again: about 530,000 minor page faults and 1 s of system time per 10 steps of the `small`
preset on 2 cores. Serving every allocation from the heap and never trimming it removes
them (10,000 faults or fewer): 3,310-3,600 -> 3,770-4,000 tokens/s for that step, four
processes of each. The cost is that the process keeps its peak memory until it exits,
which a training run reaches in its first step anyway.

Serving (`give_back_free_memory`): requests of every size (prompt-cache entries of a few
tokens to a whole context, request bodies up to megabytes) leave free holes in the heap that
glibc keeps. Under 64 streaming clients the bytes in use stayed flat while the heap's free
bytes, and with them the server's RSS, kept growing (bench/serve_load.py). `malloc_trim`
returns the free pages inside the heap to the kernel. Neither does anything where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30  # bytes: above any single tensor of a CPU training step at these sizes


@functools.cache
def _glibc(name: str):
    """A function of glibc's malloc, or None (macOS, musl, no libc found). Looked up once:
    find_library runs `ldconfig -p` (2 ms), and the server asks every few seconds."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to neither mmap large blocks nor trim the heap; True if it took."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))


def give_back_free_memory() -> bool:
    """Return the heap's free pages to the kernel (malloc_trim); True if glibc released some."""
    trim = _glibc("malloc_trim")
    return bool(trim(0)) if trim is not None else False


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
        + ("uordblks", "fordblks", "keepcost")
    ]


def heap_bytes() -> dict[str, int] | None:
    """glibc's heap, all arenas: bytes in use (what a leak grows) and free inside the heap (what
    fragmentation grows), plus large blocks mmapped on their own; None without glibc 2.33+."""
    info = _glibc("mallinfo2")
    if info is None:
        return None
    info.restype = _MallInfo2
    m = info()
    return {"in_use": m.uordblks + m.hblkhd, "free": m.fordblks}
