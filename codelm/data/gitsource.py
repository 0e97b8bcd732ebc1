"""Reading code through `git`: a repository from a commit, or a work tree's file list.

Everything runs locally (`rev-parse`, `ls-tree`, `ls-files`, `cat-file`); nothing
touches the network. Blobs stream through one `git cat-file --batch` process,
one at a time, so memory holds one file, never the repository. This module
does not decide which folders or languages matter: the caller passes that in.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from codelm.data.records import RawFile, Skip
from codelm.errors import CodelmError

_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
_SYMLINK_MODE = "120000"  # a symlink's blob is its target path, not code


def _git(path: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, env=_ENV, check=False)
    except FileNotFoundError:
        raise CodelmError("git is not installed, so git sources cannot be read") from None


def _out(path: Path, *args: str) -> str | None:
    """stdout of a git command, or None when it fails (not a repository, no git)."""
    try:
        r = _git(path, *args)
    except CodelmError:
        return None
    return r.stdout.decode("utf-8", "surrogateescape").strip() if r.returncode == 0 else None


def is_repo_root(path: Path) -> bool:
    """True for the top of a work tree or a bare repository (read from HEAD by default)."""
    real = os.path.realpath(path)
    if _out(path, "rev-parse", "--is-bare-repository") == "true":
        return _out(path, "rev-parse", "--absolute-git-dir") == real
    top = _out(path, "rev-parse", "--show-toplevel")
    return top is not None and os.path.realpath(top) == real


def in_worktree(path: Path) -> bool:
    """True inside a git work tree, unless that tree's .gitignore ignores `path` itself."""
    if _out(path, "rev-parse", "--is-inside-work-tree") != "true":
        return False
    # e.g. ~/.pyenv is a git clone that ignores versions/, where the stdlib lives
    return _git(path, "check-ignore", "-q", os.path.abspath(path)).returncode != 0


def head_commit(path: Path, spec: str) -> str:
    """The commit HEAD points at; fixed at the start so the build reads one snapshot."""
    sha = _out(path, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    if sha is None:
        if _out(path, "rev-parse", "--git-dir") is None:
            raise CodelmError(f"not a git repository: {spec}")
        raise CodelmError(f"git repository has no commits: {spec} (read its work tree with dir:{spec})")
    return sha


def worktree_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files under `root`, relative to it, sorted."""
    r = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if r.returncode != 0:
        raise CodelmError(f"git ls-files failed in {root}: {_first_line(r.stderr)}")
    names = r.stdout.decode("utf-8", "surrogateescape").split("\0")
    return sorted({n for n in names if n})  # --cached lists a conflicted file once per stage


def ignored(root: Path, rel: str) -> bool:
    """Whether the work tree's ignore rules (.gitignore, info/exclude) ignore `rel`, a path
    under `root`; a tracked file never is, as `worktree_files` lists it."""
    return _git(root, "check-ignore", "-q", "--", rel).returncode == 0


def _first_line(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return lines[0] if lines else "unknown error"


def _tree(path: Path, commit: str, spec: str) -> list[tuple[str, str, str, int]]:
    """(mode, object, path, size) of every blob under `path` at `commit`, paths relative to `path`."""
    r = _git(path, "ls-tree", "-r", "-z", "-l", commit)
    if r.returncode != 0:
        raise CodelmError(f"cannot list {spec} at {commit[:12]}: {_first_line(r.stderr)}")
    entries = []
    for item in r.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if not item:
            continue
        meta, _, name = item.partition("\t")
        mode, kind, obj, size = meta.split()
        if kind == "blob" and mode != _SYMLINK_MODE:
            entries.append((mode, obj, name, int(size)))
    return entries


def iter_head(
    path: Path,
    commit: str,
    spec: str,
    max_bytes: int,
    language_of: Callable[[str], str | None],
    skip_dirs: frozenset[str],
) -> Iterator[RawFile | Skip]:
    """RawFile | Skip for each code blob at `commit`, in path order, streamed from git."""
    wanted = []
    for _, obj, name, size in _tree(path, commit, spec):
        parts = name.split("/")
        if not language_of(name) or any(p in skip_dirs for p in parts[:-1]):
            continue
        if size > max_bytes:
            yield Skip(name, spec, "dropped_too_large")
        else:
            wanted.append((obj, name))
    if not wanted:
        return
    proc = subprocess.Popen(
        ["git", "-C", str(path), "cat-file", "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_ENV,
    )
    try:
        for obj, name in wanted:
            proc.stdin.write(f"{obj}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().split()
            if len(header) != 3:  # "<oid> missing": a broken object store
                yield Skip(name, spec, "skipped_unreadable", f"{spec}: {name}: git object {obj} is missing")
                continue
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)  # the newline after each object
            yield RawFile(name, data, spec, language_of(name))
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait()
