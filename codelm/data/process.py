"""The per-file work of a build, run in order over a stream, in this process or in a pool.

For each raw file `FileProcessor` filters and parses it, checks it against the
benchmark problems, computes its exact-duplicate key and MinHash signature, and
mines its pairs (functions: pairs.py, then docstring examples: doctests.py); a record
of an instruction dataset (instruct.py) is its one pair, judged as its text. None
of that depends on other files, so it runs in worker processes; the decisions
that do (duplicates, splits) stay in the main process.

`process_stream` hands out chunks of files and takes results back in input
order, with a bounded number of chunks in flight: memory holds a few chunks,
never the corpus, and the output is the same whatever `num_proc` is. The dask
engine (dask_engine.py) runs the same `FileProcessor` on a cluster, and sends
back only each Result's `Meta`.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from codelm.data.decontaminate import DecontamConfig, Decontaminator
from codelm.data.dedup import DedupConfig, exact_key, signature
from codelm.data.doctests import mine_doctests
from codelm.data.filters import FilterConfig, check
from codelm.data.pairs import Pair, PairConfig, mine_pairs, pair_text
from codelm.data.problems import Problem
from codelm.data.records import RawFile, Skip
from codelm.errors import CodelmError

CHUNK_FILES = 32  # files per task: amortises inter-process overhead
CHUNK_BYTES = 2_000_000  # ...but a chunk of large files is cut earlier, to bound memory
IN_FLIGHT_PER_PROC = 2  # chunks queued per worker: keeps workers busy, memory bounded


@dataclass
class Result:
    """What one file turned into. `reason` set: dropped by a filter; else `text` is set."""

    path: str
    source: str
    nbytes: int  # raw size as read
    reason: str | None = None  # a filters.REASONS entry
    text: str | None = None
    syntax_error: bool = False  # kept although it does not parse
    contaminated_by: tuple[str, ...] = ()  # benchmark problem ids found in the text
    key: bytes = b""  # exact-duplicate key
    sig: np.ndarray | None = None  # MinHash signature; None when the text has no tokens
    pairs: list[Pair] = field(default_factory=list)
    text_bytes: int = 0  # UTF-8 size of `text`, counted in stats.json
    pair_keys: list[bytes] = field(default_factory=list)  # exact keys of `pairs`, to drop repeats
    given: bool = False  # a record of an instruction dataset: one pair, written as no document

    def meta(self) -> Meta:
        """What the build's decisions need of this result, without its texts and signature."""
        return Meta(
            self.path,
            self.source,
            self.nbytes,
            self.reason,
            self.syntax_error,
            self.contaminated_by,
            self.key,
            self.sig is not None,
            self.text_bytes,
            tuple(self.pair_keys),
            tuple(p.kind == "doctest" for p in self.pairs),
            self.given,
        )


@dataclass(frozen=True)
class Meta:
    """A Result less its texts, pairs and signature: all that judge.py decides on. Small, so
    the dask engine ships these to the client while the texts stay on the cluster."""

    path: str
    source: str
    nbytes: int
    reason: str | None
    syntax_error: bool
    contaminated_by: tuple[str, ...]
    key: bytes
    has_sig: bool  # a MinHash signature exists: the file takes part in near-duplicate detection
    text_bytes: int
    pair_keys: tuple[bytes, ...]
    pair_doctest: tuple[bool, ...]  # per pair: a docstring example (doctests.py)
    given: bool = False  # a record of an instruction dataset (Result.given)


@dataclass(frozen=True)
class WorkerConfig:
    filters: FilterConfig
    dedup: DedupConfig
    pairs: PairConfig
    decontam: DecontamConfig
    problems: tuple[Problem, ...] = ()


class FileProcessor:
    """Turns RawFile into Result; a Skip passes through untouched."""

    def __init__(self, cfg: WorkerConfig):
        self.cfg = cfg
        self.decontaminator = Decontaminator(list(cfg.problems), cfg.decontam) if cfg.problems else None

    def __call__(self, raw: RawFile) -> Result:
        cfg = self.cfg
        r = Result(raw.path, raw.source, len(raw.data))
        if raw.instruction is not None and len(raw.instruction) > cfg.filters.max_bytes:
            r.reason = "too_large"  # a pair's instruction is bounded as its code is
            return r
        checked = check(raw.data, cfg.filters, raw.language)
        if checked.reason is not None:
            r.reason = checked.reason
            return r
        r.text, r.syntax_error = checked.text, checked.syntax_error
        if raw.instruction is not None:  # a given pair: judged as the text it is trained on
            r.given = True
            r.pairs = [Pair("", raw.instruction, r.text, "given")]
            text = pair_text(raw.instruction, r.text)
        else:
            text = r.text
        if self.decontaminator is not None:
            r.contaminated_by = self.decontaminator.matches(text)
            if r.contaminated_by:
                r.text, r.pairs = None, []  # dropped: no need to ship it back
                return r
        r.key = exact_key(text)
        r.text_bytes = len(r.text.encode("utf-8", "surrogatepass"))
        r.sig = signature(text, cfg.dedup)
        if r.given:
            r.pair_keys = [exact_key(f"{raw.instruction}\0{r.text}")]
        elif checked.tree is not None:
            r.pairs = mine_pairs(r.text, checked.tree, cfg.pairs)
            if cfg.pairs.doctests:
                r.pairs += mine_doctests(r.text, checked.tree, cfg.pairs)
            r.pair_keys = [exact_key(f"{p.prompt}\0{p.completion}") for p in r.pairs]
        return r

    def run_chunk(self, chunk: list[RawFile | Skip]) -> list[Result | Skip]:
        return [item if isinstance(item, Skip) else self(item) for item in chunk]


_worker: FileProcessor | None = None  # one per pool process, built by the initializer


def _init_worker(cfg: WorkerConfig) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _worker = FileProcessor(cfg)


def _run_chunk(chunk: list[RawFile | Skip]) -> list[Result | Skip]:
    return _worker.run_chunk(chunk)


def chunks(
    items: Iterable[RawFile | Skip], max_files: int = CHUNK_FILES, max_bytes: int = CHUNK_BYTES
) -> Iterator[list[RawFile | Skip]]:
    """Consecutive runs of `items`, cut at `max_files` items or once they hold `max_bytes`."""
    chunk: list[RawFile | Skip] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += len(item.data) if isinstance(item, RawFile) else 0
        if len(chunk) >= max_files or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def process_stream(items: Iterable[RawFile | Skip], cfg: WorkerConfig, num_proc: int = 1) -> Iterator:
    """Result | Skip for every item, in input order, computed by `num_proc` processes."""
    if num_proc <= 1:
        worker = FileProcessor(cfg)
        for chunk in chunks(items):
            yield from worker.run_chunk(chunk)
        return
    # spawn, not fork: the caller may run threads (a progress bar), and fork copies them badly
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker, initargs=(cfg,))
    try:
        pending: deque = deque()
        for chunk in chunks(items):
            pending.append(pool.submit(_run_chunk, chunk))
            if len(pending) >= IN_FLIGHT_PER_PROC * num_proc:
                yield from _result(pending.popleft())
        while pending:
            yield from _result(pending.popleft())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _result(future) -> list[Result | Skip]:
    try:
        return future.result()
    except BrokenProcessPool:  # a worker was killed, most likely by the out-of-memory killer
        raise CodelmError("a worker process died (out of memory?); try a smaller --num-proc") from None
