"""`codelm data build`: sources -> filtered, deduplicated, split Parquet files in DATA/.

DATA's format (split files, columns, stats.json and manifest.json) is defined,
written and read by dataset.py; this module decides what goes in. stats.json
counts files seen, dropped and skipped per reason, and kept per split; its pair
counts (`pairs_mined`, `{split}_pairs`) hold every pair, and `doctest_pairs_mined`
and `{split}_doctest_pairs` the docstring examples among them (doctests.py). The
build is one streaming pass: files are read lazily, worked
on in order by `num_proc` processes (process.py), and judged here against what
came before (exact and near duplicates: the first of a cluster is kept), then
written in row groups to the split of their group key. Memory holds a few
chunks of files, one MinHash signature and one hash per kept file, never the
corpus. The directory is swapped in atomically, so a failed build leaves no
half-written DATA, and the same inputs and options give byte-identical files.

This module does not tokenize or pack; that is train/batches.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from rich.table import Table

from codelm.data.dataset import SPLITS, DataWriter, check_replaceable, make_row, write_data
from codelm.data.decontaminate import DecontamConfig
from codelm.data.dedup import DedupConfig, NearDupIndex, exact_key
from codelm.data.filters import REASONS, FilterConfig
from codelm.data.pairs import PairConfig, pair_text
from codelm.data.problems import load_problems
from codelm.data.process import Result, WorkerConfig, process_stream
from codelm.data.records import Skip
from codelm.data.sources import Source, open_source
from codelm.data.split import check_fractions, group_key, split_of
from codelm.errors import CodelmError

MAX_WARNINGS = 10  # skip messages printed; the rest are only counted
SKIP_REASONS = (
    "unreadable",
    "missing",
    "symlink_loop",
    "corrupt_jsonl",
    "corrupt_parquet",
    "missing_text_field",
    "bad_record",
    "other_language",
    "excluded",
)
COUNTERS = (
    "files_seen",
    "bytes_seen",
    *(f"dropped_{r}" for r in REASONS),
    "kept_syntax_error",
    "dropped_contaminated",
    "dropped_exact_duplicate",
    "dropped_near_duplicate",
    *(f"skipped_{r}" for r in SKIP_REASONS),
    "pairs_mined",  # all pairs, doctest ones included
    "doctest_pairs_mined",
    "dropped_duplicate_pair",
    *(f"{s}_{what}" for s in SPLITS for what in ("documents", "pairs", "doctest_pairs", "bytes")),
)


@dataclass(frozen=True)
class DataConfig:
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    decontaminate: tuple[str, ...] = ()  # benchmark JSONL files; documents containing a problem go
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    text_field: str = "content"  # the column holding code in JSONL/Parquet sources
    near_dup: bool = True  # MinHash near-duplicate removal (exact duplicates always go)
    # Write each kept file as a document. False keeps only its pairs: a corpus to fine-tune on
    # instructions alone, e.g. docstring examples for the notebook (`--pairs-only --no-function-pairs`).
    documents: bool = True
    num_proc: int = 1  # worker processes; the output does not depend on it
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
        if self.num_proc < 1:
            raise CodelmError("--num-proc must be at least 1")


def _storable(path: str) -> str:
    """A path as valid UTF-8: a file name's undecodable bytes become U+FFFD (Parquet needs UTF-8)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _Judge:
    """Takes results in input order and decides: drop (and why), or keep in which split."""

    def __init__(self, cfg: DataConfig, writer: DataWriter, near: NearDupIndex | None, warn: Callable):
        self.cfg, self.writer, self.near, self.warn = cfg, writer, near, warn
        self.stats: Counter = Counter(dict.fromkeys(COUNTERS, 0))
        self.by_problem: Counter = Counter()
        self.seen: set[bytes] = set()
        self.seen_pairs: set[bytes] = set()
        self.first_skip = ""

    def add(self, item: Result | Skip) -> None:
        st = self.stats
        st["files_seen"] += 1
        if isinstance(item, Skip):
            st[item.reason] += 1
            if item.message:
                self.first_skip = self.first_skip or item.message
                self.warn(item.message)
            return
        st["bytes_seen"] += item.nbytes
        if item.reason is not None:
            st[f"dropped_{item.reason}"] += 1
        elif item.contaminated_by:
            st["dropped_contaminated"] += 1
            self.by_problem.update(item.contaminated_by)
        elif item.key in self.seen:
            st["dropped_exact_duplicate"] += 1
        else:
            self.seen.add(item.key)
            if self._near_duplicate(item):
                st["dropped_near_duplicate"] += 1
            else:
                self._keep(item)

    def _near_duplicate(self, item: Result) -> bool:
        """True when `item` joins an earlier kept file's cluster; else it starts its own."""
        if item.sig is None or self.near is None:
            return False
        return self.near.match_or_add(item.sig) is not None

    def _keep(self, item: Result) -> None:
        st = self.stats
        st["kept_syntax_error"] += item.syntax_error
        split = split_of(group_key(item.source, item.path), self.cfg.fractions)
        file_path = _storable(item.path)
        if self.cfg.documents:
            self.writer.add(split, make_row(item.text, file_path, item.source, "file"))
            st[f"{split}_documents"] += 1
            st[f"{split}_bytes"] += len(item.text.encode("utf-8", "surrogatepass"))
        for pair in item.pairs:  # a pair goes where its file went: no leak between splits
            doctest = pair.kind == "doctest"
            st["pairs_mined"] += 1
            st["doctest_pairs_mined"] += doctest
            key = exact_key(f"{pair.prompt}\0{pair.completion}")
            if key in self.seen_pairs:
                st["dropped_duplicate_pair"] += 1
                continue
            self.seen_pairs.add(key)
            text = pair_text(pair.prompt, pair.completion)
            path = f"{file_path}::{pair.name}"
            self.writer.add(split, make_row(text, path, item.source, "pair", pair.prompt, pair.completion))
            st[f"{split}_pairs"] += 1
            st[f"{split}_doctest_pairs"] += doctest

    def kept(self) -> int:
        return sum(self.stats[f"{s}_{what}"] for s in SPLITS for what in ("documents", "pairs"))

    def nothing_kept_message(self, specs: list[str]) -> str:
        if self.first_skip and self.stats["files_seen"] == 1:
            return self.first_skip  # the whole input was one bad file: say what is wrong with it
        drops = {k: v for k, v in self.stats.items() if v and k.startswith(("dropped_", "skipped_"))}
        why = ", ".join(f"{k}: {v}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1])[:4])
        seen = self.stats["files_seen"]
        what = "code" if self.cfg.documents else "pairs (--pairs-only keeps nothing else)"
        return f"no usable {what} found in {', '.join(specs)} ({seen} files seen{'; ' + why if why else ''})"


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
    options.pop("num_proc")  # does not change the output, so it does not belong to its identity
    benchmarks = [
        {"path": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in cfg.decontaminate
    ]
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
) -> dict:
    """Build DATA/ from `sources` and return the stats written to `stats.json`.

    `progress`: show a progress bar on stderr (default: when stderr is a terminal).
    `log`: receives one line per skipped input (default: printed to stderr).
    """
    specs = [sources] if isinstance(sources, str) else list(sources)
    if not specs:
        raise CodelmError("no source given")
    out = Path(out)
    check_replaceable(out)
    # Check every spec and benchmark file before writing anything. Only a benchmark's text
    # matters here, so its files are read leniently (problems.py).
    opened = [open_source(s, cfg.text_field, cfg.filters.max_bytes) for s in specs]
    problems = tuple(
        p for path in cfg.decontaminate for p in load_problems(path, runnable=False, what="benchmark")
    )
    wcfg = WorkerConfig(cfg.filters, cfg.dedup, cfg.pairs, cfg.decontam, problems)
    try:
        near = NearDupIndex(cfg.dedup) if cfg.near_dup else None
    except ValueError as e:  # datasketch cannot band this few permutations at this threshold
        raise CodelmError(f"near-duplicate settings: {e}") from None
    show = sys.stderr.isatty() if progress is None else progress
    with write_data(out) as writer:  # swapped in whole at the end; an error leaves the old DATA
        warnings = _Warnings(log)
        judge = _Judge(cfg, writer, near, warnings)
        bar = _Progress(show)
        try:
            stream = (_unless_excluded(item, cfg.exclude) for src in opened for item in src)
            for item in process_stream(stream, wcfg, cfg.num_proc):
                judge.add(item)
                bar.advance(getattr(item, "nbytes", 0))
        finally:
            bar.close()
        if judge.kept() == 0:
            raise CodelmError(judge.nothing_kept_message(specs))
        warnings.finish()
        stats = dict(judge.stats)
        if cfg.decontaminate:
            stats["contaminated_by_problem"] = dict(sorted(judge.by_problem.items()))
        writer.finish(stats, _manifest(opened, cfg))
    return stats


def stats_table(stats: dict, out: str | Path) -> Table:
    """The stats as a rich Table, in pipeline order; zero counts of rare skips are left out."""
    table = Table(title=f"corpus -> {out}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for k, v in stats.items():
        if isinstance(v, dict):  # contaminated_by_problem
            for problem, n in v.items():
                table.add_row(f"contaminated by {problem}", f"{n:,}")
        elif v or not k.startswith(("skipped_", "kept_syntax")):
            table.add_row(k, f"{v:,}")
    return table
