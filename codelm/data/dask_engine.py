"""`codelm data build --engine dask`: the same build, its per-file work and its near-duplicate
detection run on a Dask distributed cluster, its DATA written as sharded Parquet.

Why Dask distributed and not Ray: `dask[distributed]` is pure Python and pip-installs cleanly
(Ray is a ~70 MB binary wheel with its own object store), it starts a local cluster in-process
for a laptop or a test, and data teams already run Dask clusters. It is an optional extra
(`pip install 'codelm[dask]'`), imported only here, only when `--engine dask` is asked for.

The rows written are exactly the local engine's (the same files kept, duplicates dropped,
splits, rows in the same order, the same content hash), because the same code decides:

1. map: this process reads the sources in order, as the local engine does, and scatters
   partitions of files (PART_FILES / PART_BYTES) to the workers, where process.FileProcessor
   does the per-file work. The Results (texts, pairs, signatures) stay in worker memory
   (Dask spills them to disk under pressure); only their small `Meta` come back.
2. exact: judge.Judge runs over the metas in input order with no near check; the files that
   reach its near check (exact-unique, with a signature) are the near-duplicate candidates.
3. near: sharded by LSH band (lsh.py): per partition the candidates' band keys, per band a
   task groups its buckets and a task verifies the pairs in them; here the union of every
   band's edges is resolved in input order (`lsh.resolve`): what dedup.NearDupIndex drops.
4. write: the Judge runs again over the metas, now with the dropped set, and records what
   each partition keeps; a task per partition writes its rows (judge.kept_rows) as one
   Parquet file per split, and returns its rows' content-hash records. Here they are renamed
   into shards (`train-00000-of-00003.parquet`: dataset.py) and the content hash summed.

A partition that keeps nothing of a split writes no shard of it, so shard counts differ per
split; a split with no rows at all gets one empty shard. With `--scheduler`, codelm must be
installed on the workers and DATA's parent folder must be the same path on every worker
(a shared filesystem): the workers write the shards there. It does not read sources on the
workers: this process is the reader, as in the local engine.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import pickle
import resource
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from codelm.data import lsh
from codelm.data.dataset import SPLITS, DataWriter, shard_file, split_file
from codelm.data.dedup import lsh_bands, min_equal
from codelm.data.judge import Judge, kept_rows
from codelm.data.process import FileProcessor, Meta, Result, WorkerConfig, chunks
from codelm.data.records import Skip
from codelm.errors import CodelmError, first_line

PART_FILES = 2048  # files per partition (one task): big enough to amortise a task's overhead
PART_BYTES = 64_000_000  # ...and cut earlier by size, to bound a task's memory
IN_FLIGHT_PER_WORKER = 2  # partitions scattered ahead of the judge, per worker
CONNECT_TIMEOUT = 10  # seconds to reach a scheduler given by --scheduler
INSTALL_HINT = "pip install 'codelm[dask]'"

MakeJudge = Callable[..., Judge]  # (near, sink, warn=...) -> Judge, from build.py


def _distributed():
    try:
        import distributed
    except ImportError:
        raise CodelmError(f"--engine dask needs Dask distributed: {INSTALL_HINT}") from None
    return distributed


def _probe(address: str) -> None:
    """Fail fast, in one line, when nothing listens at a tcp/tls scheduler address: Dask's own
    client retries until its timeout and then complains from a finaliser."""
    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return  # inproc://, ucx://: Dask's own client says what is wrong
        host, port = parse_host_port(loc)
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except (OSError, ValueError, TypeError) as e:
        raise CodelmError(f"cannot reach the Dask scheduler at {address}: {first_line(e)}") from None


@contextlib.contextmanager
def connect(scheduler: str, workers: int) -> Iterator:
    """A Dask Client: of the scheduler at `scheduler`, else of a local cluster of `workers`
    processes (0: one per CPU core) that lives as long as the block."""
    distributed = _distributed()
    if not scheduler:
        n = workers or os.cpu_count() or 1
        # one thread per worker: the per-file work is Python, so threads would share one GIL
        with (
            distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,  # no dashboard, and its HTTP port on any free one:
                scheduler_kwargs={"dashboard_address": ":0"},  # 8787 may be taken
                silence_logs=logging.ERROR,
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            yield client
        return
    _probe(scheduler)
    hook = sys.unraisablehook
    try:
        sys.unraisablehook = lambda unraisable: None  # a failed Client complains again when collected
        client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, ValueError, TimeoutError) as e:
        msg = f"cannot reach the Dask scheduler at {scheduler}: {first_line(e)}"
        gc.collect()
        raise CodelmError(msg) from None
    finally:
        sys.unraisablehook = hook
    with client:
        yield client


# ---------------------------------------------------------------- tasks (run on the workers)

_processors: dict[str, FileProcessor] = {}  # one per worker process and WorkerConfig


def process_part(token: str, cfg: WorkerConfig, items: list) -> list[Result | Skip]:
    """The per-file work of one partition, by the worker's FileProcessor for `cfg`."""
    processor = _processors.get(token)
    if processor is None:
        _processors.clear()  # a new build: the old config's decontaminator is not needed
        processor = _processors[token] = FileProcessor(cfg)
    return processor.run_chunk(items)


def metas_of(results: list[Result | Skip]) -> list[Meta | Skip]:
    return [r if isinstance(r, Skip) else r.meta() for r in results]


def _sigs(results: list, positions: np.ndarray) -> np.ndarray:
    return np.stack([results[p].sig for p in positions]) if len(positions) else np.zeros((0, 0), np.uint32)


def part_band_keys(results: list, positions: np.ndarray, offset: int, bands) -> tuple:
    """(index, band keys) of the candidates at `positions` of a partition starting at `offset`."""
    return positions + offset, lsh.band_keys(_sigs(results, positions), bands)


def part_sigs(results: list, positions: np.ndarray, offset: int) -> tuple:
    """(index, signatures) of the files at `positions` of a partition starting at `offset`."""
    return positions + offset, _sigs(results, positions)


def write_part(results: list, plan: list, folder: str, documents: bool) -> tuple[dict, bytes]:
    """Write a partition's kept rows, one Parquet file per split in `folder`; return each file's
    rows and sha256, and the rows' content-hash records in order."""
    Path(folder).mkdir(parents=True, exist_ok=True)  # a task retried elsewhere writes again
    writer = DataWriter(Path(folder), keep_records=True)
    for pos, split, kept_pairs in plan:
        for row in kept_rows(results[pos], kept_pairs, documents):
            writer.add(split, row)
    writer.close()
    return writer.files(), bytes(writer.records)


# ---------------------------------------------------------------- the build (runs here)


def _result(future):
    """A task's result; a worker that died (killed for memory, most likely) is one line."""
    try:
        return future.result()
    except _distributed().KilledWorker:
        raise CodelmError("a Dask worker died (out of memory?): give the workers more memory") from None


def build_on_dask(
    stream: Iterable,
    wcfg: WorkerConfig,
    cfg,
    writer: DataWriter,
    make_judge: MakeJudge,
    advance,
    profile: dict | None = None,
) -> Judge:
    """Build into `writer` (sharded) on the cluster `cfg.scheduler` / `cfg.workers` asks for;
    return the Judge whose stats are the build's. `profile`, if given, receives the stages in the
    order they ran ("stages": "start" the cluster; "map" read, per-file work and exact pass;
    "lsh_group" band keys and buckets; "lsh_verify" pairs in buckets and the resolution;
    "judge"; "write"), the seconds of each ("seconds") and each worker's peak RSS in MB
    ("worker_peak_mb"), for bench/data_build.py."""
    profile = {} if profile is None else profile
    clock = _Clock(profile.setdefault("stages", []), profile.setdefault("seconds", {}))
    with connect(cfg.scheduler, cfg.workers) as client:
        clock("start")
        token = hashlib.sha256(pickle.dumps(wcfg)).hexdigest()
        wcfg_f = client.scatter(wcfg, broadcast=True)
        parts, candidates = _map(client, stream, token, wcfg_f, make_judge, advance)
        clock("map")
        dropped = _near_duplicates(client, parts, candidates, cfg.dedup, clock) if cfg.near_dup else set()
        judge, plans = _judge(parts, dropped, make_judge)
        clock("judge")
        _write(client, parts, plans, writer, cfg.documents)
        clock("write")
        profile["worker_peak_mb"] = sorted(client.run(_peak_rss_mb).values())
    return judge


class _Clock:
    """Each stage's name as it ends, in order, into `stages`; the seconds since the previous
    call under its name, into `seconds`. What ran and how long it took are kept apart: the
    tests check the first, bench/data_build.py reports the second."""

    def __init__(self, stages: list, seconds: dict):
        self.stages, self.seconds, self.last = stages, seconds, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages.append(stage)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now


def _peak_rss_mb() -> float:
    """This worker process's peak resident memory, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Part:
    """One partition on the cluster: where it starts in the stream, its Results, its Metas."""

    def __init__(self, offset: int, size: int, results, metas):
        self.offset, self.size, self.results, self.metas = offset, size, results, metas


def _map(client, stream, token: str, wcfg_f, make_judge: MakeJudge, advance) -> tuple[list[_Part], list]:
    """Stage 1 and 2: the per-file work on the cluster, then the exact-duplicate pass here."""
    candidates: list[int] = []
    first = make_judge(
        lambda i, meta, payload: candidates.append(i) or False, lambda *a: None, lambda m: None
    )
    parts: list[_Part] = []
    pending: deque = deque()
    in_flight = IN_FLIGHT_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))

    def judge_next() -> None:
        for meta in _result(pending.popleft().metas):
            first.add(meta)
            advance(getattr(meta, "nbytes", 0))

    offset = 0
    for items in chunks(stream, PART_FILES, PART_BYTES):
        [data] = client.scatter([items])  # straight to a worker, not through the scheduler
        results = client.submit(process_part, token, wcfg_f, data, pure=False)
        part = _Part(offset, len(items), results, client.submit(metas_of, results, pure=False))
        parts.append(part)
        pending.append(part)
        offset += len(items)
        del data  # the partition's raw bytes are freed once processed
        if len(pending) >= in_flight:  # backpressure: the reader waits for the cluster
            judge_next()
    while pending:
        judge_next()
    return parts, candidates


def _positions(parts: list[_Part], index: np.ndarray) -> Iterator[tuple[_Part, np.ndarray]]:
    """For each partition holding some of the sorted `index`: it, and their positions in it."""
    for part in parts:
        lo, hi = np.searchsorted(index, [part.offset, part.offset + part.size])
        if hi > lo:
            yield part, index[lo:hi] - part.offset


def _near_duplicates(client, parts: list[_Part], candidates: list[int], dedup, clock: _Clock) -> set[int]:
    """Stage 3: the candidates dropped as near duplicates, found band by band on the cluster."""
    bands = lsh_bands(dedup)
    index = np.asarray(candidates, np.int64)
    if len(index) == 0:
        return set()
    keys = [
        client.submit(part_band_keys, p.results, pos, p.offset, bands, pure=False)
        for p, pos in _positions(parts, index)
    ]
    buckets = [client.submit(lsh.band_buckets, b, *keys, pure=False) for b in range(len(bands))]
    members = _result(client.submit(lsh.band_members, *buckets, pure=False))
    clock("lsh_group")
    if len(members) == 0:
        return set()
    sigs = [
        client.submit(part_sigs, p.results, pos, p.offset, pure=False)
        for p, pos in _positions(parts, members)
    ]
    threshold = min_equal(dedup)
    edges = [
        client.submit(lsh.band_edges, buckets[b], bands[b], threshold, *sigs, pure=False)
        for b in range(len(bands))
    ]
    found = [_result(e) for e in edges]
    dropped = lsh.resolve(np.concatenate(found))
    clock("lsh_verify")
    return dropped


def _judge(parts: list[_Part], dropped: set[int], make_judge: MakeJudge) -> tuple[Judge, list[list]]:
    """Stage 4's decisions: the Judge again, now with the near duplicates known, recording
    what each partition keeps as (position, split, kept pair positions)."""
    plans: list[list] = [[] for _ in parts]
    current: list[int] = [0]  # the partition being judged

    def record(index: int, meta, payload, split: str, kept_pairs: list[int]) -> None:
        plans[current[0]].append((index - parts[current[0]].offset, split, kept_pairs))

    judge = make_judge(lambda i, meta, payload: i in dropped, record)
    for n, part in enumerate(parts):
        current[0] = n
        for meta in _result(part.metas):
            judge.add(meta)
    return judge, plans


def _write(client, parts: list[_Part], plans: list[list], writer: DataWriter, documents: bool) -> None:
    """Stage 4's writing: a task per partition, then its files renamed into each split's shards."""
    staging = writer.folder / ".parts"
    futures = [
        (n, client.submit(write_part, part.results, plan, str(staging / f"{n:05d}"), documents, pure=False))
        for n, (part, plan) in enumerate(zip(parts, plans, strict=True))
        if plan
    ]
    written = [(n, *_result(f)) for n, f in futures]
    for part in parts:
        part.results = part.metas = None  # release the Results on the cluster
    for _, _, records in written:
        writer.add_records(records)
    for split in SPLITS:
        name = split_file(split)
        full = [(n, files[name]) for n, files, _ in written if files[name]["rows"]]
        if not full and written:  # no rows of this split anywhere: one empty shard says so
            full = [(written[0][0], written[0][1][name])]
        for i, (n, info) in enumerate(full):
            target = shard_file(split, i, len(full))
            os.replace(staging / f"{n:05d}" / name, writer.folder / target)
            writer.add_shard(target, info["rows"], info["sha256"])
    shutil.rmtree(staging, ignore_errors=True)
