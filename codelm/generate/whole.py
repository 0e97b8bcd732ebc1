"""Whole code at a stop: a completion that ends mid-construct is trimmed back to code.

A rule that cuts a completion wherever it happens to be (repetition, max lines,
`length`, `context_full`, a server's timeout) can leave it inside an open string,
bracket or block header (`def add(a, b):` and a docstring never closed), and a weak
model can end a block (or its text) after a line that does not parse. `settle`
trims such a completion back to the longest start that ends a line and with which
the whole code (prompt + completion, or prefix + middle + suffix) parses. The
verdict is reported beside the stop reason (`Completion.syntax`):
- `parses`: the completion was whole code already; nothing trimmed;
- `trimmed`: it was cut back to code that parses;
- `unparsed`: no start parses (an editor's window of a file often does not parse
  as a whole). The text is cut at the last line where every bracket and string
  the completion opened is closed and no block header waits for its body, and
  kept whole where there is none (or in FIM, where the suffix may close it).
Every stop settles, the user's stop strings too: the text before one can still be broken.

Streaming never takes text back, so a stream holds back what a trim could cut:
text is released only up to the last line end where the whole code parses
(`LineScan.release`; where the first 3 such ends all fail, the code around is
taken for a window that never parses and lexically closed line ends do), and a
trim never cuts below what was released. A stream therefore shows whole lines,
and nothing of an open multi-line bracket or string until it closes.
This module does not run the code it checks: it parses it (`ast.parse`).
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_PARSES = 32  # line ends tried per trim, longest first: each parses the whole code (~1 ms per 8 KB)
# A stream whose first line ends all fail to parse is taken for a window of a file that
# never parses (an editor's prefix cut to its budget): it falls back to lexical line ends.
FRAGMENT_LINES = 3


def scan_open(code: str, state: tuple[int, str, bool] = (0, "", False)) -> tuple[int, str, bool]:
    """(bracket depth, open string quote or "", inside a comment) after reading `code`,
    starting from `state`. A lexer just good enough to tell whether code is complete."""
    depth, quote, comment = state
    i, n = 0, len(code)
    while i < n:
        ch = code[i]
        if comment:
            comment = ch != "\n"
        elif quote:
            if ch == "\\":
                i += 1  # the escaped character never closes the string
            elif code.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
            elif ch == "\n" and len(quote) == 1:
                quote = ""  # an unterminated one-line string ends with its line
        elif ch == "#":
            comment = True
        elif ch in "\"'":
            quote = ch * 3 if code.startswith(ch * 3, i) else ch
            i += len(quote) - 1
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        i += 1
    return depth, quote, comment


def syntax_error(code: str) -> str | None:
    """None if `code` parses as Python, else why not (line and message)."""
    try:
        with warnings.catch_warnings():  # invalid escape sequences and the like are not errors
            warnings.simplefilter("ignore")
            ast.parse(code)
    except SyntaxError as e:
        return f"line {e.lineno}: {e.msg}"
    except ValueError as e:  # null bytes
        return str(e)
    return None


def parses(code: str) -> bool:
    return syntax_error(code) is None


@dataclass(frozen=True)
class Whole:
    """The code around one completion: `before` it (the prompt's code, or FIM's prefix)
    and `after` it (FIM's suffix). Stateless, so one serves every row of a prompt; the
    per-row scan lives in `LineScan`. As a stop rule it never stops nor holds back:
    TextState (text.py) asks it for a `LineScan` and calls `settle` at the end."""

    before: str
    after: str = ""
    name: str = "whole"

    def check(self, text: str, tokens: Sequence[int]) -> int | None:
        return None

    def safe(self, text: str, tokens: Sequence[int]) -> int:
        return len(text)

    def scan(self) -> LineScan:
        return LineScan(scan_open(self.before), _last_line(self.before))

    def parses_with(self, text: str) -> bool:
        return parses(self.before + text + self.after)

    def settle(self, text: str, scan: LineScan, floor: int) -> tuple[int, str]:
        """(length to keep, verdict) for a completion that ended; never below `floor`,
        the text a stream already released."""
        if self.parses_with(text):
            return len(text), "parses"
        if scan.pos > len(text):  # a rule cut the text inside lines already scanned
            scan = self.scan()
        scan.feed(text)
        ends = [e for e in scan.ends if floor <= e <= len(text) and text[:e].strip()]
        for end in reversed(ends[-MAX_PARSES:]):
            if self.parses_with(text[:end]):
                return end, "trimmed"
        if ends and not self.after and not scan.closed_at_end(text):  # FIM: the suffix may close it
            return ends[-1], "unparsed"
        return len(text), "unparsed"


@dataclass
class LineScan:
    """One completion's lexical state, line by line as it grows: `ends` are the offsets
    just after each line where the brackets and strings are no more open than at the
    prompt's end and the line does not wait for more (a block header, a decorator, a
    backslash)."""

    start: tuple[int, str, bool]  # (bracket depth, open quote, in comment) at the prompt's end
    last: str  # the last non-blank line so far (the prompt's, to begin with)
    ends: list[int] = field(default_factory=list)
    pos: int = 0  # text before this offset has been scanned
    state: tuple[int, str, bool] | None = None
    released: int = 0  # the longest start a stream may show (`release`)
    checked: int = 0  # ends already parsed for `release`
    misses: int = 0  # ends that did not parse before any did
    lexical: bool = False  # a window that never parses: release at lexical ends

    def release(self, text: str, whole: Whole) -> int:
        """How much of `text` a stream may show: up to the last line end where the whole
        code parses, so a later trim never needs to take shown text back."""
        self.feed(text)
        for end in self.ends[self.checked :]:
            self.checked += 1
            if self.lexical or whole.parses_with(text[:end]):
                self.released = end
            elif not self.released:
                self.misses += 1
                self.lexical = self.misses >= FRAGMENT_LINES
                self.released = end if self.lexical else 0
        return self.released

    def feed(self, text: str) -> None:
        """Scan the complete lines of `text` not yet seen."""
        state = self.state or self.start
        while (nl := text.find("\n", self.pos)) != -1:
            line = text[self.pos : nl + 1]
            state = scan_open(line, state)
            if line.strip():
                self.last = line
            self.pos = nl + 1
            if self._closed(state):
                self.ends.append(self.pos)
        self.state = state

    def closed_at_end(self, text: str) -> bool:
        """Whether all of `text` (its last line too) leaves nothing open."""
        self.feed(text)
        rest = text[self.pos :]
        state = scan_open(rest, self.state or self.start)
        if rest.strip():
            return self._closed(state, rest)
        return self._closed(state)

    def _closed(self, state: tuple[int, str, bool], last: str | None = None) -> bool:
        depth, quote, _ = state
        if depth > self.start[0] or quote not in ("", self.start[1]):
            return False
        code = (self.last if last is None else last).split("#")[0].rstrip()
        return not (code.endswith((":", "\\")) or code.lstrip().startswith("@"))


def _last_line(code: str) -> str:
    return next((ln for ln in reversed(code.splitlines()) if ln.strip()), "")
