"""bench/serve_load.py, bounded small: 8 streaming clients, 40 requests (at most 30 s), against
a real `codelm serve` subprocess (a random tiny model), with malformed requests and clients that
hang up at the bench's own shares. Correctness only: no timing, no memory figures."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def serve_load() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the bench scripts import each other by name
    try:
        return importlib.import_module("serve_load")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def loaded(serve_load, tmp_path_factory) -> dict[str, Any]:
    # Bounded by count, so that the mix (each kind by its share, in start order) is the same on
    # a slow machine; the time is only an upper bound.
    args = [
        "--clients",
        "8",
        "--max-requests",
        "40",
        "--seconds",
        "30",
        "--warmup",
        "0.5",
        "--warmup-max",
        "0",
    ]
    args = serve_load.parse_args([*args, "--drain", "20", "--max-tokens", "16"])
    return serve_load.run_load(serve_load.random_run(tmp_path_factory.mktemp("run")), args)


def test_the_load_gets_no_server_error_and_every_good_request_is_served(loaded):
    t = loaded["tally"]
    assert t.errors == {}  # no 5xx, no error event, no transport error, no 4xx to a good request
    assert t.served > 0 and t.tokens > 0 and len(t.ttft) == t.served
    assert loaded["stats"]["errors"] == 0 and loaded["stats"]["timed_out"] == 0


def test_every_malformed_request_gets_a_4xx_with_a_one_line_message(loaded):
    t = loaded["tally"]
    assert t.malformed > 0
    assert t.malformed_ok == t.malformed


def test_every_hung_up_request_frees_its_slot(loaded):
    t, stats, health = loaded["tally"], loaded["stats"], loaded["health"]
    assert t.disconnects > 0
    assert loaded["idle"] and health["active"] == 0 and health["queue_depth"] == 0
    # Every job the scheduler took has ended, and the hang-ups as cancellations. A hung-up row
    # may reach its end just before the server sees the hang-up (then it counts as completed):
    # rare, never half of them.
    assert (
        stats["submitted"] == stats["completed"] + stats["cancelled"] + stats["timed_out"] + stats["errors"]
    )
    assert stats["cancelled"] >= t.disconnects / 2


def test_the_server_is_still_up_after_the_load(loaded):
    assert loaded["alive"] and loaded["health"]["status"] == "ok" and loaded["health"]["model_loaded"]
