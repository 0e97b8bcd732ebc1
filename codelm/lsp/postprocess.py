"""Turn a model's raw completion into the ghost text an editor shows at the cursor.

Input: the document before the cursor (`prefix`), after it (`suffix`), the raw
completion, and whether the request may span lines. Output: an `InlineEdit`, the
text to insert and the range it replaces, or None (show nothing). The steps, each a
small pure function, in the order they run:
1. one line or several: several only after a block opener (the cursor line ends with
   `:` in Python, or with an open bracket) or on a blank line, and never mid-line
   (text after the cursor that is not just closing brackets); else cut at the first
   newline;
2. re-indent: the document's tabs or spaces; a body the model wrote in its own frame
   (not deeper than the line that opens it) is re-based on the cursor line's indentation;
3. block end: a line that dedents out of the cursor's block (or of the block the
   completion's first line opens), once the body has begun and no bracket or string
   is open, ends the completion;
4. a line that repeats the suffix's next non-blank line ends it too;
5. trailing blank lines and spaces go; only whitespace left: nothing to show;
6. brackets: when the completion re-types what follows the cursor on its line (the
   `)` of `foo(|)`, or all of `, 2)` in `foo(|, 2)`), the range grows over that text,
   so the line ends up with it once.
The behaviours are those of Tabby's post-processing chain (limit scope by indentation,
remove repetitive lines, trim whitespace), Continue's and Cody's multi-line
detection and suffix filters, and llama.vim's indentation check; users' complaints
about duplicated suffixes and closers, wrong indentation and multi-line text mid-line
are the cases the tests pin. The code is our own.

Not done here: syntax-aware scoping (tree-sitter), which Tabby adds on top of
indentation; stop strings and repetition, which the engine's stop rules
(codelm/generate/stopping.py) apply while generating. Positions are (line, character)
with characters counted in code points; a server that speaks UTF-16 positions converts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from codelm.generate.whole import scan_open

OPENERS, CLOSERS = "([{", ")]}"
COLON_BLOCKS = frozenset({"python"})  # languages whose blocks open with a trailing ':'
TAB_COLUMNS = 4  # a model's spaces per level when the document indents with tabs
STATE_WINDOW = 20_000  # characters of the prefix read to know whether a string is open


@dataclass(frozen=True)
class InlineEdit:
    """Insert `text` in place of the document's range [start, end), positions (line, character)."""

    text: str
    start: tuple[int, int]
    end: tuple[int, int]


@dataclass(frozen=True)
class _Style:
    tabs: bool | None  # None: the document shows no indentation to copy
    unit: int  # columns of one level; a tab counts this many columns


@dataclass(frozen=True)
class _Cursor:
    line: int
    line_prefix: str  # the cursor line up to the cursor
    line_suffix: str  # the cursor line from the cursor on, without its newline
    next_line: str  # the suffix's first non-blank line after the cursor line, stripped
    quote: str  # a string open where the cursor line begins ("" for none)
    style: _Style
    eol: str
    language: str

    @property
    def blank(self) -> bool:
        return not self.line_prefix.strip()


def postprocess(
    prefix: str, suffix: str, completion: str, multiline: bool = True, language: str = "python"
) -> InlineEdit | None:
    """What to show for `completion` at the cursor between `prefix` and `suffix`, or None."""
    cur = _cursor(prefix, suffix, language)
    text = completion.replace("\r\n", "\n")
    multi = multiline and allows_multiline(prefix, suffix, language)
    if not multi:
        text = text.split("\n", 1)[0]
    lines = _reindent(text.split("\n"), cur)
    if multi:
        lines = _cut_block_end(lines, cur)
    lines = _cut_suffix_repeat(lines, cur)
    text = "\n".join(lines).rstrip()
    if not text:
        return None
    replaced = _replaced_length(text, cur.line_suffix)
    if text == cur.line_suffix[:replaced]:
        return None  # the completion only re-types what is already there
    start = (cur.line, len(cur.line_prefix))
    return InlineEdit(text.replace("\n", cur.eol), start, (cur.line, start[1] + replaced))


def allows_multiline(prefix: str, suffix: str, language: str = "python") -> bool:
    """Whether a completion at this cursor may span lines: after a block opener or on a
    blank line, and never with code after the cursor on its line (closers may follow)."""
    line_prefix = prefix[prefix.rfind("\n") + 1 :]
    line_suffix = suffix.split("\n", 1)[0]
    if any(not (ch in CLOSERS or ch in ";\r" or ch.isspace()) for ch in line_suffix):
        return False
    return not line_prefix.strip() or opens_block(line_prefix, language)


def opens_block(line: str, language: str = "python") -> bool:
    """Whether code `line` ends by opening a block: an open bracket, or a ':' in Python
    outside brackets (not a dict's `{"a":` nor a slice)."""
    code = line.rstrip()
    if code.endswith(tuple(OPENERS)):
        return True
    return language in COLON_BLOCKS and code.endswith(":") and scan_open(code)[0] == 0


def _cursor(prefix: str, suffix: str, language: str) -> _Cursor:
    start = prefix.rfind("\n") + 1
    before = prefix[max(0, start - STATE_WINDOW) : start]
    if start > STATE_WINDOW:
        before = before[before.find("\n") + 1 :]  # begin at a line start, the best guess at no string
    first, _, rest = suffix.partition("\n")
    near = prefix[-20_000:] + suffix[:20_000]
    return _Cursor(
        line=prefix.count("\n"),
        line_prefix=prefix[start:],
        line_suffix=first.rstrip("\r"),
        next_line=_first_nonblank(rest),
        quote=scan_open(before)[1],
        style=_doc_style(near),
        eol="\r\n" if "\r\n" in near else "\n",
        language=language,
    )


def _first_nonblank(text: str) -> str:
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos)
        end = len(text) if end == -1 else end
        if text[pos:end].strip():
            return text[pos:end].strip()
        pos = end + 1
    return ""


def _doc_style(text: str) -> _Style:
    """Tabs or spaces, and the most common step between indentation levels."""
    tab_lines = space_lines = prev = 0
    steps: Counter[int] = Counter()
    for line in text.split("\n"):
        if not line.strip():
            continue
        ws = _leading(line)
        tab_lines += ws.startswith("\t")
        space_lines += ws.startswith(" ")
        width = _columns(ws, TAB_COLUMNS)
        if width > prev and not ws.startswith("\t"):
            steps[width - prev] += 1
        prev = width
    if not tab_lines and not space_lines:
        return _Style(None, 4)
    if tab_lines > space_lines:
        return _Style(True, TAB_COLUMNS)
    unit = steps.most_common(1)[0][0] if steps else 4
    return _Style(False, unit if 1 < unit <= 8 else 4)


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _columns(ws: str, tab: int) -> int:
    """Width of indentation `ws`, a tab reaching the next multiple of `tab` columns."""
    width = 0
    for ch in ws:
        width = (width // tab + 1) * tab if ch == "\t" else width + 1
    return width


def _reindent(lines: list[str], cur: _Cursor) -> list[str]:
    """Lines in the document's indentation style; a body in the model's own frame re-based."""
    tab = cur.style.unit
    level = _columns(_leading(cur.line_prefix), tab)
    first = lines[0]
    if cur.blank and level and first[:1] in (" ", "\t") and _columns(_leading(first), tab) == level:
        first = first.lstrip(" \t")  # the model typed the line's indentation again
    head = cur.line_prefix + first
    shift = _rebase_shift(head, lines[1:], cur)
    target = cur.style.tabs if cur.style.tabs is not None else any(ln[:1] == "\t" for ln in lines[1:])
    out = [first]
    for line in lines[1:]:
        ws = _leading(line)
        if not line.strip() or (not shift and ("\t" in ws) == target and not (target and " " in ws)):
            out.append(line)  # already right: keep the model's exact alignment
            continue
        width = max(0, _columns(ws, tab) + shift)
        indent = "\t" * (width // TAB_COLUMNS) + " " * (width % TAB_COLUMNS) if target else " " * width
        out.append(indent + line[len(ws) :])
    return out


def _rebase_shift(head: str, later: list[str], cur: _Cursor) -> int:
    """Columns to add to `later` lines: nonzero only when `head` opens a block whose first
    body line is not deeper than `head`, i.e. the model indented from its own column 0."""
    if not opens_block(head, cur.language):
        return 0
    tab = cur.style.unit
    base = _columns(_leading(head), tab)
    body = next((ln for ln in later if ln.strip() and ln.lstrip()[0] not in CLOSERS), None)
    if body is None or _columns(_leading(body), tab) > base:
        return 0
    return base + cur.style.unit - _columns(_leading(body), tab)


def _cut_block_end(lines: list[str], cur: _Cursor) -> list[str]:
    """Lines up to the first that leaves the cursor's block once the body has begun.
    After an opener (the cursor line's, or on a blank line the completion's first line)
    the body lies deeper than that line, so a line back at its level ends it; else a line
    left of the cursor does. A line inside an open bracket or string never ends it, so a
    `)` or `}` that closes what the cursor line or the completion opened stays."""
    head = cur.line_prefix + lines[0]
    opener = opens_block(head, cur.language)
    level = _columns(_leading(head), cur.style.unit)
    started = not opener and bool(lines[0].strip())
    state = scan_open(head + "\n", (0, cur.quote, False))
    for i, line in enumerate(lines[1:], start=1):
        if line.strip():
            width = _columns(_leading(line), cur.style.unit)
            outside = width <= level if opener else width < level
            if not outside:
                started = True
            elif started and state[0] == 0 and not state[1]:
                return lines[:i]
        state = scan_open(line + "\n", state)
    return lines


def _cut_suffix_repeat(lines: list[str], cur: _Cursor) -> list[str]:
    """Lines before the first that equals (stripped) the suffix's next non-blank line:
    the model went on to re-type code that follows the cursor already."""
    if not cur.next_line:
        return lines
    for i, line in enumerate(lines):
        full = cur.line_prefix + line if i == 0 else line
        if line.strip() and full.strip() == cur.next_line:
            return lines[:i]
    return lines


def _replaced_length(text: str, line_suffix: str) -> int:
    """How many characters after the cursor the completion re-types, so its range covers
    them: all of the line's rest when the completion ends with it and closes the same
    brackets; else the run of leading closers that the completion closes too."""
    rest = line_suffix.rstrip()
    if not rest:
        return 0
    extra = _unmatched_closers(text)
    if text.endswith(rest) and extra == _unmatched_closers(rest):
        return len(rest)
    matched = end = 0
    for i, ch in enumerate(line_suffix):
        if ch.isspace():
            continue
        if matched < len(extra) and ch == extra[matched]:
            matched, end = matched + 1, i + 1
        else:
            break
    return end


def _unmatched_closers(text: str) -> str:
    """The closing brackets in `text` that close no bracket opened in `text`, in order:
    those close brackets of the code before it. Quoted text is skipped."""
    stack: list[str] = []
    out: list[str] = []
    quote, i = "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote or ch == "\n":
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in OPENERS:
            stack.append(ch)
        elif ch in CLOSERS:
            if stack:
                stack.pop()
            else:
                out.append(ch)
        i += 1
    return "".join(out)
