"""`codelm data build`: sources -> filtered, deduplicated, split Parquet files in DATA/.

DATA's format (split files, columns, stats.json and manifest.json) is defined,
written and read by dataset.py; this module says what goes in. stats.json
counts files seen, dropped and skipped per reason, and kept per split; its pair
counts: `pairs_mined` from files, `pairs_given` read from instruction datasets
(instruct.py), `{split}_pairs` every kept pair, and `doctest_pairs_mined` and
`{split}_doctest_pairs` the docstring examples among them (doctests.py). The
local engine (the default) is one streaming pass: files are read lazily,
worked on in order by `num_proc` processes (process.py), and judged (judge.py)
against what came before (exact and near duplicates: the first of a cluster is
kept), then written in row groups to the split of their group key. Memory holds
a few chunks of files, one MinHash signature and one hash per kept file, never
the corpus. The directory is swapped in atomically, so a failed build leaves no
half-written DATA, and the same inputs and options give byte-identical files.
`engine="dask"` hands the same work to a Dask cluster (dask_engine.py, imported
only then), which writes the same rows as sharded Parquet; the options that
choose how a build runs (RUN_ONLY) are left out of the manifest's identity.

This module does not tokenize or pack; that is train/batches.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from rich.table import Table

from codelm.data.dataset import check_replaceable, write_data
from codelm.data.decontaminate import DecontamConfig
from codelm.data.dedup import DedupConfig, NearDupIndex
from codelm.data.filters import FilterConfig
from codelm.data.instruct import parse_pair_fields
from codelm.data.judge import Judge, kept_rows
from codelm.data.pairs import PairConfig
from codelm.data.problems import load_problems
from codelm.data.process import Result, WorkerConfig, process_stream
from codelm.data.records import Skip
from codelm.data.sources import Source, open_source
from codelm.data.split import check_fractions
from codelm.errors import CodelmError
from codelm.fsutil import file_sha256

MAX_WARNINGS = 10  # skip messages printed; the rest are only counted
ENGINES = ("local", "dask")
# Options that change how a build runs, not what it writes: left out of the manifest's identity.
RUN_ONLY = ("num_proc", "engine", "scheduler", "workers")


@dataclass(frozen=True)
class DataConfig:
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    decontaminate: tuple[str, ...] = ()  # benchmark JSONL files; documents containing a problem go
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    text_field: str = "content"  # the column holding code in JSONL/Parquet sources
    # How JSONL/Parquet records of instruction datasets hold their pairs (instruct.py): "" finds
    # the layout in a file without `text_field`; "messages" or "INSTRUCTION,ANSWER" names it.
    pair_fields: str = ""
    near_dup: bool = True  # MinHash near-duplicate removal (exact duplicates always go)
    # Write each kept file as a document. False keeps only its pairs: a corpus to fine-tune on
    # instructions alone, e.g. docstring examples for the notebook (`--pairs-only --no-function-pairs`).
    documents: bool = True
    num_proc: int = 1  # worker processes; the output does not depend on it
    # Where the per-file work runs: "local" (num_proc processes on this machine) or "dask" (a
    # Dask distributed cluster: `pip install 'codelm[dask]'`). The rows written do not depend on
    # it; dask writes each split as shards (dataset.py).
    engine: str = "local"
    scheduler: str | None = None  # dask: a running scheduler's address (tcp://HOST:8786); None: a local one
    workers: int = 0  # dask: worker processes of the local cluster; 0: one per CPU core
    # Glob patterns (fnmatch, on the path inside its source) of files to leave out, e.g.
    # "test/*" or "*/tests/*": counted as skipped_excluded.
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "fractions", tuple(self.fractions))
        object.__setattr__(self, "decontaminate", tuple(self.decontaminate))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        try:
            check_fractions(self.fractions)
        except ValueError as e:
            raise CodelmError(str(e)) from None
        # The nested configs (filters, dedup, pairs, decontam) check themselves when built.
        parse_pair_fields(self.pair_fields)
        if self.num_proc < 1:
            raise CodelmError("--num-proc must be at least 1")
        if self.engine not in ENGINES:
            raise CodelmError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.workers < 0:
            raise CodelmError("--workers must be at least 0 (0: one per CPU core)")
        if self.engine != "dask" and (self.scheduler or self.workers):
            raise CodelmError("--scheduler and --workers are for --engine dask")
        if self.scheduler and self.workers:
            raise CodelmError("--workers starts a local cluster: give it or --scheduler, not both")


class _Progress:
    """A progress line on stderr (files, MB, files/s, MB/s), refreshed at most 10 times a second."""

    def __init__(self, enabled: bool):
        self.bar = None
        self.files = self.bytes = 0
        self.start = self.last = time.monotonic()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = ("{task.completed:,} files", "{task.fields[mb]:.1f} MB", "{task.fields[rate]}")
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("corpus"),
            *(TextColumn(c) for c in columns),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task("corpus", total=None, mb=0.0, rate="")
        self.bar.start()

    def advance(self, nbytes: int) -> None:
        self.files += 1
        self.bytes += nbytes
        if self.bar is not None and time.monotonic() - self.last >= 0.1:
            self._show()

    def _show(self) -> None:
        self.last = time.monotonic()
        dt = max(self.last - self.start, 1e-9)
        rate = f"{self.files / dt:,.0f} files/s  {self.bytes / dt / 1e6:.2f} MB/s"
        self.bar.update(self.task, completed=self.files, mb=self.bytes / 1e6, rate=rate)

    def close(self) -> None:
        if self.bar is not None:
            self._show()  # the final numbers, however recently the line was refreshed
            self.bar.stop()


class _Warnings:
    """Passes the first MAX_WARNINGS skip messages on at the end of a build that kept
    something; the rest are only counted. A build that kept nothing fails with one line,
    which names the skip when the input was one bad file, so it prints no warnings first."""

    def __init__(self, log: Callable[[str], None] | None):
        self.log = log or (lambda m: print(f"codelm: warning: skipped {m}", file=sys.stderr))
        self.count = 0
        self.held: list[str] = []

    def __call__(self, msg: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            self.held.append(msg)

    def finish(self) -> None:
        for msg in self.held:
            self.log(msg)
        if self.count > MAX_WARNINGS:
            self.log(f"... and {self.count - MAX_WARNINGS} more inputs (all counted in stats.json)")


def _unless_excluded(item, patterns: tuple[str, ...]):
    """A file whose path matches an --exclude pattern becomes a counted Skip, unread further."""
    if patterns and not isinstance(item, Skip) and any(fnmatch(item.path, p) for p in patterns):
        return Skip(item.path, item.source, "skipped_excluded")
    return item


def _manifest(opened: list[Source], cfg: DataConfig) -> dict:
    """What the build knows of its identity; dataset.py adds the files' rows and hashes."""
    options = asdict(cfg)
    for name in RUN_ONLY:  # they do not change the rows, so they do not belong to their identity
        options.pop(name)
    benchmarks = [{"path": p, "sha256": file_sha256(p)} for p in cfg.decontaminate]
    return {
        "inputs": [{"spec": s.spec, "kind": s.kind, **s.info} for s in opened],
        "benchmarks": benchmarks,
        "options": json.loads(json.dumps(options)),
    }


def build_dataset(
    sources: Iterable[str],
    out: str | Path,
    cfg: DataConfig = DataConfig(),
    *,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    profile: dict | None = None,
) -> dict:
    """Build DATA/ from `sources` and return the stats written to `stats.json`.

    `progress`: show a progress bar on stderr (default: when stderr is a terminal).
    `log`: receives one line per skipped input (default: printed to stderr).
    `profile`: with the dask engine, filled with its stages, their seconds and its workers' peak
    memory (dask_engine.build_on_dask); the local engine leaves it empty.
    """
    specs = [sources] if isinstance(sources, str) else list(sources)
    if not specs:
        raise CodelmError("no source given")
    out = Path(out)
    check_replaceable(out)
    # Check every spec and benchmark file before writing anything. Only a benchmark's text
    # matters here, so its files are read leniently (problems.py).
    opened = [open_source(s, cfg.text_field, cfg.filters.max_bytes, cfg.pair_fields) for s in specs]
    problems = tuple(
        p for path in cfg.decontaminate for p in load_problems(path, runnable=False, what="benchmark")
    )
    wcfg = WorkerConfig(cfg.filters, cfg.dedup, cfg.pairs, cfg.decontam, problems)
    try:
        near = NearDupIndex(cfg.dedup) if cfg.near_dup else None  # also checks the settings
    except ValueError as e:  # datasketch cannot band this few permutations at this threshold
        raise CodelmError(f"near-duplicate settings: {e}") from None
    show = sys.stderr.isatty() if progress is None else progress
    # Swapped in whole at the end; an error leaves the old DATA.
    with write_data(out, sharded=cfg.engine == "dask") as writer:
        warnings = _Warnings(log)
        make_judge = lambda near_check, sink, warn=warnings: Judge(
            cfg.fractions, cfg.documents, near_check, sink, warn
        )
        bar = _Progress(show)
        try:
            stream = (_unless_excluded(item, cfg.exclude) for src in opened for item in src)
            if cfg.engine == "dask":
                from codelm.data.dask_engine import build_on_dask  # imported only when asked for

                judge = build_on_dask(stream, wcfg, cfg, writer, make_judge, bar.advance, profile)
            else:
                judge = _build_locally(stream, wcfg, cfg, writer, make_judge, near, bar.advance)
        finally:
            bar.close()
        if judge.kept() == 0:
            raise CodelmError(judge.nothing_kept_message(specs))
        warnings.finish()
        stats = judge.final_stats(bool(cfg.decontaminate))
        writer.finish(stats, _manifest(opened, cfg))
    return stats


def _build_locally(
    stream: Iterable, wcfg: WorkerConfig, cfg: DataConfig, writer, make_judge, near, advance
) -> Judge:
    """`num_proc` processes here do the per-file work; the judge writes what it keeps at once."""

    def write(index: int, meta, result: Result, split: str, kept_pairs: list[int]) -> None:
        for row in kept_rows(result, kept_pairs, cfg.documents):
            writer.add(split, row)

    # The greedy index: a file is compared with the files kept before it, in input order.
    near_check = None if near is None else lambda i, meta, r: near.match_or_add(r.sig) is not None
    judge = make_judge(near_check, write)
    for item in process_stream(stream, wcfg, cfg.num_proc):
        if isinstance(item, Skip):
            judge.add(item)
        else:
            judge.add(item.meta(), item)
        advance(getattr(item, "nbytes", 0))
    return judge


def stats_table(stats: dict, out: str | Path) -> Table:
    """The stats as a rich Table, in pipeline order; zero counts of rare skips are left out."""
    table = Table(title=f"corpus -> {out}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for k, v in stats.items():
        if isinstance(v, dict):  # contaminated_by_problem
            for problem, n in v.items():
                table.add_row(f"contaminated by {problem}", f"{n:,}")
        elif v or not k.startswith(("skipped_", "kept_syntax", "pairs_given")):
            table.add_row(k, f"{v:,}")
    return table
