"""Mine instruction -> code pairs from Python files with `ast`.

For every function and method, the instruction is its docstring or, when it
has none, the comment block directly above it (above its decorators); the code
is the function's source, dedented, with the docstring lines removed. A pair is
skipped when its instruction is too short, its comment block is a licence
header or commented-out code, its body is a stub (`pass`, `...`, `raise
NotImplementedError`), or the docstring shares a line with other code (then
removing it cleanly is not possible). The build stores pairs as `kind=pair`
rows in the split of their file; this module does not deduplicate them.
Docstring examples (`>>>`) are mined by doctests.py into the same `Pair`, with
`kind="doctest"`; `iter_defs` is the walk over definitions both share.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

from codelm.errors import CodelmError

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_DEFS = (*_FUNCS, ast.ClassDef)
_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.TryStar)
_COMPOUND += (ast.Match, ast.match_case, ast.ExceptHandler)
_NOTES = ("todo", "fixme", "xxx", "hack", "note:")
_PRAGMAS = ("#!", "# -*-", "# noqa", "# type:", "# pragma", "# pylint", "# fmt:", "# isort", "# mypy")


@dataclass(frozen=True)
class PairConfig:
    enabled: bool = True  # mine pairs at all
    min_instruction_words: int = 3  # "Return the sum." is enough; "Helper." is not
    doctests: bool = True  # also mine docstring examples (`>>>`) as pairs: doctests.py
    functions: bool = True  # mine functions' docstring/comment -> code pairs (this module)

    def __post_init__(self) -> None:
        if self.min_instruction_words < 0:
            raise CodelmError(f"min_instruction_words must be at least 0, got {self.min_instruction_words}")


@dataclass(frozen=True)
class Pair:
    name: str  # qualified name within the file, e.g. "Stack.push"
    prompt: str  # the instruction, in natural language
    completion: str  # the function's code without its docstring, ending in a newline
    # "function" (this module), "doctest" (a docstring example, doctests.py) or "given" (a
    # record of an instruction dataset, instruct.py)
    kind: str = "function"


def pair_text(prompt: str, completion: str) -> str:
    """A pair as one Python text: the instruction as a comment, then the code."""
    comment = "\n".join(f"# {line}".rstrip() for line in prompt.split("\n"))
    return f"{comment}\n{completion}"


def _is_stub(body: list[ast.stmt]) -> bool:
    for stmt in body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is ...:
            continue
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return False
    return True


def _comment_above(lines: list[str], start: int) -> str | None:
    """The `#` block on the lines right above line `start` (1-based), as plain text."""
    block = []
    i = start - 2
    while i >= 0 and lines[i].lstrip().startswith("#"):
        block.append(lines[i].strip())
        i -= 1
    block = [b for b in reversed(block) if not b.startswith(_PRAGMAS)]
    if not block:
        return None
    text = "\n".join(b[1:].removeprefix(" ").rstrip() for b in block).strip()
    lowered = text.lower()
    if "copyright" in lowered or "license" in lowered or lowered.startswith(_NOTES):
        return None  # a licence header or a note to self, not a description of the function
    try:
        ast.parse(text)  # a block that parses is commented-out code, not an instruction
        return None
    except (SyntaxError, ValueError):
        return text


def _code(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef, doc: ast.Expr | None) -> str | None:
    """The function's source, dedented, without the docstring's lines."""
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    indent = lines[node.lineno - 1][: node.col_offset]  # col_offset counts bytes; indent is ASCII
    if indent.strip():
        return None  # something precedes `def` on its line
    skip = range(0)
    if doc is not None:
        before = lines[doc.lineno - 1][: doc.col_offset]
        after = lines[doc.end_lineno - 1].encode("utf-8")[doc.end_col_offset :].decode("utf-8", "replace")
        if before.strip() or (after.strip() and not after.strip().startswith("#")):
            return None  # the docstring shares a line with other code
        skip = range(doc.lineno, doc.end_lineno + 1)
    out = []
    for n in range(start, node.end_lineno + 1):
        if n not in skip:
            line = lines[n - 1]
            out.append(line[len(indent) :] if line.startswith(indent) else line)
    return "\n".join(out).rstrip() + "\n"


def _pair(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef, name: str, cfg: PairConfig):
    doc_text = ast.get_docstring(node, clean=True)
    body = node.body[1:] if doc_text is not None else node.body
    if not body or _is_stub(body):
        return None
    if doc_text is not None:
        prompt, code = doc_text.strip(), _code(lines, node, node.body[0])
    else:
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        prompt, code = _comment_above(lines, start), _code(lines, node, None)
    if not prompt or code is None or len(prompt.split()) < cfg.min_instruction_words:
        return None
    return Pair(name, prompt, code)


def mine_pairs(text: str, tree: ast.Module, cfg: PairConfig = PairConfig()) -> list[Pair]:
    """Every function's (instruction, code) pair in `text`, in source order."""
    if (
        not (cfg.enabled and cfg.functions) or "\r" in text
    ):  # a lone CR would shift ast's line numbers against ours
        return []
    lines = text.split("\n")
    return [
        pair
        for name, node in iter_defs(tree.body)
        if isinstance(node, _FUNCS) and (pair := _pair(lines, node, name, cfg))
    ]


def iter_defs(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, ast.stmt]]:
    """Every function and class in `body` with its qualified name ("Stack.push"), in source order,
    those nested in classes, functions and compound statements (`if`, `try`, ...) included."""
    for node in body:  # statements only: a function is never inside an expression
        if isinstance(node, _DEFS):
            name = f"{prefix}{node.name}"
            yield name, node
            yield from iter_defs(node.body, f"{name}.")
        elif isinstance(node, _COMPOUND):
            for part in ("body", "handlers", "orelse", "finalbody", "cases"):  # source order
                yield from iter_defs(getattr(node, part, ()), prefix)
