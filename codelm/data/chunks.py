"""Workspace code as searchable snippets: chunking by function and class, and BM25.

- `chunk_file`: Python by top-level function and class (`ast`; a long class by its
  header and each method), the code between them and other files by windows of lines.
  A `Snippet` keeps its path and 0-based line span [start, end).
- `terms`: identifiers lowercased, plus their snake_case and camelCase parts, minus
  keywords: what BM25 matches.
- `Bm25`: Okapi BM25 on an inverted index that takes documents in and out one at a time
  (a file saved in the editor re-indexes only that file), with Lucene's non-negative idf.
  rank-bm25 installs, but rebuilds its corpus on any change, scores every document per
  query term, and its Okapi idf gives 0 to a term in half the documents of a small
  workspace (dorianbrown/rank_bm25 issues 39, 43).
- `declarations`: a Python file's top-level functions and classes as stubs (signature,
  the docstring's first line, a class's fields and method signatures), by name: what an
  editor's prompt shows of the definitions its code names.
- `render` / `layout`: snippets under a comment naming their path, as prompts hold them,
  within a token budget.
The editor's index (lsp/context.py) and training's repository documents
(train/repo.py) both build on this module, so both lay out context alike.
"""

from __future__ import annotations

import ast
import copy
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

WINDOW = 40  # lines per window of code outside a Python function or class
MAX_CHUNK_LINES = 80  # a function or class longer than this is cut into windows
STUB_MEMBERS = 12  # a class's stub shows at most this many fields, and this many methods

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an identifier, as BM25 and the declarations read them
_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Words every file uses: they would match everything and rank nothing.
_STOP_WORDS = """def class return self cls if else elif for while in not and or is none true false import
from as with try except finally pass break continue lambda yield raise assert del global nonlocal async
await const let var function int void char bool public private protected static new this struct null
nil fn pub mut use func package the"""
_STOP = frozenset(_STOP_WORDS.split())
_HASH = {".py", ".pyi", ".sh", ".bash", ".rb", ".pl", ".r", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".mk"}
_DASHES = {".sql", ".lua", ".hs", ".elm", ".ada"}
_HASH_NAMES = {"Makefile", "Dockerfile", "CMakeLists.txt"}


@dataclass(frozen=True)
class Snippet:
    path: str  # relative to the workspace root, '/'-separated (a URI's path outside it)
    start: int  # first line, 0-based
    end: int  # one past the last line
    text: str
    kind: str = "window"  # "function" | "class" | "window"

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end


@dataclass(frozen=True)
class Hit:
    snippet: Snippet
    score: float


def terms(text: str) -> list[str]:
    """BM25 terms of code: identifiers lowercased, plus their snake/camel parts."""
    out: list[str] = []
    for ident in IDENT.findall(text):
        low = ident.lower()
        if len(low) < 2 or low in _STOP:
            continue
        out.append(low)
        parts = [p.lower() for p in _PARTS.findall(ident)]
        if len(parts) > 1:
            out.extend(p for p in parts if len(p) > 1 and p not in _STOP)
    return out


def chunk_file(path: str, text: str, window: int = WINDOW, max_lines: int = MAX_CHUNK_LINES) -> list[Snippet]:
    """Snippets of one file: Python by function and class, the rest by windows of lines."""
    # Universal newlines, as `ast` counts lines; str.splitlines would also split at form feeds.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    spans: list[tuple[int, int, str]] = []
    if PurePosixPath(path).suffix in (".py", ".pyi"):
        try:
            spans = _python_spans(ast.parse(text), max_lines)
        except (SyntaxError, ValueError, RecursionError):
            spans = []  # code mid-edit does not parse: windows still index it
    # The spans come in order and never overlap: the code around them is windowed.
    edges = [0, *(x for start, end, _ in spans for x in (start, end)), len(lines)]
    gaps = [(a, b, "window") for a, b in zip(edges[::2], edges[1::2], strict=True) if a < b]
    out = []
    for start, end, kind in sorted(spans + gaps):
        step = window if end - start > max_lines or kind == "window" else end - start
        for s in range(start, end, step):
            e = min(s + step, end)
            while s < e and not lines[s].strip():
                s += 1  # a snippet starts at code, so its span says where the code is
            while e > s and not lines[e - 1].strip():
                e -= 1
            if s < e:
                out.append(Snippet(path, s, e, "\n".join(lines[s:e]), kind))
    return out


def _python_spans(tree: ast.Module, max_lines: int) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each top-level function and class, decorators included; a long
    class gives its header and each method instead, so every snippet stays small."""
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    spans = []
    for node in tree.body:
        if not isinstance(node, defs):
            continue
        start, end = _node_start(node), node.end_lineno or node.lineno
        if not isinstance(node, ast.ClassDef):
            spans.append((start, end, "function"))
            continue
        methods = [n for n in node.body if isinstance(n, defs[:2])]
        if end - start <= max_lines or not methods:
            spans.append((start, end, "class"))
            continue
        spans.append((start, _node_start(methods[0]), "class"))
        spans.extend((_node_start(m), m.end_lineno or m.lineno, "function") for m in methods)
    return spans


def declarations(path: str, text: str) -> dict[str, str]:
    """name -> stub of each top-level function and class of a Python file ({} for other files
    and for code that does not parse). A stub keeps the decorators and signature, the
    docstring's first line, and a class's annotated fields and its constructor's and public
    methods' signatures (STUB_MEMBERS of each), each body cut to `...`:
    `class Point:` / `x: float` / `def norm(self) -> float: ...`."""
    if PurePosixPath(path).suffix not in (".py", ".pyi"):
        return {}
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return {}
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            try:
                out[node.name] = ast.unparse(_stub(node))
            except (ValueError, RecursionError):  # a tree ast.unparse cannot write back
                continue
    return out


def _stub(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.stmt:
    """A copy of a def or class whose body is its docstring's first line, then, for a class,
    its short annotated fields and its methods' stubs; for a function, `...`."""
    doc = (ast.get_docstring(node, clean=True) or "").strip()
    body: list[ast.stmt] = [ast.Expr(ast.Constant(doc.splitlines()[0]))] if doc else []
    if isinstance(node, ast.ClassDef):
        fields = [i for i in node.body if isinstance(i, ast.AnnAssign) and len(ast.unparse(i)) <= 80]
        methods = [i for i in node.body if isinstance(i, ast.FunctionDef | ast.AsyncFunctionDef)]
        # what a caller uses: the constructor and the public methods, at most STUB_MEMBERS each
        methods = [m for m in methods if m.name == "__init__" or not m.name.startswith("_")]
        body += fields[:STUB_MEMBERS] + [_stub(m) for m in methods[:STUB_MEMBERS]]
    if not isinstance(node, ast.ClassDef) or not body:
        body.append(ast.Expr(ast.Constant(...)))
    stub = copy.copy(node)
    stub.body = body
    return stub


def _node_start(node: ast.stmt) -> int:
    return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1


class Bm25:
    """Okapi BM25 on an inverted index that takes documents in and out one at a time."""

    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1, self.b = k1, b
        self.postings: dict[str, dict[int, int]] = {}
        self.lengths: dict[int, int] = {}
        self.total = 0

    def add(self, doc: int, tf: Counter[str]) -> None:
        for term, n in tf.items():
            self.postings.setdefault(term, {})[doc] = n
        self.lengths[doc] = sum(tf.values())
        self.total += self.lengths[doc]

    def remove(self, doc: int, tf: Counter[str]) -> None:
        for term in tf:
            docs = self.postings[term]
            del docs[doc]
            if not docs:
                del self.postings[term]
        self.total -= self.lengths.pop(doc)

    def idf(self, term: str) -> float:
        # Lucene's form: never negative, so a term in most documents still counts a little.
        n, df = len(self.lengths), len(self.postings.get(term, ()))
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def weight(self, idf: float, n: int, length: int) -> float:
        """A term's part of a document's score: `n` occurrences in `length` terms."""
        avg = (self.total / len(self.lengths) if self.lengths else length) or 1.0
        return idf * n * (self.k1 + 1) / (n + self.k1 * (1 - self.b + self.b * length / avg))

    def score(self, query: set[str], tf: Counter[str]) -> float:
        """Score of a document that need not be in the index (an open file's snippet)."""
        length = sum(tf.values())
        return sum(self.weight(self.idf(t), tf[t], length) for t in query if t in tf)

    def scores(self, query: set[str]) -> dict[int, float]:
        out: dict[int, float] = {}
        for term in query:
            idf = self.idf(term)
            for doc, n in self.postings.get(term, {}).items():
                out[doc] = out.get(doc, 0.0) + self.weight(idf, n, self.lengths[doc])
        return out


def comment_prefix(path: str) -> str:
    """The line-comment marker of a file's language, by extension: '#', '--' or '//'."""
    p = PurePosixPath(path)
    if p.suffix.lower() in _HASH or p.name in _HASH_NAMES:
        return "#"
    return "--" if p.suffix.lower() in _DASHES else "//"


def render(snippet: Snippet) -> str:
    """A snippet as a prompt holds it: its path in a comment, its code, a blank line. The
    editor's repository context and training's repository documents both use this."""
    return f"{comment_prefix(snippet.path)} {snippet.path}\n{snippet.text}\n\n"


def layout(hits: list[Hit], budget: int, count_tokens: Callable[[str], int]) -> str:
    """Rendered snippets, most relevant first, that fit in `budget` tokens together; one that
    does not fit is skipped so that a smaller, less relevant one may still come in."""
    parts: list[str] = []
    used = 0
    for hit in hits:
        block = render(hit.snippet)
        n = count_tokens(block)
        if used + n <= budget:
            parts.append(block)
            used += n
    # Tokens of the joined text may differ from the sum at the seams: check the whole.
    while parts and count_tokens("".join(parts)) > budget:
        parts.pop()
    return "".join(parts)
