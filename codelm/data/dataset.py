"""DATA: the directory `codelm data build` writes and the later stages read. Its one definition.

DATA/ holds one Parquet file per split (`train.parquet`, `val.parquet`,
`test.parquet`), one row per document with the columns of SCHEMA (`kind` is
"file", or "pair" for a mined instruction -> code pair, which alone fills
`prompt` and `completion`), plus `stats.json` (the build's counts) and
`manifest.json` (inputs, options, each file's rows and sha256, a content hash).

This module writes it (`write_data`: row groups streamed to a temporary
directory that replaces DATA only once complete, so a reader never sees half
of one, and a failed write leaves the old DATA as it was), reads it back
(`iter_rows`, `iter_texts`), and says whether a folder is DATA (`is_data_dir`,
`require_data_dir`). It does not decide what goes in (build.py) or turn rows
into tokens (train/batches.py).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codelm.errors import CodelmError, first_line
from codelm.fsutil import atomic_directory, atomic_write_json

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
    return Path(data_dir) / split_file(split)


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
    return path.is_dir() and any((path / name).is_file() for name in (MANIFEST, *map(split_file, SPLITS)))


def require_data_dir(path: str | Path, splits: Sequence[str] = ("train",)) -> Path:
    """`path` as a Path when it is a folder holding the Parquet file of each of `splits`;
    otherwise a one-line CodelmError that names what is missing."""
    path = Path(path)
    if not path.exists():
        raise CodelmError(f"DATA directory not found: {path}")
    if not path.is_dir():
        raise CodelmError(f"not a DATA directory (a file, not a folder): {path}")
    missing = [split_file(s) for s in splits if not split_path(path, s).is_file()]
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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CodelmError(f"cannot create {out.parent}: {e.strerror or e}") from None


# ---------------------------------------------------------------- writing


class DataWriter:
    """Streams rows into each split's Parquet file in row groups and hashes their content.

    Made by `write_data`, which owns the temporary directory it writes in.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.writers = {s: pq.ParquetWriter(split_path(folder, s), SCHEMA) for s in SPLITS}
        self.buffers: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.sizes = dict.fromkeys(SPLITS, 0)
        self.rows = dict.fromkeys(SPLITS, 0)
        self.content = hashlib.blake2b(digest_size=16)
        self.closed = self.finished = False

    def add(self, split: str, row: dict) -> None:
        """Append one row (see `make_row`) to `split`."""
        for name in COLUMNS:  # length-prefixed, so field boundaries cannot shift
            value = (row[name] or "").encode("utf-8", "surrogatepass")
            self.content.update(len(value).to_bytes(8, "little") + value)
        self.content.update(split.encode())
        self.buffers[split].append(row)
        self.rows[split] += 1
        self.sizes[split] += len(row["text"])
        if len(self.buffers[split]) >= ROWS_PER_GROUP or self.sizes[split] >= BYTES_PER_GROUP:
            self._flush(split)

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
        for s in SPLITS:
            if flush:
                self._flush(s)
            self.writers[s].close()

    def finish(self, stats: dict, manifest: dict) -> dict:
        """Close the splits and write stats.json and manifest.json; return the manifest written.

        `manifest` holds what only the caller knows (inputs, options); the files' rows and
        sha256 and the content hash are added here.
        """
        self.close()
        files = {}
        for s in SPLITS:
            with open(split_path(self.folder, s), "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            files[split_file(s)] = {"rows": self.rows[s], "sha256": digest}
        manifest = {**manifest, "files": files, "content_hash": self.content.hexdigest()}
        atomic_write_json(self.folder / STATS, stats)
        atomic_write_json(self.folder / MANIFEST, manifest)
        self.finished = True
        return manifest


@contextlib.contextmanager
def write_data(out: str | Path) -> Iterator[DataWriter]:
    """A DataWriter into a temporary folder beside `out`, which replaces `out` when the block
    ends without an exception, after `finish`; on an exception the folder is removed."""
    with atomic_directory(out) as tmp:
        writer = DataWriter(tmp)
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
    """Rows of one split, streamed in batches. A column the file lacks (a hand-made DATA may
    have only `text`) is left out of the rows rather than failing."""
    path = split_path(require_data_dir(data_dir, (split,)), split)
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
