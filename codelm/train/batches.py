"""Token files and packed batches.

Each split's documents are tokenized once into a flat token file (uint16 when
the vocabulary fits, else uint32), each document followed by end-of-text, so
sequences are packed with no padding. Training reads fixed windows of
`seq_len + 1` tokens from a memory map, in an order fixed by (seed, epoch), so
the data position is just (epoch, step) and a run can resume exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from codelm.errors import CodelmError
from codelm.fsutil import atomic_write_bytes
from codelm.tokenizer import CodeTokenizer

READ_BATCH = 256  # documents per Parquet read and per encode_batch call


def iter_texts(data_dir: str | Path, split: str) -> Iterator[str]:
    """The `text` column of DATA/<split>.parquet, streamed in batches."""
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise CodelmError(f"not a DATA directory (no {path.name}): {data_dir}")
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=READ_BATCH, columns=["text"]):
            yield from (t for t in batch.column(0).to_pylist() if t)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise CodelmError(f"corrupt Parquet file {path}: {e}") from None


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def tokenize_split(data_dir: str | Path, split: str, tok: CodeTokenizer, out: str | Path) -> np.ndarray:
    """Tokenize a split into `out` (written atomically) and return it memory-mapped."""
    out = Path(out)
    dtype = token_dtype(tok.vocab_size)
    chunks: list[np.ndarray] = []
    batch: list[str] = []

    def flush() -> None:
        for ids in tok.encode_batch(batch):
            chunks.append(np.asarray(ids + [tok.eot_id], dtype=dtype))
        batch.clear()

    for text in iter_texts(data_dir, split):
        batch.append(text)
        if len(batch) >= READ_BATCH:
            flush()
    flush()
    arr = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    atomic_write_bytes(out, arr.tobytes())
    return np.memmap(out, dtype=dtype, mode="r")


class PackedWindows:
    """Non-overlapping windows of `seq_len` inputs (+1 target) over a token stream."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n = max(0, (len(tokens) - 1) // seq_len)

    def __len__(self) -> int:
        return self.n

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, seq_len) for the given window indices."""
        rows = [self.tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in indices]
        xy = torch.from_numpy(np.stack(rows).astype(np.int64))
        return xy[:, :-1], xy[:, 1:]

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """A permutation of the windows that depends only on (seed, epoch)."""
        return np.random.default_rng([seed, epoch]).permutation(self.n)

    def spread(self, count: int) -> np.ndarray:
        """`count` window indices spread evenly over the stream (a fixed eval set)."""
        count = min(count, self.n)
        return np.linspace(0, self.n - 1, count).round().astype(np.int64) if count else np.zeros(0, np.int64)
