"""Mine docstring examples (doctests) as instruction -> code pairs.

pandas's and matplotlib's docstrings teach by example: a sentence of prose, then
the `>>>` code that does it. Each such example becomes a `Pair` (`kind="doctest"`)
whose prompt is the prose and whose completion is the example's code, which is
what a notebook request ("Sum each column of df") should turn into.

What counts, in the docstring of the module, of every class and of every function
(methods and nested definitions included; `ast.get_docstring(clean=True)`):

- An example is a run of `>>> ` lines, each with its `... ` continuation lines;
  the lines after a statement, up to a blank line or the next `>>>`, are its
  output, and are left out. `>>>` lines separated only by output are one example;
  a blank line ends it. Its code is the statements without their prompts, each
  dedented on its own, ending with a newline. A `# doctest: +SKIP`-style
  directive is stripped from the line it is on; the example is kept.
- Its instruction is the prose between it and the previous example, or the start
  of the section it is in (a numpydoc title with its underline, or an `Examples:`,
  `Example::`, `Args:`... line), or the docstring's start: so a docstring without
  sections gives its summary to its first example. Dropped from the prose: those
  titles, underlines, reST directive lines (`.. plot::`) and their option lines
  (`:context: close-figs`); a trailing `::` becomes `:` as reST renders it.
- The earlier examples' code is setup: it goes before the prose, then a blank
  line, as the notebook puts context code before a request. Setup is the
  earlier imports (each once, first, as a notebook has them), then the latest
  earlier statements that fit in `SETUP_LINES` lines, whole statements only;
  statements that only show a value (`>>> df`) set nothing up and are left out.
  The first example with no earlier ones gets the prose alone.

Skipped as pairs: an example with no prose above it, or prose of fewer than
`min_instruction_words` words (it is still setup for the next ones); an example
that only shows a name or a literal (`>>> df`, `>>> 1`), or holds only comments;
an example any of whose statements does not parse (then it is not setup either).
A pair is named "{qualname}:example{k}", k counting every example of its
docstring from 1 (skipped ones too, so names stay put); the module's qualname is
"<module>". Nothing is executed; outputs are not checked or used, and `In [1]:`
(IPython) prompts are not recognised. `PairConfig.doctests=False` (or
`enabled=False`, which turns off all pairs) mines nothing.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field

from codelm.data.pairs import Pair, PairConfig, iter_defs

SETUP_LINES = 15  # enough for a frame's construction and a step or two on it, short of a whole tutorial
MODULE = "<module>"  # the qualname of the module's docstring

# Section titles that open a section on their own line (Google style "Examples:", reST "Examples::").
# Only these: "For example:" is prose ending in a colon, not a title.
_TITLES = frozenset(
    (
        "args", "arguments", "attributes", "example", "examples", "keyword args", "keyword arguments",
        "methods", "note", "notes", "other parameters", "parameters", "raises", "references", "return",
        "returns", "see also", "todo", "usage", "warning", "warnings", "yield", "yields",
    )
)  # fmt: skip
_UNDERLINE = re.compile(r"([-=~^*+#`'\"])\1{2,}")  # a numpydoc/reST title's underline
_OPTION = re.compile(r":[A-Za-z][\w-]*:(\s.*)?")  # a directive's option; a role (":func:`f`") is prose
_DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")  # "# doctest: +SKIP" and friends, to the line's end


@dataclass
class _Example:
    index: int  # 1-based among the docstring's examples
    prose: str  # the instruction text above it, cleaned; "" when none
    statements: list[str] = field(default_factory=list)  # each `>>>` statement's code, ending in "\n"


@dataclass(frozen=True)
class _Stmt:
    code: str  # ending in "\n"
    role: str  # "import", "show" (sets nothing up: a bare name, a literal, only comments) or "code"


def _ps1(stripped: str) -> bool:
    return stripped.startswith(">>> ") or stripped == ">>>"


def _ps2(stripped: str) -> bool:
    return stripped.startswith("... ") or stripped == "..."


def _title_lines(lines: list[str], i: int) -> int:
    """How many lines a section title at line i takes (0: none): a line over an underline, or a
    known title word ending in ':' or '::'."""
    s = lines[i].strip()
    if not s:
        return 0
    below = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if _UNDERLINE.fullmatch(below) and not _UNDERLINE.fullmatch(s):
        return 2
    if s.endswith(":") and s.rstrip(":").strip().lower() in _TITLES:
        return 1
    return 0


def _clean_prose(lines: list[str]) -> str:
    """The prose lines as an instruction: markup lines out, dedented, blank runs squeezed."""
    kept = []
    for line in lines:
        s = line.strip()
        if s.startswith(".. ") or s == "::" or _OPTION.fullmatch(s) or _UNDERLINE.fullmatch(s):
            continue
        line = line.rstrip()
        kept.append(line[:-1] if s.endswith("::") and not s.endswith(":::") else line)
    text = textwrap.dedent("\n".join(kept))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _statement(lines: list[str]) -> str:
    """One `>>>` statement's code from its prompt lines (already stripped of leading space)."""
    code = [line[4:] for line in lines]  # ">>> x" -> "x"; a bare ">>>" or "..." -> ""
    code = [_DIRECTIVE.sub("", line).rstrip() for line in code]
    text = textwrap.dedent("\n".join(code)).strip("\n")  # ">>>  x" (two spaces) as ">>> x"
    return f"{text}\n" if text.strip() else ""


def _examples(doc: str) -> list[_Example]:
    """The docstring's examples, each with the prose above it, in order."""
    lines = doc.split("\n")
    examples: list[_Example] = []
    prose: list[str] = []
    i = 0
    while i < len(lines):
        if not _ps1(lines[i].lstrip()):
            if n := _title_lines(lines, i):
                prose, i = [], i + n  # a new section: prose above it is not about what follows
            else:
                prose.append(lines[i])
                i += 1
            continue
        ex = _Example(len(examples) + 1, _clean_prose(prose))
        while i < len(lines) and _ps1(lines[i].lstrip()):  # statements with only output between
            start = i
            i += 1
            while i < len(lines) and _ps2(lines[i].lstrip()):
                i += 1
            if code := _statement([line.lstrip() for line in lines[start:i]]):
                ex.statements.append(code)
            while i < len(lines) and lines[i].strip() and not _ps1(lines[i].lstrip()):
                i += 1  # output: up to a blank line or the next prompt
        examples.append(ex)
        prose = []
    return examples


def _shows_only(node: ast.stmt) -> bool:
    """A statement that only displays a value: a bare name or a literal."""
    if not isinstance(node, ast.Expr):
        return False
    if isinstance(node.value, ast.Name):
        return True
    try:
        ast.literal_eval(node.value)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _stmts(ex: _Example) -> list[_Stmt] | None:
    """The example's statements with their roles; None when one does not parse."""
    out = []
    for code in ex.statements:
        try:
            body = ast.parse(code).body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        if body and all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body):
            role = "import"
        elif all(_shows_only(s) for s in body):  # an empty body: comments only
            role = "show"
        else:
            role = "code"
        out.append(_Stmt(code, role))
    return out


def _setup(earlier: list[_Stmt]) -> str:
    """The context code for the next example: imports first, then the latest statements that fit."""
    imports = list(dict.fromkeys(s.code for s in earlier if s.role == "import"))
    room = SETUP_LINES - sum(c.count("\n") for c in imports)
    recent: list[str] = []
    for s in reversed([s for s in earlier if s.role == "code"]):
        n = s.code.count("\n")
        if n > room:
            break  # whole statements only: half a statement would not parse
        recent.append(s.code)
        room -= n
    return "".join(imports + recent[::-1]).rstrip("\n")


def _docstring_pairs(doc: str, qualname: str, cfg: PairConfig) -> list[Pair]:
    pairs: list[Pair] = []
    earlier: list[_Stmt] = []
    for ex in _examples(doc):
        stmts = _stmts(ex)
        if not stmts:  # does not parse, or no code at all (a lone "# doctest: +SKIP")
            continue
        words = len(ex.prose.split())
        if words and words >= cfg.min_instruction_words and any(s.role != "show" for s in stmts):
            setup = _setup(earlier)
            prompt = f"{setup}\n\n{ex.prose}" if setup else ex.prose
            completion = "".join(s.code for s in stmts)
            pairs.append(Pair(f"{qualname}:example{ex.index}", prompt, completion, kind="doctest"))
        earlier.extend(stmts)
    return pairs


def mine_doctests(text: str, tree: ast.Module, cfg: PairConfig) -> list[Pair]:
    """Every docstring example's (instruction, code) pair in the file, in source order."""
    if not (cfg.enabled and cfg.doctests) or ">>>" not in text:  # most files have none: skip the walk
        return []
    pairs: list[Pair] = []
    nodes = [(MODULE, tree), *iter_defs(tree.body)]
    for qualname, node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc and ">>>" in doc:
            pairs.extend(_docstring_pairs(doc, qualname, cfg))
    return pairs
