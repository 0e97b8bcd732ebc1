"""Measure `codelm data build` per engine and worker count: MB/s, peak memory per worker, stages.

Each run builds the sources in a fresh process (`--one`, so peak memory is the run's own)
with `--engine local --num-proc N` or `--engine dask --workers N` (a local Dask cluster
of N processes), and prints wall seconds, throughput over the bytes read (`bytes_seen`),
CPU seconds of the whole process tree, the peak resident memory of the client and of the
largest worker, and for dask the seconds per stage (map: read + per-file work + exact pass;
lsh_group: band keys and buckets; lsh_verify: pairs in buckets and their resolution; judge;
write). A read floor (read and decode every file in one process) is printed first. The
content hash of every run is compared: an engine or worker count that changed the rows fails.

    .venv/bin/python bench/data_build.py [--source stdlib site-packages] [--engine local dask]
        [--workers 1 2] [--reps 1]

Timings on a shared machine are noisy: quote the median of a few runs, with the load average.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def read_floor(sources: list[str]) -> tuple[float, int]:
    """Seconds to read and UTF-8-decode every file of `sources`, and the bytes read."""
    from codelm.data.records import RawFile
    from codelm.data.sources import open_source

    t0 = time.perf_counter()
    nbytes = 0
    for source in sources:
        for item in open_source(source):
            if isinstance(item, RawFile):
                nbytes += len(item.data)
                item.data.decode("utf-8", "replace")
    return time.perf_counter() - t0, nbytes


def breakdown(sources: list[str]) -> dict[str, float]:
    """CPU seconds of each part of the per-file work (the map stage), in one process."""
    from codelm.data.dedup import DedupConfig, exact_key, signature
    from codelm.data.doctests import mine_doctests
    from codelm.data.filters import FilterConfig, check
    from codelm.data.pairs import PairConfig, mine_pairs
    from codelm.data.records import RawFile
    from codelm.data.sources import open_source

    parts = dict.fromkeys(("read", "filters+parse", "exact_key", "minhash", "pairs"), 0.0)
    fcfg, dcfg, pcfg = FilterConfig(), DedupConfig(), PairConfig()
    clock = time.process_time
    t = clock()
    for source in sources:
        for item in open_source(source):
            parts["read"] += clock() - t
            if isinstance(item, RawFile):
                steps = [clock()]
                checked = check(item.data, fcfg, item.language)
                steps.append(clock())
                if checked.reason is None:
                    exact_key(checked.text)
                    steps.append(clock())
                    signature(checked.text, dcfg)
                    steps.append(clock())
                    if checked.tree is not None:
                        mine_pairs(checked.text, checked.tree, pcfg)
                        mine_doctests(checked.text, checked.tree, pcfg)
                    steps.append(clock())
                for name, a, b in zip(list(parts)[1:], steps, steps[1:], strict=False):
                    parts[name] += b - a
            t = clock()
    return parts


def one(engine: str, workers: int, sources: list[str], out: str) -> dict:
    """One build in this process; what it measured."""
    from codelm.data.build import DataConfig, build_dataset

    cfg = DataConfig(engine=engine, **({"workers": workers} if engine == "dask" else {"num_proc": workers}))
    t0 = time.perf_counter()
    profile: dict = {}
    stats = build_dataset(sources, out, cfg, progress=False, log=lambda m: None, profile=profile)
    wall = time.perf_counter() - t0
    multiprocessing.active_children()  # reaps the pool's exited workers, so RUSAGE_CHILDREN counts them
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child
    own = resource.getrusage(resource.RUSAGE_SELF)
    run = {"wall": wall, "bytes": stats["bytes_seen"], "files": stats["files_seen"], "client_mb": me}
    run["client_cpu"] = own.ru_utime + own.ru_stime  # this process: reading, judging (and, local x1, all)
    if engine == "dask":
        run["worker_mb"] = max(profile["worker_peak_mb"])
        run["stages"] = profile["seconds"]
    else:  # one process does the work itself; more hand it to a pool
        run["worker_mb"] = me if workers == 1 else kids
    run["content_hash"] = json.loads((Path(out) / "manifest.json").read_text())["content_hash"]
    return run


def run_one(engine: str, workers: int, sources: list[str], out: Path) -> dict:
    """`one` in a fresh process, plus the CPU seconds of its process tree."""
    cmd = [sys.executable, __file__, "--one", engine, str(workers), "--out", str(out), "--source", *sources]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = json.loads(done.stdout.strip().splitlines()[-1])
    run["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run


def report(engine: str, workers: int, runs: list[dict]) -> str:
    wall = statistics.median(r["wall"] for r in runs)
    mb = runs[0]["bytes"] / 1e6
    cpu = statistics.median(r["cpu"] for r in runs)
    line = (
        f"{engine:5} x{workers}: {wall:6.1f} s  {mb / wall:5.2f} MB/s  {mb / cpu:4.2f} MB/CPU-s"
        f"  client {mb / statistics.median(r['client_cpu'] for r in runs):5.1f} MB/CPU-s"
        f"  |  peak MB: client {max(r['client_mb'] for r in runs):5.0f}"
        f"  worker {max(r['worker_mb'] for r in runs) or float('nan'):5.0f}"  # nan: a pool not reaped
    )
    if "stages" in runs[0]:
        stages = {k: statistics.median(r["stages"].get(k, 0.0) for r in runs) for k in runs[0]["stages"]}
        line += "  |  " + "  ".join(f"{k} {v:.1f}" for k, v in stages.items())
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", nargs="+", default=["stdlib"])
    p.add_argument("--engine", nargs="+", default=["local", "dask"], choices=["local", "dask"])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--breakdown", action="store_true", help="also time each part of the per-file work")
    p.add_argument("--one", nargs=2, metavar=("ENGINE", "WORKERS"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.source, a.out)))
        return
    from common import machine  # bench/, the script's own folder, is on sys.path

    print(machine())
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    floor, nbytes = read_floor(a.source)
    print(f"sources {' + '.join(a.source)}: {nbytes / 1e6:.1f} MB; read+decode floor {floor:.1f} s")
    if a.breakdown:
        parts = breakdown(a.source)
        total = sum(parts.values())
        shares = "  ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in parts.items())
        print(f"per-file work, CPU seconds in one process: {shares}; {nbytes / 1e6 / total:.2f} MB/CPU-s")
    hashes = set()
    with tempfile.TemporaryDirectory() as tmp:
        for engine in a.engine:
            for n in a.workers:
                runs = [run_one(engine, n, a.source, Path(tmp) / "data") for _ in range(a.reps)]
                hashes |= {r["content_hash"] for r in runs}
                print(report(engine, n, runs), flush=True)
    if len(hashes) != 1:
        raise SystemExit(f"outputs differ between engines or worker counts: {sorted(hashes)}")
    print(f"identical rows for every engine and worker count (content hash {hashes.pop()})")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
