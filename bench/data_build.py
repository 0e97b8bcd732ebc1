"""Measure `codelm data build` on the standard library: seconds, MB/s, files/s and counts.

Runs the real command (`python -m codelm data build SOURCE --out TMP`) a few
times per `--num-proc` value and prints median/min/max wall time, throughput
over the bytes read (`bytes_seen` in stats.json), and the ratio to a floor: the
time to merely read and decode the same files in one process. CPU seconds
(the command plus its workers) are printed too: unlike wall time they barely
move when other jobs share the machine. The content hash
of every run is compared, so a parallel run that changed the output fails loudly.

    .venv/bin/python bench/data_build.py [--reps 3] [--num-proc 1 2] [--source stdlib]

Timings on a shared machine are noisy; the median of a few runs is the number to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def read_floor(source: str) -> tuple[float, int]:
    """Seconds to read and UTF-8-decode every file of `source`, and the bytes read."""
    from codelm.data.records import RawFile
    from codelm.data.sources import open_source

    t0 = time.perf_counter()
    nbytes = 0
    for item in open_source(source):
        if isinstance(item, RawFile):
            nbytes += len(item.data)
            item.data.decode("utf-8", "replace")
    return time.perf_counter() - t0, nbytes


def run_build(source: str, out: Path, num_proc: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and its worker processes) of one build."""
    cmd = [sys.executable, "-m", "codelm", "data", "build", source, "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--num-proc", str(num_proc)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times):6.2f} s  min {min(times):6.2f} s  max {max(times):6.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="stdlib")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
    from common import machine  # bench/, the script's own folder, is on sys.path

    print(machine())

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    floors = [read_floor(a.source) for _ in range(a.reps)]
    floor = statistics.median(t for t, _ in floors)
    print(f"read+decode floor ({a.source}): {summary([t for t, _ in floors])}")
    hashes = set()
    stats = {}
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data"
        for n in a.num_proc:
            runs = [run_build(a.source, out, n) for _ in range(a.reps)]
            times = [wall for wall, _ in runs]
            cpu = statistics.median(c for _, c in runs)
            stats = json.loads((out / "stats.json").read_text())
            hashes.add(json.loads((out / "manifest.json").read_text())["content_hash"])
            med = medians[n] = statistics.median(times)
            mb = stats["bytes_seen"] / 1e6
            print(
                f"data build --num-proc {n}: {summary(times)}  |  {mb / med:5.2f} MB/s"
                f"  {stats['files_seen'] / med:6.0f} files/s"
                f"  |  CPU {cpu:5.1f} s ({mb / cpu:4.2f} MB per CPU-s)"
                f"  |  {med / floor:5.1f}x the read floor"
            )
    first = a.num_proc[0]
    for n in a.num_proc[1:]:
        print(f"--num-proc {n} vs {first}: {medians[first] / medians[n]:.2f}x the speed")
    if len(hashes) != 1:
        raise SystemExit(f"outputs differ between --num-proc values: {sorted(hashes)}")
    print(f"identical output for every --num-proc (content hash {hashes.pop()})")
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    print("counts (stats.json):")
    for k, v in stats.items():
        if v and not isinstance(v, dict):
            print(f"  {k:24} {v:>12,}")


if __name__ == "__main__":
    main()
