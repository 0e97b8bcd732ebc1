"""Where raw code comes from: directories, git repositories, JSONL/Parquet dumps, the stdlib.

`open_source(spec)` checks a source spec up front (a missing path or a symlink
loop fails here, before anything is written) and returns a `Source` that yields,
lazily and in a stable order, either a `RawFile` (bytes not decoded yet) or a
`Skip` (a file or record that could not be read, with its reason); both types
live in records.py. Nothing is held whole in memory: directories are walked,
git blobs are streamed through one `git cat-file --batch`, JSONL is read line
by line and Parquet in batches.

Spec forms: `stdlib`; `site-packages` (the installed third-party packages, each
capped, HELD_OUT_PACKAGES left out for evaluation); a directory (a git
repository's root is read from its HEAD, any other directory from disk,
honouring `.gitignore` inside a work tree); `git:PATH` and `dir:PATH` force
either reading; `*.jsonl[.gz]` (read by jsonl.py), `*.parquet`, whose records are
code, or instruction -> code pairs when they have no code column (instruct.py); a
single code file. Decoding and filtering live in `filters.py`.
"""

from __future__ import annotations

import errno
import os
import stat
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from codelm.data import gitsource
from codelm.data.instruct import PairFormat, answer_code, find_format, parse_pair_fields, record_pair
from codelm.data.jsonl import BadLine, scan_jsonl
from codelm.data.records import RawFile, Skip
from codelm.errors import CodelmError

# Language by file extension. Adding a language means adding an entry here.
LANGUAGES: dict[str, str] = {".py": "python"}

# Folders that never hold code worth learning from. A virtualenv or conda env of any
# name is recognised by its marker file (VENV_MARKERS) when walking a directory.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        "node_modules",
        ".venv",
        "venv",
        "build",
        "dist",
        ".tox",
        ".nox",
        ".eggs",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "site-packages",
    }
)
VENV_MARKERS = ("pyvenv.cfg", "conda-meta")
PATH_FIELDS = ("path", "max_stars_repo_path", "file_path", "filepath", "filename")  # JSONL/Parquet
REPO_FIELDS = ("repo_name", "max_stars_repo_name", "repo")  # prefixed to the path when present
PARQUET_BATCH = 256  # rows per Parquet read
# Third-party packages that no built-in source trains on: bench/quality.py measures every
# preset on them as code the model has never seen. All come with codelm's own dependencies.
HELD_OUT_PACKAGES = ("rich", "click", "jinja2", "anyio", "starlette", "h11")
# The `site-packages` source reads at most this many bytes of each top-level package, so
# breadth wins over bulk: transformers alone is 53 MB of mostly look-alike model files.
SITE_PACKAGE_CAP = 1_000_000


def language_of(path: str) -> str | None:
    """The language of a path by its extension, or None when it is not in LANGUAGES."""
    return LANGUAGES.get(PurePosixPath(path).suffix.lower())


@dataclass
class Source:
    """A checked source spec; iterating it yields RawFile | Skip in a stable order."""

    spec: str
    kind: str  # stdlib | site-packages | directory | worktree | git | jsonl | parquet | file
    info: dict = field(default_factory=dict)  # recorded in manifest.json (e.g. the git commit)
    _iter: Callable[[], Iterator[RawFile | Skip]] | None = None

    def __iter__(self) -> Iterator[RawFile | Skip]:
        return self._iter()


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def site_packages_root() -> Path:
    """The running interpreter's site-packages (its virtualenv's, when in one)."""
    return Path(sysconfig.get_paths()["purelib"])


def iter_site_packages(root: Path, source: str, max_bytes: int, cap: int = SITE_PACKAGE_CAP):
    """Code of every installed top-level package except HELD_OUT_PACKAGES, at most `cap` bytes
    each: files in a hashed (stable, spread out) order until the package's cap is reached."""
    for entry in sorted(root.iterdir()):
        name = entry.name
        if (
            not entry.is_dir()
            or name in HELD_OUT_PACKAGES
            or name in SKIP_DIRS
            or name.endswith((".dist-info", ".egg-info", ".libs"))
        ):
            continue
        st = entry.stat()
        files = [
            i for i in _walk(entry, name, frozenset({(st.st_dev, st.st_ino)})) if not isinstance(i, Skip)
        ]
        files.sort(key=lambda f: zlib.crc32(f[1].encode()))
        used = 0
        for path, rel in files:
            if used >= cap:
                break
            if any(part in HELD_OUT_PACKAGES for part in rel.split("/")[1:-1]):
                continue  # a vendored copy (pip vendors rich) would leak the held-out code
            item = _read(path, rel, source, max_bytes)
            used += len(item.data) if isinstance(item, RawFile) else 0
            yield item


def _read(path: Path, rel: str, source: str, max_bytes: int) -> RawFile | Skip:
    """Read one file, turning the ways a read fails into a counted Skip."""
    try:
        st = path.stat()
        if st.st_size > max_bytes:  # never read a huge file just to drop it
            return Skip(rel, source, "dropped_too_large")
        if not stat.S_ISREG(st.st_mode):
            return Skip(rel, source, "skipped_unreadable", f"{path}: not a regular file")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Skip(rel, source, "skipped_symlink_loop", f"{path}: symlink loop")
        if e.errno == errno.ENOENT:
            return Skip(rel, source, "skipped_missing", f"{path}: missing (dangling symlink or deleted)")
        return Skip(rel, source, "skipped_unreadable", f"{path}: {e.strerror or e}")
    return RawFile(rel, data, source, language_of(rel))


def _walk(root: Path, rel: str, ancestors: frozenset) -> Iterator[tuple[Path, str] | Skip]:
    """Code files under `root` in sorted order; follows symlinked folders but not into a loop."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield Skip(rel or ".", "", "skipped_unreadable", f"{root}: {e.strerror or e}")
        return
    for entry in entries:
        child = f"{rel}/{entry.name}" if rel else entry.name
        try:
            st = entry.stat()  # follows symlinks
        except OSError as e:
            if entry.is_symlink() and (e.errno == errno.ELOOP or language_of(entry.name)):
                yield Path(entry.path), child  # a loop or dangling link: _read says which
            continue
        if stat.S_ISDIR(st.st_mode):
            if entry.name in SKIP_DIRS or any(
                os.path.exists(os.path.join(entry.path, m)) for m in VENV_MARKERS
            ):
                continue
            key = (st.st_dev, st.st_ino)
            if key in ancestors:  # a symlink back up the tree: walking it would never end
                yield Skip(child, "", "skipped_symlink_loop", f"{entry.path}: symlink loop")
                continue
            yield from _walk(Path(entry.path), child, ancestors | {key})
        elif language_of(entry.name):
            yield Path(entry.path), child


def iter_directory(root: Path, source: str, max_bytes: int = 1_000_000) -> Iterator[RawFile | Skip]:
    """Files under `root` whose extension is in LANGUAGES, in sorted (stable) order."""
    st = root.stat()
    for item in _walk(root, "", frozenset({(st.st_dev, st.st_ino)})):
        if isinstance(item, Skip):
            yield Skip(item.path, source, item.reason, item.message)
            continue
        path, rel = item
        yield _read(path, rel, source, max_bytes)


def iter_worktree(root: Path, source: str, max_bytes: int = 1_000_000) -> Iterator[RawFile | Skip]:
    """Files of a git work tree from disk, as `git ls-files` lists them: .gitignore honoured."""
    for rel in gitsource.worktree_files(root):
        parts = rel.split("/")
        if language_of(rel) and not any(p in SKIP_DIRS for p in parts[:-1]):
            yield _read(root / rel, rel, source, max_bytes)


def _record_path(rec: dict, row: int, name: str) -> str:
    path = next((rec[f] for f in PATH_FIELDS if isinstance(rec.get(f), str) and rec[f]), None)
    if path is None:
        return f"{name}#{row}"
    repo = next((rec[f] for f in REPO_FIELDS if isinstance(rec.get(f), str) and rec[f]), None)
    return f"{repo}/{path}" if repo else path


def _record(rec: object, row: int, name: str, spec: str, text_field: str) -> RawFile | Skip:
    if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str | bytes):
        return Skip(f"{name}#{row}", spec, "skipped_bad_record")
    path = _record_path(rec, row, name)
    has_path = not path.startswith(f"{name}#")
    lang = language_of(path) if has_path else None
    if has_path and lang is None:
        return Skip(path, spec, "skipped_other_language")
    text = rec[text_field]
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return RawFile(path, data, spec, lang)


def _utf8(text: str) -> bool:
    """No lone surrogates (JSON can spell them): the text can be stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pair_record(rec: object, row: int, name: str, spec: str, fmt: PairFormat) -> RawFile | Skip:
    """A record of an instruction dataset as its code, carrying its instruction (instruct.py)."""
    pair = record_pair(rec, fmt)
    if pair is None or not _utf8(pair[0]):
        return Skip(f"{name}#{row}", spec, "skipped_bad_record")
    path = _record_path(rec, row, name)
    code = answer_code(pair[1])
    if code is None:
        return Skip(path, spec, "skipped_other_language")
    if not code:
        return Skip(path, spec, "skipped_bad_record")
    return RawFile(path, code.encode("utf-8", "surrogatepass"), spec, "python", instruction=pair[0])


@dataclass(frozen=True)
class _Reader:
    """How one JSONL or Parquet file's records are read: code from `text_field`, or pairs."""

    text_field: str
    pairs: PairFormat | None = None

    def columns(self) -> tuple[str, ...]:
        return self.pairs.columns() if self.pairs else (self.text_field,)

    def __call__(self, rec: object, row: int, name: str, spec: str) -> RawFile | Skip:
        if self.pairs is not None:
            return _pair_record(rec, row, name, spec, self.pairs)
        return _record(rec, row, name, spec, self.text_field)


def _reader(
    fields: list[str], text_field: str, forced: PairFormat | None, path: Path, what: str = "field"
) -> _Reader | str:
    """The reader for a file whose first record (or schema) has `fields`, or why there is none;
    `what` names them in that line: "field" (JSONL) or "column" (Parquet)."""
    have = f"{what}s: {', '.join(sorted(fields)[:8])}"
    if forced is not None:
        need = forced.columns()[:2] if forced.answer else forced.columns()
        missing = [f for f in need if f not in fields]
        if not missing:
            return _Reader(text_field, forced)
        return f"{path}: no {what} {missing[0]!r} for --pair-fields ({have})"
    if text_field in fields:
        return _Reader(text_field)
    found = find_format(fields)
    if found is not None:
        return _Reader(text_field, found)
    return (
        f"{path}: no {what} {text_field!r} ({have}); pick one with"
        " --text-field, or --pair-fields for instruction -> code pairs"
    )


def iter_jsonl(
    path: Path, spec: str, text_field: str, forced: PairFormat | None = None
) -> Iterator[RawFile | Skip]:
    """One record per line. A file whose first record is not JSON is corrupt as a whole;
    a later bad line is one counted bad record, and a read error ends the file there."""
    reader = None
    try:
        for lineno, rec in scan_jsonl(path):
            row = lineno - 1  # records are named by 0-based line: "dump.jsonl#0" is the first line
            if isinstance(rec, BadLine):
                if reader is None:
                    yield Skip(path.name, spec, "skipped_corrupt_jsonl", f"{path}: not JSON Lines")
                    return
                why = f"{path}:{lineno}: {rec.why}; the rest of the file is read"
                yield Skip(f"{path.name}#{row}", spec, "skipped_bad_record", why)
                continue
            if reader is None:
                reader = _reader(list(rec) if isinstance(rec, dict) else [], text_field, forced, path)
                if isinstance(reader, str):
                    yield Skip(path.name, spec, "skipped_missing_text_field", reader)
                    return
            yield reader(rec, row, path.name, spec)
    except CodelmError as e:  # unreadable or a damaged gzip stream: what was read still counts
        yield Skip(path.name, spec, "skipped_corrupt_jsonl", str(e))


def iter_parquet(
    path: Path, spec: str, text_field: str, forced: PairFormat | None = None
) -> Iterator[RawFile | Skip]:
    """Rows of a Parquet file, read in batches of PARQUET_BATCH."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        msg = f"{path}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else e})"
        yield Skip(path.name, spec, "skipped_corrupt_parquet", msg)
        return
    reader = _reader(names, text_field, forced, path, "column")
    if isinstance(reader, str):
        yield Skip(path.name, spec, "skipped_missing_text_field", reader)
        return
    columns = [c for c in (*reader.columns(), *PATH_FIELDS, *REPO_FIELDS) if c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH, columns=columns):
            for rec in batch.to_pylist():
                yield reader(rec, row, path.name, spec)
                row += 1
    except (OSError, ValueError) as e:
        msg = f"{path}: corrupt after row {row} ({str(e).splitlines()[0] if str(e) else e})"
        yield Skip(path.name, spec, "skipped_corrupt_parquet", msg)


def _check_path(spec: str, path: Path) -> None:
    """Fail with one line when a whole-input path is missing, a symlink loop or unreadable."""
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CodelmError(f"source is a symlink loop: {spec}") from None
        if e.errno == errno.ENOENT and "://" in spec:  # nothing is downloaded
            raise CodelmError(f"source not found: {spec}: codelm reads local paths; clone it first") from None
        if e.errno == errno.ENOENT:
            raise CodelmError(f"source not found: {spec}") from None
        raise CodelmError(f"cannot read source {spec}: {e.strerror or e}") from None
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise CodelmError(f"cannot read source {spec}: permission denied")


def _open_directory(spec: str, path: Path, mode: str, max_bytes: int) -> Source:
    if mode != "dir" and gitsource.is_repo_root(path):
        mode = "git"
    if mode == "git":
        commit = gitsource.head_commit(path, spec)
        walk = lambda: gitsource.iter_head(path, commit, spec, max_bytes, language_of, SKIP_DIRS)
        return Source(spec, "git", {"commit": commit}, walk)
    if gitsource.in_worktree(path):
        return Source(spec, "worktree", {}, lambda: iter_worktree(path, spec, max_bytes))
    return Source(spec, "directory", {}, lambda: iter_directory(path, spec, max_bytes))


def open_source(
    spec: str, text_field: str = "content", max_bytes: int = 1_000_000, pair_fields: str = ""
) -> Source:
    """Check a source spec and return it, ready to iterate; a bad spec is a one-line CodelmError.
    `pair_fields` (instruct.py) forces how JSONL/Parquet records are read as pairs."""
    forced = parse_pair_fields(pair_fields)
    if spec == "stdlib":
        root = stdlib_root()
        info = {"root": str(root), "python": sysconfig.get_python_version()}
        return Source(spec, "stdlib", info, lambda: iter_directory(root, spec, max_bytes))
    if spec == "site-packages":
        root = site_packages_root()
        info = {"root": str(root), "held_out": list(HELD_OUT_PACKAGES), "cap_bytes": SITE_PACKAGE_CAP}
        return Source(spec, "site-packages", info, lambda: iter_site_packages(root, spec, max_bytes))
    mode, _, rest = spec.partition(":")
    if mode in ("git", "dir") and rest:
        path = Path(rest).expanduser()  # the shell does not expand "~" after "dir:"
    else:
        mode, path = "", Path(spec)
    _check_path(spec, path)
    if path.is_dir():
        return _open_directory(spec, path, mode, max_bytes)
    if mode == "git":
        raise CodelmError(f"not a git repository: {spec}")
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return Source(spec, "jsonl", {}, lambda: iter_jsonl(path, spec, text_field, forced))
    if name.endswith(".parquet"):
        return Source(spec, "parquet", {}, lambda: iter_parquet(path, spec, text_field, forced))
    if language_of(name):
        return Source(spec, "file", {}, lambda: iter((_read(path, path.name, spec, max_bytes),)))
    raise CodelmError(
        f"unsupported source {spec}: expected a directory, a git repository, *.jsonl, *.parquet,"
        " 'stdlib' or 'site-packages'"
    )
