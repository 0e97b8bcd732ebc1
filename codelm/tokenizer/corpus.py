"""Training text for `codelm tokenizer train` when DATA is not a corpus directory: plain files.

A path is a single text file or a directory walked in sorted order (so the same
tree always gives the same tokenizer), skipping version-control, cache and
virtual-environment folders and hidden entries. A file is used when its bytes
decode as UTF-8 and hold no NUL byte; anything else (images, compiled files,
Latin-1 text) is counted as skipped rather than guessed at.

What it does not do: read DATA/train.parquet (that is `codelm.data.dataset.iter_texts`,
which the CLI picks for a DATA folder), filter or deduplicate: for that, build
a corpus with `codelm data build` first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from codelm.data.sources import SKIP_DIRS
from codelm.errors import CodelmError

MAX_FILE_BYTES = 32 << 20  # a text file bigger than this is most likely data, not code


class TextFiles:
    """Iterates the texts under a path; counts files used and skipped as it goes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CodelmError(f"corpus not found: {self.path}")
        self.used = 0
        self.skipped = 0

    def _files(self) -> Iterator[Path]:
        if self.path.is_file():
            yield self.path
            return
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith("."):
                    yield Path(dirpath) / name

    def __iter__(self) -> Iterator[str]:
        for file in self._files():
            text = read_text(file)
            if text is None:
                self.skipped += 1
                continue
            self.used += 1
            yield text
        if self.used == 0:
            what = "file" if self.path.is_file() else "directory"
            raise CodelmError(
                f"no UTF-8 text to train on in {what} {self.path} "
                f"({self.skipped} file(s) skipped as binary, not UTF-8, empty or too big)"
            )


def read_text(file: Path) -> str | None:
    """The file's text, or None when it is unreadable, empty, binary, not UTF-8 or too big."""
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            return None
        data = file.read_bytes()
    except OSError:
        return None
    if not data or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
