"""The editor's own numbers, kept in memory and answered to `codelm/stats`; nothing is sent
anywhere or written to disk.

Counted: requests (automatic and invoked), answers from the cache, requests cancelled
by the client and superseded by typing, errors; suggestions shown (answers with at
least one item) and accepted (the item's command, `codelm.acceptCompletion`, which the
client runs when the user takes it). Timed: request to answer for answers with items
(`latency_ms`), those the model made (`model_latency_ms`), and from a cancel until the
engine dropped the generation (`cancel_stop_ms`). The last `WINDOW` of each are kept.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict, deque
from typing import Any

WINDOW = 2000  # timings kept per series
ISSUED = 1000  # suggestion ids remembered for acceptance


def percentiles(values: list[float]) -> dict[str, float | int]:
    """p50 and p95 (nearest rank) of `values`, and how many there were."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "n": 0}
    s = sorted(values)
    rank = lambda q: s[max(0, math.ceil(q * len(s)) - 1)]  # noqa: E731
    return {"p50": round(rank(0.5), 2), "p95": round(rank(0.95), 2), "n": len(s)}


class Telemetry:
    COUNTS = ("requests", "automatic", "invoked", "cache_hits", "model_calls", "empty", "cancelled")
    COUNTS += ("superseded", "errors", "shown", "accepted", "prompt_tokens", "cached_tokens")

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the scheduler's thread reports cancel stops
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self._series: dict[str, deque[float]] = {
            name: deque(maxlen=WINDOW) for name in ("latency_ms", "model_latency_ms", "cancel_stop_ms")
        }
        self._issued: OrderedDict[str, bool] = OrderedDict()  # id -> accepted
        self._ids = itertools.count(1)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def time(self, series: str, ms: float) -> None:
        with self._lock:
            self._series[series].append(ms)

    def issue(self) -> str:
        """A new suggestion's id, for its accept command."""
        with self._lock:
            sid = f"codelm-{next(self._ids)}"
            self._issued[sid] = False
            while len(self._issued) > ISSUED:
                self._issued.popitem(last=False)
            return sid

    def accept(self, sid: Any) -> bool:
        """Count an accepted suggestion once; False for an id never issued (or forgotten)."""
        with self._lock:
            if not isinstance(sid, str) or self._issued.get(sid, True):
                return False
            self._issued[sid] = True
            self.counts["accepted"] += 1
            return True

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            out["accept_rate"] = round(out["accepted"] / out["shown"], 4) if out["shown"] else 0.0
            out["cache_hit_rate"] = round(out["cache_hits"] / out["requests"], 4) if out["requests"] else 0.0
            for name, values in self._series.items():
                out[name] = percentiles(list(values))
        return {**out, **extra}
