"""Repository context for a completion prompt: workspace snippets most like the code at the cursor.

- Retrieval: BM25 (codelm/data/chunks.py) over identifiers, the query being the prefix's last lines;
  same-file snippets overlapping the cursor's region are left out, as the prompt holds
  that code already.
- `RepoIndex`: built from a folder (in a git work tree the files `git ls-files` lists, so
  .gitignore is honoured, as the corpus stage does; dot-files and folders, virtualenvs and
  codelm.data.sources' SKIP_DIRS skipped, as are binaries, minified text and files over
  1 MB; total bytes and chunks bounded); a file updated on save (unless ignored) or
  removed; a lock lets a background thread build it while queries run.
- `RecentFiles`: an LRU of the open documents' (uri, text) the server feeds; their
  snippets are searched from that fresher text instead of the saved copy, boosted.
- Declarations (`RepoIndex.declarations`; the editor's `context_declarations`, off by
  default): the stubs (data/chunks.py's `declarations`) of the workspace's top-level
  functions and classes that the prefix's last lines name, nearest the cursor first, as
  Tabby's agent adds declarations to its prompts; they go before the snippets.
- The layout (`layout` in data/chunks.py): snippets most relevant first under a comment
  header naming the path (`#`, `//` or `--` by extension), within a token budget the
  caller counts; training's repository documents (train/repo.py) use the same.
This is the repository context of Continue's and Tabby's completion prompts; the code
is our own. Not done: embeddings.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from codelm.data import gitsource
from codelm.data.chunks import (
    IDENT,
    MAX_CHUNK_LINES,
    WINDOW,
    Bm25,
    Hit,
    Snippet,
    chunk_file,
    declarations,
    terms,
)
from codelm.data.sources import SKIP_DIRS, VENV_MARKERS
from codelm.errors import CodelmError

QUERY_LINES = 20  # lines of the prefix a query is made of
MAX_FILE_BYTES = 1_000_000
MAX_TOTAL_BYTES = 50_000_000
MAX_CHUNKS = 200_000
MAX_LINE_AVERAGE = 200  # characters per line above which a file is minified or data, not code


class RecentFiles:
    """The last `capacity` documents the editor opened or changed, as (uri, text), newest last."""

    def __init__(self, capacity: int = 10):
        self.capacity = capacity
        self._docs: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def touch(self, uri: str, text: str) -> None:
        with self._lock:
            self._docs.pop(uri, None)
            self._docs[uri] = text
            while len(self._docs) > self.capacity:
                self._docs.popitem(last=False)

    def forget(self, uri: str) -> None:
        with self._lock:
            self._docs.pop(uri, None)

    def items(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._docs.items())


class RepoIndex:
    """Snippets of a workspace under BM25. Every method may be called from any thread."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_total_bytes: int = MAX_TOTAL_BYTES,
        max_chunks: int = MAX_CHUNKS,
        window: int = WINDOW,
        max_chunk_lines: int = MAX_CHUNK_LINES,
    ):
        self.root = Path(os.path.abspath(root))
        self._real_root = self.root.resolve()
        self.max_file_bytes, self.max_total_bytes = max_file_bytes, max_total_bytes
        self.max_chunks = max_chunks
        self.window, self.max_chunk_lines = window, max_chunk_lines
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._building = threading.Lock()  # one build at a time; a second waits, then starts afresh
        self._recent_cache: dict[tuple[str, str], list[tuple[Snippet, Counter[str]]]] = {}
        self._git = False  # whether the root is in a git work tree; `build` finds out
        self._clear()

    def _clear(self) -> None:
        with self._lock:
            self._bm25 = Bm25()
            self._chunks: dict[int, tuple[Snippet, Counter[str]]] = {}
            self._files: dict[str, tuple[list[int], int]] = {}  # path -> (chunk ids, bytes)
            self._decls: dict[str, dict[str, str]] = {}  # name -> {path: its stub}
            self._names: dict[str, list[str]] = {}  # path -> the names it declares
            self._bytes = self._next = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"files": len(self._files), "chunks": len(self._chunks), "bytes": self._bytes}

    def files(self) -> list[str]:
        with self._lock:
            return sorted(self._files)

    def build(self) -> int:
        """Index the workspace afresh; returns how many files it holds. Queries may run meanwhile
        and see the files indexed so far. Stops early at the byte bound or on `stop()`."""
        with self._building:
            self._stop.clear()
            self._clear()
            for key in self._workspace_files():
                if self._stop.is_set() or self._bytes >= self.max_total_bytes:
                    break
                self._index(key, None)
            return len(self._files)

    def _workspace_files(self) -> Iterator[str]:
        """The keys of the files to index: in a git work tree those `git ls-files` lists
        (tracked, and untracked but not ignored), else every file; junk left out either way."""
        self._git = gitsource.in_worktree(self.root)
        if self._git:
            try:
                listed = gitsource.worktree_files(self.root)
            except CodelmError:  # a broken repository: read the folder as it is
                self._git = False
            else:
                junk: dict[PurePosixPath, bool] = {}  # per folder, so each is looked at once
                for key in listed:
                    path = PurePosixPath(key)
                    if path.parent not in junk:
                        junk[path.parent] = _junk_folder(self.root, path.parent)
                    if not junk[path.parent] and not path.name.startswith("."):
                        yield key
                return
        for dirpath, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not _junk_dir(Path(dirpath) / d))
            for name in sorted(n for n in names if not n.startswith(".")):
                yield self.relpath(Path(dirpath) / name)

    def start(self) -> threading.Thread:
        """Build in a daemon thread, so the server answers while the workspace is read."""
        thread = threading.Thread(target=self.build, name="codelm-lsp-index", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def relpath(self, path_or_uri: str | os.PathLike) -> str:
        """A file's key: its path relative to the root, '/'-separated (absolute outside the
        workspace); a file:// URI is accepted."""
        text = os.fspath(path_or_uri)
        path = Path(os.path.normpath(unquote(urlparse(text).path) if text.startswith("file:") else text))
        if not path.is_absolute():
            return path.as_posix()
        # The editor may name the workspace through a symlink; a file that is itself a link
        # to outside stays outside, and _read never follows it.
        for root, p in ((self.root, path), (self._real_root, path.parent.resolve() / path.name)):
            if p.is_relative_to(root):
                return p.relative_to(root).as_posix()
        return path.as_posix()

    def update_file(self, path: str | os.PathLike, text: str | None = None) -> bool:
        """(Re)index one file, from `text` or else from disk (on save). False when the file is
        left out: junk folder, ignored by git, binary, too large, or past the workspace's bounds."""
        key = self.relpath(path)
        outside = PurePosixPath(key).is_absolute() or _junk_path(self.root, key)
        if outside or (self._git and gitsource.ignored(self.root, key)):
            self.remove_file(key)
            return False  # the index holds the workspace; RecentFiles covers other open files
        return self._index(key, text)

    def _index(self, key: str, text: str | None) -> bool:
        if text is None:
            text = self._read(self.root / key)
        size = len(text.encode("utf-8", "surrogatepass")) if text is not None else 0
        if text is None or size > self.max_file_bytes or _minified(text):
            self.remove_file(key)
            return False
        snippets = chunk_file(key, text, self.window, self.max_chunk_lines)
        chunks = [(s, Counter(terms(s.text))) for s in snippets]
        stubs = declarations(key, text)
        with self._lock:
            self.remove_file(key)
            if self._bytes + size > self.max_total_bytes or len(self._chunks) + len(chunks) > self.max_chunks:
                return False
            ids = list(range(self._next, self._next + len(chunks)))
            self._next += len(chunks)
            for cid, (snippet, tf) in zip(ids, chunks, strict=True):
                self._chunks[cid] = (snippet, tf)
                self._bm25.add(cid, tf)
            self._files[key] = (ids, size)
            self._bytes += size
            for name, stub in stubs.items():
                self._decls.setdefault(name, {})[key] = stub
            self._names[key] = list(stubs)
        return True

    def remove_file(self, path: str | os.PathLike) -> bool:
        key = self.relpath(path)
        with self._lock:
            if key not in self._files:
                return False
            ids, size = self._files.pop(key)
            for cid in ids:
                self._bm25.remove(cid, self._chunks.pop(cid)[1])
            self._bytes -= size
            for name in self._names.pop(key, []):
                del self._decls[name][key]
                if not self._decls[name]:
                    del self._decls[name]
        return True

    def _read(self, path: Path) -> str | None:
        """A file's text; None for a link, a binary (a NUL byte, or not UTF-8), too large a file."""
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > self.max_file_bytes:
                return None
            data = path.read_bytes()
            return None if b"\0" in data[:8192] else data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        exclude: tuple[str, int, int] | None = None,
        recent: RecentFiles | None = None,
        recent_boost: float = 1.5,
    ) -> list[Hit]:
        """The `k` best snippets for `query`, best first. `exclude` = (path or uri, start, end):
        that file's snippets overlapping lines [start, end) are left out. Open documents in
        `recent` are searched from their text, boosted, instead of their indexed copy."""
        q = set(terms(query))
        if not q or k <= 0:
            return []
        fresh = {self.relpath(uri): text for uri, text in (recent.items() if recent else [])}
        fresh = {key: text for key, text in fresh.items() if not _junk_path(self.root, key)}
        with self._lock:
            hits = [
                Hit(self._chunks[cid][0], s)
                for cid, s in self._bm25.scores(q).items()
                if self._chunks[cid][0].path not in fresh
            ]
            for path, text in fresh.items():
                for snippet, tf in self._recent_chunks(path, text):
                    hits.append(Hit(snippet, self._bm25.score(q, tf) * recent_boost))
        if exclude is not None:
            path, start, end = self.relpath(exclude[0]), exclude[1], exclude[2]
            hits = [h for h in hits if not (h.snippet.path == path and h.snippet.overlaps(start, end))]
        hits = [h for h in hits if h.score > 0]
        hits.sort(key=lambda h: (-h.score, h.snippet.path, h.snippet.start))
        return hits[:k]

    def declarations(self, query: str, k: int, *, exclude: str | None = None) -> list[Snippet]:
        """Stubs of the workspace's top-level functions and classes that `query` names, the
        name nearest its end first, at most `k`. A name that `exclude` (the document: a path
        or URI) defines is its own and left out, as is one that several files define: its
        stub would be the wrong one as often as the right one."""
        own = self.relpath(exclude) if exclude is not None else None
        out: list[Snippet] = []
        seen: set[str] = set()
        with self._lock:
            for name in reversed(IDENT.findall(query)):
                if len(out) >= k:
                    break
                if name in seen:
                    continue
                seen.add(name)
                where = self._decls.get(name, {})
                if len(where) != 1 or own in where:
                    continue
                ((path, stub),) = where.items()
                out.append(Snippet(path, 0, 0, stub, "declaration"))
        return out

    def _recent_chunks(self, path: str, text: str) -> list[tuple[Snippet, Counter[str]]]:
        """Chunks of an open document's text, cached while the text stays the same."""
        key = (path, text)
        if key not in self._recent_cache:
            if len(self._recent_cache) > 64:
                self._recent_cache.clear()
            snippets = chunk_file(path, text, self.window, self.max_chunk_lines)
            self._recent_cache[key] = [(s, Counter(terms(s.text))) for s in snippets]
        return self._recent_cache[key]


def _junk_dir(path: Path) -> bool:
    """A folder never indexed: hidden, a build or cache folder, or a virtualenv of any name."""
    if path.name.startswith(".") or path.name in SKIP_DIRS or path.name.endswith(".egg-info"):
        return True
    return any((path / marker).exists() for marker in VENV_MARKERS)


def _junk_folder(root: Path, folder: PurePosixPath) -> bool:
    """Whether a folder (relative to `root`) is a junk folder or lies in one."""
    parts = folder.parts
    return any(_junk_dir(root.joinpath(*parts[: i + 1])) for i in range(len(parts)))


def _junk_path(root: Path, key: str) -> bool:
    """Whether a file (relative `key`) is hidden (.env may hold secrets) or lies under a junk
    folder: a save there is not indexed."""
    path = PurePosixPath(key)
    return path.name.startswith(".") or _junk_folder(root, path.parent)


def _minified(text: str) -> bool:
    return len(text) > 2000 and len(text) / (text.count("\n") + 1) > MAX_LINE_AVERAGE


def query_text(prefix: str, lines: int = QUERY_LINES) -> str:
    """The last `lines` lines of the prefix: what the code at the cursor is about."""
    return "\n".join(prefix.rsplit("\n", lines)[-lines:])
