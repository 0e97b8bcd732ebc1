"""Repository documents: a stretch of a file after snippets of its repository, laid out as
the editor's prompt lays out repository context.

`codelm lsp` puts BM25-retrieved snippets of the workspace before the code at the
cursor, each under a comment naming its path (`data/chunks.layout`). A model trained
on files alone never saw that layout, and bench/lsp.py measured no gain from it. With
`TrainConfig.repo_rate` (documents per file that has neighbours: 0.5 is every other
file, 3 is three per file), training adds documents of its own: a random stretch of a
file (at most half a training window), preceded by the best snippets of its
repository for that stretch (at most a quarter of a window, the editor's
`context_share`), with no loss on the snippets. The documents come from the training
split itself: nothing else is read.

A file's repository is its source and top-level folder in DATA (`rich/...`, the
standard library's root modules); the stretch's own lines are left out of the search,
as the editor leaves out the lines around the cursor.
"""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from codelm.data.chunks import Bm25, Hit, Snippet, chunk_file, layout, terms

SNIPPETS = 5  # retrieved per document, as the editor's default `context_snippets`


@dataclass(frozen=True)
class RepoDoc:
    context: str  # rendered snippets of other code of the repository
    text: str  # the stretch of the file that follows them


def _repo_of(row: dict) -> tuple[str, str]:
    parts = str(row["path"]).split("/")
    return str(row.get("source", "")), parts[0] if len(parts) > 1 else ""


def _stretch(
    text: str, rng: np.random.Generator, budget: int, count: Callable[[str], int]
) -> tuple[int, int]:
    """Lines [start, end) of `text` from a random start, as many as fit in `budget` tokens."""
    lines = text.split("\n")
    start = int(rng.integers(0, max(1, len(lines) - 8)))
    end, used = start, 0
    while end < len(lines) and used + (n := count(lines[end] + "\n")) <= budget:
        used += n
        end += 1
    return start, max(end, start + 1)


def _search(bm25: Bm25, chunks: list[Snippet], query: str, path: str, span: tuple[int, int]) -> list[Hit]:
    hits = [
        Hit(chunks[cid], score)
        for cid, score in bm25.scores(set(terms(query))).items()
        if score > 0 and not (chunks[cid].path == path and chunks[cid].overlaps(*span))
    ]
    hits.sort(key=lambda h: (-h.score, h.snippet.path, h.snippet.start))
    return hits[:SNIPPETS]


def repo_documents(
    rows: Iterable[dict], rate: float, window: int, count: Callable[[str], int], seed: int
) -> list[RepoDoc]:
    """About `rate` repository documents per file (rows with a path and text) that shares a
    repository with another file; `window`: the training window in tokens."""
    repos: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        if row.get("kind", "file") == "file" and row.get("text") and row.get("path"):
            repos[_repo_of(row)].append((str(row["path"]), row["text"]))
    docs = []
    for files in repos.values():
        if len(files) < 2:
            continue
        chunks = [s for path, text in files for s in chunk_file(path, text)]
        bm25 = Bm25()
        for cid, s in enumerate(chunks):
            bm25.add(cid, Counter(terms(s.text)))
        for path, text in files:
            rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
            for _ in range(int(rate) + (rng.random() < rate % 1)):
                start, end = _stretch(text, rng, window // 2, count)
                stretch = "\n".join(text.split("\n")[start:end])
                context = layout(_search(bm25, chunks, stretch, path, (start, end)), window // 4, count)
                if context and stretch.strip():
                    docs.append(RepoDoc(context, stretch))
    return docs
