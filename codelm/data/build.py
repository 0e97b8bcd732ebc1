"""`codelm data build`: sources -> filtered, deduplicated, split Parquet files in DATA/.

DATA/ holds `train.parquet`, `val.parquet`, `test.parquet` (one row per document:
text, path, source, kind, prompt, completion), `stats.json` and `manifest.json`.
Rows are written in batches as they stream in, and the directory is swapped in
atomically, so a failed build leaves no half-written DATA.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from codelm.data.filters import FilterConfig, check
from codelm.data.sources import iter_source
from codelm.data.split import SPLITS, split_of
from codelm.errors import CodelmError
from codelm.fsutil import atomic_directory, atomic_write_json

SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("path", pa.string()),
        ("source", pa.string()),
        ("kind", pa.string()),  # "file" or "pair"
        ("prompt", pa.string()),  # pairs only
        ("completion", pa.string()),  # pairs only
    ]
)
ROWS_PER_GROUP = 512  # Parquet row group size: bounds memory while streaming


@dataclass(frozen=True)
class DataConfig:
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test
    filters: FilterConfig = field(default_factory=FilterConfig)


class _SplitWriter:
    """Buffers rows per split and flushes them as Parquet row groups."""

    def __init__(self, out: Path):
        self.writers = {s: pq.ParquetWriter(out / f"{s}.parquet", SCHEMA) for s in SPLITS}
        self.buffers: dict[str, list[dict]] = {s: [] for s in SPLITS}

    def add(self, split: str, row: dict) -> None:
        self.buffers[split].append(row)
        if len(self.buffers[split]) >= ROWS_PER_GROUP:
            self._flush(split)

    def _flush(self, split: str) -> None:
        if self.buffers[split]:
            self.writers[split].write_table(pa.Table.from_pylist(self.buffers[split], SCHEMA))
            self.buffers[split] = []

    def close(self) -> None:
        for s in SPLITS:
            self._flush(s)
            self.writers[s].close()


def _normalized_hash(text: str) -> str:
    """Exact-duplicate key: content with all whitespace runs collapsed."""
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).hexdigest()


def build_dataset(sources: Iterable[str], out: str | Path, cfg: DataConfig = DataConfig()) -> dict:
    """Build DATA/ from `sources` and return the stats written to `stats.json`."""
    sources = list(sources)
    if not sources:
        raise CodelmError("no source given")
    iters = [iter_source(s) for s in sources]  # validates every spec before writing anything
    stats: Counter = Counter()
    seen: set[str] = set()
    content = hashlib.blake2b(digest_size=16)
    with atomic_directory(out) as tmp:
        writer = _SplitWriter(tmp)
        for files in iters:
            for raw in files:
                stats["files_seen"] += 1
                text, reason = check(raw.data, cfg.filters)
                if reason is not None:
                    stats[f"dropped_{reason}"] += 1
                    continue
                key = _normalized_hash(text)
                if key in seen:
                    stats["dropped_exact_duplicate"] += 1
                    continue
                seen.add(key)
                split = split_of(f"{raw.source}:{raw.path}", cfg.fractions)
                writer.add(
                    split,
                    {
                        "text": text,
                        "path": raw.path,
                        "source": raw.source,
                        "kind": "file",
                        "prompt": None,
                        "completion": None,
                    },
                )
                stats[f"{split}_documents"] += 1
                stats[f"{split}_bytes"] += len(raw.data)
                content.update(f"{split}\0{raw.source}\0{raw.path}\0{key}\n".encode())
        writer.close()
        kept = sum(stats[f"{s}_documents"] for s in SPLITS)
        if kept == 0:
            raise CodelmError(f"no usable code found in {', '.join(sources)}")
        stats = dict(sorted(stats.items()))
        atomic_write_json(tmp / "stats.json", stats)
        atomic_write_json(
            tmp / "manifest.json",
            {
                "inputs": sources,
                "options": json.loads(json.dumps(asdict(cfg))),
                "content_hash": content.hexdigest(),
            },
        )
    return stats
