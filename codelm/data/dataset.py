"""DATA: the directory `codelm data build` writes and the later stages read. Its one definition.

DATA/ holds each split (train, val, test) either as one Parquet file
(`train.parquet`: what `--engine local` writes) or as shards
(`train-00000-of-00003.parquet`, `train-00001-of-00003.parquet`, ...: what
`--engine dask` writes, one per cluster partition that kept rows of the split;
the split's rows are the shards' rows in index order). Rows have the columns of
SCHEMA (`kind` is "file", or "pair" for a mined instruction -> code pair, which
alone fills `prompt` and `completion`). Beside them lie `stats.json` (the
build's counts) and `manifest.json` (inputs, options, each file's rows and
sha256, and a content hash).

The content hash is blake2b-128 over one record per row in build order (splits
interleaved as the rows were decided): the row's own blake2b-128 digest of its
length-prefixed fields, then its split's name. Per-row digests make it
composable: shards written apart on a cluster give the same hash as one file
written here, so it identifies the rows, not how they were laid out in files.

This module writes it (`write_data`: row groups streamed to a temporary
directory that replaces DATA only once complete, so a reader never sees half
of one, and a failed write leaves the old DATA as it was), reads it back
(`split_files`, `iter_rows`, `iter_texts`: every shard, in order, never
concatenated), and says whether a folder is DATA (`is_data_dir`,
`require_data_dir`). It does not decide what goes in (build.py, judge.py) or
turn rows into tokens (train/batches.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codelm.errors import CodelmError, first_line
from codelm.fsutil import atomic_directory, atomic_write_json, file_sha256, make_dirs

SPLITS = ("train", "val", "test")
KINDS = ("file", "pair")
SCHEMA = pa.schema(
    [
        ("text", pa.string()),  # what is trained on: the file, or the pair laid out as one text
        ("path", pa.string()),  # in its source; a pair's is "FILE::FUNCTION"
        ("source", pa.string()),  # the source spec it came from
        ("kind", pa.string()),  # one of KINDS
        ("prompt", pa.string()),  # pairs only
        ("completion", pa.string()),  # pairs only
    ]
)
COLUMNS = tuple(SCHEMA.names)
STATS = "stats.json"
MANIFEST = "manifest.json"
ROWS_PER_GROUP = 512  # Parquet row group size: bounds memory while streaming
BYTES_PER_GROUP = 32_000_000  # ...and so does this, when documents are large
READ_BATCH = 256  # rows per Parquet read


def split_file(split: str) -> str:
    """The file name of a split: "train" -> "train.parquet"."""
    return f"{split}.parquet"


def split_path(data_dir: str | Path, split: str) -> Path:
    """Where a split's single file lies; a sharded split's files are `split_files`'."""
    return Path(data_dir) / split_file(split)


def shard_file(split: str, index: int, count: int) -> str:
    """The file name of one shard of a split: ("train", 0, 3) -> "train-00000-of-00003.parquet"."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


_SHARD = re.compile(r"(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet")


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The Parquet files of `split`, in row order: its single file, or all its shards by index.
    [] when it has neither; a CodelmError when shards are missing or both forms are there."""
    folder = Path(data_dir)
    single = split_path(folder, split)
    shards: dict[int, set[int]] = {}
    with contextlib.suppress(OSError):  # no folder: no files
        for entry in folder.iterdir():
            m = _SHARD.fullmatch(entry.name)
            if m and m["split"] == split:
                shards.setdefault(int(m["index"]), set()).add(int(m["count"]))
    if not shards:
        return [single] if single.is_file() else []
    if single.is_file():
        raise CodelmError(f"{folder} holds both {single.name} and shards of {split}: keep one")
    counts = set().union(*shards.values())
    count = counts.pop()
    if counts or sorted(shards) != list(range(count)):
        raise CodelmError(f"{folder}: the shards of {split} are incomplete (expected {count} of them)")
    return [folder / shard_file(split, i, count) for i in range(count)]


def make_row(
    text: str,
    path: str,
    source: str,
    kind: str = "file",
    prompt: str | None = None,
    completion: str | None = None,
) -> dict:
    """One document as a row of SCHEMA; `prompt` and `completion` belong to pairs only."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {
        "text": text,
        "path": path,
        "source": source,
        "kind": kind,
        "prompt": prompt,
        "completion": completion,
    }


# ---------------------------------------------------------------- is this folder DATA?


def is_data_dir(path: str | Path) -> bool:
    """True for a folder in DATA's format: one `codelm data build` wrote (it has manifest.json)
    or one made by hand (a split's Parquet file is enough). Whether it has the splits a reader
    needs is `require_data_dir`'s question."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in (MANIFEST, *map(split_file, SPLITS))):
        return True
    return any(_SHARD.fullmatch(entry.name) for entry in path.iterdir())


def require_data_dir(path: str | Path, splits: Sequence[str] = ("train",)) -> Path:
    """`path` as a Path when it is a folder holding the Parquet file (or shards) of each of
    `splits`; otherwise a one-line CodelmError that names what is missing."""
    path = Path(path)
    if not path.exists():
        raise CodelmError(f"DATA directory not found: {path}")
    if not path.is_dir():
        raise CodelmError(f"not a DATA directory (a file, not a folder): {path}")
    missing = [split_file(s) for s in splits if not split_files(path, s)]
    if missing:
        hint = "" if is_data_dir(path) else "; build one with `codelm data build`"
        raise CodelmError(f"not a DATA directory (no {', '.join(missing)}): {path}{hint}")
    return path


def check_replaceable(out: str | Path) -> None:
    """Refuse to write DATA over a file, or over a non-empty folder that `codelm data build`
    did not write (no manifest.json): replacing it would delete someone's files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CodelmError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise CodelmError(f"refusing to replace {out}: it is not empty and holds no DATA {MANIFEST}")
    make_dirs(out.parent)


# ---------------------------------------------------------------- writing


def row_record(row: dict, split: str) -> bytes:
    """What a row adds to the content hash: the digest of its fields, then its split's name."""
    h = hashlib.blake2b(digest_size=16)
    for name in COLUMNS:  # length-prefixed, so field boundaries cannot shift
        value = (row[name] or "").encode("utf-8", "surrogatepass")
        h.update(len(value).to_bytes(8, "little") + value)
    return h.digest() + split.encode()


class DataWriter:
    """Streams rows into each split's Parquet file in row groups and hashes their content.

    Made by `write_data`, which owns the temporary directory it writes in. A sharded
    DataWriter writes no rows itself: the dask engine's tasks write each partition with a
    DataWriter of their own (`keep_records`), and `add_shard` and `add_records` take
    their files and their share of the content hash, in order.
    """

    def __init__(self, folder: Path, *, sharded: bool = False, keep_records: bool = False):
        self.folder = folder
        self.writers = {} if sharded else {s: pq.ParquetWriter(split_path(folder, s), SCHEMA) for s in SPLITS}
        self.buffers: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.sizes = dict.fromkeys(SPLITS, 0)
        self.rows = dict.fromkeys(SPLITS, 0)
        self.content = hashlib.blake2b(digest_size=16)
        self.records = bytearray() if keep_records else None  # the rows' `row_record`s, in order
        self.shards: dict[str, dict] = {}  # sharded: file name -> rows and sha256
        self.closed = self.finished = False

    def add(self, split: str, row: dict) -> None:
        """Append one row (see `make_row`) to `split`."""
        record = row_record(row, split)
        self.content.update(record)
        if self.records is not None:
            self.records += record
        self.buffers[split].append(row)
        self.rows[split] += 1
        self.sizes[split] += len(row["text"])
        if len(self.buffers[split]) >= ROWS_PER_GROUP or self.sizes[split] >= BYTES_PER_GROUP:
            self._flush(split)

    def add_shard(self, name: str, rows: int, sha256: str) -> None:
        """Record a shard file that lies in the folder (sharded DATA), in its split's order."""
        self.shards[name] = {"rows": rows, "sha256": sha256}

    def add_records(self, records: bytes) -> None:
        """Hash rows written elsewhere, by their `row_record`s, in build order (sharded DATA)."""
        self.content.update(records)

    def _flush(self, split: str) -> None:
        if self.buffers[split]:
            self.writers[split].write_table(pa.Table.from_pylist(self.buffers[split], SCHEMA))
            self.buffers[split], self.sizes[split] = [], 0

    def close(self, flush: bool = True) -> None:
        """Write what is buffered (unless `flush` is false: the write failed and is being
        thrown away) and close the Parquet files; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        for s, writer in self.writers.items():
            if flush:
                self._flush(s)
            writer.close()

    def files(self) -> dict[str, dict]:
        """Each file written, by name: its rows and sha256 (after `close`)."""
        if not self.writers:
            return dict(self.shards)
        return {
            split_file(s): {"rows": self.rows[s], "sha256": file_sha256(split_path(self.folder, s))}
            for s in SPLITS
        }

    def finish(self, stats: dict, manifest: dict) -> dict:
        """Close the splits and write stats.json and manifest.json; return the manifest written.

        `manifest` holds what only the caller knows (inputs, options); the files' rows and
        sha256 and the content hash are added here.
        """
        self.close()
        manifest = {**manifest, "files": self.files(), "content_hash": self.content.hexdigest()}
        atomic_write_json(self.folder / STATS, stats)
        atomic_write_json(self.folder / MANIFEST, manifest)
        self.finished = True
        return manifest


@contextlib.contextmanager
def write_data(out: str | Path, sharded: bool = False) -> Iterator[DataWriter]:
    """A DataWriter into a temporary folder beside `out`, which replaces `out` when the block
    ends without an exception, after `finish`; on an exception the folder is removed."""
    with atomic_directory(out) as tmp:
        writer = DataWriter(tmp, sharded=sharded)
        try:
            yield writer
        except BaseException:
            # No flush: a row that failed to convert would fail again and hide the first error.
            writer.close(flush=False)
            raise
        if not writer.finished:  # DATA without its manifest would pass for a complete build
            writer.close(flush=False)
            raise RuntimeError("write_data: the block ended without DataWriter.finish()")


# ---------------------------------------------------------------- reading


def iter_rows(data_dir: str | Path, split: str, columns: Sequence[str] = COLUMNS) -> Iterator[dict]:
    """Rows of one split, streamed in batches from each of its files in order. A column a file
    lacks (a hand-made DATA may have only `text`) is left out of the rows rather than failing."""
    for path in split_files(require_data_dir(data_dir, (split,)), split):
        try:
            pf = pq.ParquetFile(path)
            names = set(pf.schema_arrow.names)
            for batch in pf.iter_batches(batch_size=READ_BATCH, columns=[c for c in columns if c in names]):
                yield from batch.to_pylist()
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise CodelmError(f"corrupt Parquet file {path}: {first_line(e)}") from None


def iter_texts(data_dir: str | Path, split: str) -> Iterator[str]:
    """The text of each file document of a split; pairs are left out, as they repeat its code."""
    for row in iter_rows(data_dir, split, ["text", "kind"]):
        if row["text"] and row.get("kind", "file") != "pair":
            yield row["text"]
