"""The build's decisions, taken in input order: drop a file (and why) or keep it in which split.

`Judge` sees every file's `Meta` (process.py) in input order and counts it in
stats.json: skipped, dropped by a filter, contaminated, an exact duplicate (the
first file with a key is kept), a near duplicate (asked of a `near` callable,
so each engine answers it its own way), else kept in the split of its group
key, with its pairs less those already kept. What it keeps goes to a `sink`
callable: the local engine writes the rows at once (`kept_rows`), the dask
engine records the decision and writes on the cluster later. One Judge for both
engines is what makes their DATA the same.

It reads no files, computes no hashes or signatures (process.py) and writes
no Parquet (dataset.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from codelm.data.dataset import SPLITS, make_row
from codelm.data.filters import REASONS
from codelm.data.pairs import pair_text
from codelm.data.process import Meta, Result
from codelm.data.records import Skip
from codelm.data.split import group_key, split_of

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
    "pairs_mined",  # all pairs mined from files, doctest ones included
    "pairs_given",  # records of instruction datasets (instruct.py), each one pair
    "doctest_pairs_mined",
    "dropped_duplicate_pair",
    *(f"{s}_{what}" for s in SPLITS for what in ("documents", "pairs", "doctest_pairs", "bytes")),
)

# near(index, meta, payload) -> True when the file at `index` (its position in the input
# stream, skips included) is a near duplicate of an earlier kept one.
NearCheck = Callable[[int, Meta, object], bool]
# sink(index, meta, payload, split, kept_pairs): the file is kept in `split` with the pairs
# at positions `kept_pairs` of its Result.pairs.
Sink = Callable[[int, Meta, object, str, list[int]], None]


def storable(path: str) -> str:
    """A path as valid UTF-8: a file name's undecodable bytes become U+FFFD (Parquet needs UTF-8)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def kept_rows(result: Result, kept_pairs: list[int], documents: bool) -> Iterator[dict]:
    """The rows a kept file adds to its split, in order: the file (if `documents`), then its pairs."""
    file_path = storable(result.path)
    if documents and not result.given:
        yield make_row(result.text, file_path, result.source, "file")
    for i in kept_pairs:  # a pair goes where its file went: no leak between splits
        pair = result.pairs[i]
        text = pair_text(pair.prompt, pair.completion)
        path = f"{file_path}::{pair.name}" if pair.name else file_path
        yield make_row(text, path, result.source, "pair", pair.prompt, pair.completion)


class Judge:
    """Takes metas in input order and decides: drop (and why), or keep in which split."""

    def __init__(
        self,
        fractions: tuple[float, float, float],
        documents: bool,
        near: NearCheck | None,
        sink: Sink,
        warn: Callable[[str], None],
    ):
        self.fractions, self.documents, self.near, self.sink, self.warn = (
            fractions,
            documents,
            near,
            sink,
            warn,
        )
        self.stats: Counter = Counter(dict.fromkeys(COUNTERS, 0))
        self.by_problem: Counter = Counter()
        self.seen: set[bytes] = set()
        self.seen_pairs: set[bytes] = set()
        self.first_skip = ""

    def add(self, item: Meta | Skip, payload: object = None) -> None:
        """Judge the next file; `payload` (the full Result, or None) is passed on to near and sink."""
        st = self.stats
        index = st["files_seen"]
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
            # A near duplicate's key counts as seen too: an exact copy of it later is an exact
            # duplicate, whichever file of its cluster was kept.
            self.seen.add(item.key)
            if item.has_sig and self.near is not None and self.near(index, item, payload):
                st["dropped_near_duplicate"] += 1
            else:
                self._keep(index, item, payload)

    def _keep(self, index: int, item: Meta, payload: object) -> None:
        st = self.stats
        st["kept_syntax_error"] += item.syntax_error
        split = split_of(group_key(item.source, item.path), self.fractions)
        if self.documents and not item.given:
            st[f"{split}_documents"] += 1
            st[f"{split}_bytes"] += item.text_bytes
        kept_pairs = []
        for i, (key, doctest) in enumerate(zip(item.pair_keys, item.pair_doctest, strict=True)):
            st["pairs_given" if item.given else "pairs_mined"] += 1
            st["doctest_pairs_mined"] += doctest
            if key in self.seen_pairs:
                st["dropped_duplicate_pair"] += 1
                continue
            self.seen_pairs.add(key)
            kept_pairs.append(i)
            st[f"{split}_pairs"] += 1
            st[f"{split}_doctest_pairs"] += doctest
        self.sink(index, item, payload, split, kept_pairs)

    def kept(self) -> int:
        return sum(self.stats[f"{s}_{what}"] for s in SPLITS for what in ("documents", "pairs"))

    def nothing_kept_message(self, specs: list[str]) -> str:
        if self.first_skip and self.stats["files_seen"] == 1:
            return self.first_skip  # the whole input was one bad file: say what is wrong with it
        drops = {k: v for k, v in self.stats.items() if v and k.startswith(("dropped_", "skipped_"))}
        why = ", ".join(f"{k}: {v}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1])[:4])
        seen = self.stats["files_seen"]
        what = "code" if self.documents else "pairs (--pairs-only keeps nothing else)"
        return f"no usable {what} found in {', '.join(specs)} ({seen} files seen{'; ' + why if why else ''})"

    def final_stats(self, decontaminate: bool) -> dict:
        """The counts for stats.json, with per-problem counts when decontaminating."""
        stats = dict(self.stats)
        if decontaminate:
            stats["contaminated_by_problem"] = dict(sorted(self.by_problem.items()))
        return stats
