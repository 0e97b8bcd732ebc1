"""Keep freed memory inside the process during training (glibc only).

glibc serves each allocation above its mmap threshold (128 KB at start, adapting up to
32 MB) with fresh pages from mmap, and returns them to the kernel when freed. A training
step frees and re-allocates the same tens of MB every time (activations, logits,
optimizer temporaries), so every step faults all of those pages in again: about 530,000
minor page faults and 1 s of system time per 10 steps of the `small` preset on 2 cores.
Serving every allocation from the heap and never trimming it removes them (10,000 faults
or fewer): 3,310-3,600 -> 3,770-4,000 tokens/s for that step, four processes of each.

The cost is that the process keeps its peak memory until it exits, which a training run
reaches in its first step anyway. It does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30  # bytes: above any single tensor of a CPU training step at these sizes


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to neither mmap large blocks nor trim the heap; True if it took."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl) or no libc found
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
