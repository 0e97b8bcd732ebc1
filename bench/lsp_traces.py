"""Keystroke traces for bench/lsp.py, and what a shown completion is worth: pure functions.

A trace retypes lines of a held-out file (the document opens without them); positions are
LSP's UTF-16 units where they go on the wire. `accepted` and `duplicates_suffix` are the
bench's two measures of a completion shown.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import math
import random
from dataclasses import dataclass
from pathlib import Path

CLOSERS, OPENERS = ")]}", "([{"


# ---------- pure functions: documents, traces, measures ----------


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def from_utf16(line: str, units: int) -> int:
    """The code-point column of a UTF-16 column on `line`."""
    n = 0
    for i, ch in enumerate(line):
        if n >= units:
            return i
        n += 2 if ord(ch) > 0xFFFF else 1
    return len(line)


def offset(text: str, line: int, col: int) -> int:
    """The index in `text` of (line, column), both 0-based code points."""
    i = 0
    for _ in range(line):
        i = text.index("\n", i) + 1
    return i + col


def apply_edit(text: str, start: tuple[int, int], end: tuple[int, int], new: str) -> str:
    return text[: offset(text, *start)] + new + text[offset(text, *end) :]


def after_insert(start: tuple[int, int], new: str) -> tuple[int, int]:
    """The (line, column) right after `new` inserted at `start`."""
    parts = new.split("\n")
    if len(parts) == 1:
        return start[0], start[1] + len(new)
    return start[0] + len(parts) - 1, len(parts[-1])


def typing_sites(text: str, lines: int) -> list[int]:
    """Lines where a statement and `lines` consecutive code lines of a function body start:
    no blank or comment line among them, none inside a docstring or a multi-line string."""
    from codelm.evaluate.line_completion import body_lines

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    strings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.end_lineno:
            strings.update(range(node.lineno - 1, node.end_lineno) if node.end_lineno > node.lineno else ())
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant | ast.JoinedStr):
            strings.update(range(node.lineno - 1, (node.end_lineno or node.lineno)))
    src = text.split("\n")
    ok = {n for n in body_lines(text) if n not in strings and 4 <= len(src[n].strip()) <= 100}
    starts = {node.lineno - 1 for node in ast.walk(tree) if isinstance(node, ast.stmt)}
    return [n for n in sorted(ok & starts) if all(n + i in ok for i in range(lines))]


@dataclass(frozen=True)
class Key:
    text: str  # inserted at the cursor: one character, or "\n" and the next line's indentation
    pause: float  # seconds until the next keystroke
    rest: str  # the file's real text from the cursor (after this key) to the end of its line
    next_line: str | None  # the real line after the cursor's, still untyped; None: none is


@dataclass(frozen=True)
class Trace:
    path: str
    line: int  # 0-based line where typing starts
    start: str  # the document as opened
    keys: tuple[Key, ...]

    @property
    def cursor(self) -> tuple[int, int]:
        line = self.start.split("\n")[self.line]
        return self.line, len(line)


def pauses(
    n_keys: int, line_ends: set[int], rng: random.Random, cps: float, line_pause: float
) -> list[float]:
    """Seconds after each keystroke: log-normal around 1/cps (mean 1/cps), within [0.03, 2],
    and `line_pause` (x0.5-1.5) more after a line's last character."""
    sigma = 0.5
    mu = math.log(1 / cps) - sigma**2 / 2
    out = [min(2.0, max(0.03, rng.lognormvariate(mu, sigma))) for _ in range(n_keys)]
    for i in line_ends:
        out[i] += line_pause * rng.uniform(0.5, 1.5)
    return out


def make_trace(
    path: str, text: str, site: int, lines: int, rng: random.Random, cps: float, line_pause: float
) -> Trace:
    """Retyping lines [site, site+lines) of `text`: the document opens without them (the
    first one's indentation left), keys type each line's code, Enter brings the next indent."""
    src = text.split("\n")
    typed = [line.rstrip() for line in src[site : site + lines]]
    indents = [line[: len(line) - len(line.lstrip())] for line in typed]
    start = "\n".join(src[:site] + [indents[0]] + src[site + lines :])
    texts, rests, nexts, ends = [], [], [], set()
    for j, line in enumerate(typed):
        body = line[len(indents[j]) :]
        following = typed[j + 1] if j + 1 < len(typed) else None
        if j:
            texts.append("\n" + indents[j])
            rests.append(body)
            nexts.append(following)
        for i, ch in enumerate(body):
            texts.append(ch)
            rests.append(body[i + 1 :])
            nexts.append(following)
        ends.add(len(texts) - 1)
    waits = pauses(len(texts), ends, rng, cps, line_pause)
    keys = tuple(Key(*k) for k in zip(texts, waits, rests, nexts, strict=True))
    return Trace(path, site, start, keys)


def accepted(ghost: str, rest: str, next_line: str | None) -> bool:
    """Whether the editor's user would take the ghost text's first line: the real rest of the
    cursor's line (rstripped, non-empty); a ghost starting with a newline, at a line's end,
    must bring the real next line."""
    if ghost.startswith("\n"):
        if rest.strip() or next_line is None or not next_line.strip():
            return False
        return ghost.split("\n")[1].rstrip() == next_line.rstrip()
    first = ghost.split("\n")[0].rstrip()
    return bool(first.strip()) and first == rest.rstrip()


def similarity(ghost: str, rest: str, next_line: str | None) -> float:
    """How close the ghost's first line is to the real one (difflib's ratio, 0 to 1), compared
    as `accepted` compares them: a finer measure than exact acceptance, for weak models."""
    if ghost.startswith("\n"):
        if rest.strip() or next_line is None:
            return 0.0
        mine, real = ghost.split("\n")[1].strip(), next_line.strip()
    else:
        mine, real = ghost.split("\n")[0].rstrip(), rest.rstrip()
    return difflib.SequenceMatcher(None, mine, real, autojunk=False).ratio() if mine or real else 0.0


def min_depth(s: str) -> int:
    """The lowest bracket depth reached along `s` (0 at its start), strings and comments skipped."""
    depth = low = 0
    quote = ""
    for i, ch in enumerate(s):
        if quote:
            if ch == quote and s[i - 1] != "\\" or ch == "\n":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            quote = "\n"
        elif ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            depth -= 1
            low = min(low, depth)
    return low


def duplicates_suffix(text: str, start: tuple[int, int], end: tuple[int, int], insert: str) -> bool:
    """Whether `insert` over [start, end) of `text` repeats what follows it: the line after the
    one where the insert ends equals that line (stripped, non-empty); or the insert ends with
    closing brackets, the text after the range starts with one, and the line then closes
    more brackets than it did (`foo(x|)` + `y)` does, `foo(|)` + `bar()` does not)."""
    new = apply_edit(text, start, end, insert)
    last, col = after_insert(start, insert)
    lines = new.split("\n")
    line = lines[last]
    following = lines[last + 1].strip() if last + 1 < len(lines) else None
    if insert.split("\n")[-1].strip() and line.strip() and following == line.strip():
        return True
    after = line[col:]
    if not (insert and after and insert[-1] in CLOSERS and after[0] in CLOSERS):
        return False
    head = text.split("\n")[start[0]][: start[1]]
    old = text[offset(text, *start) : offset(text, *end)]
    return min_depth(head + insert + after) < min_depth(head + old + after)


def ghost_of(line: str, start_col: int, cursor_col: int, insert: str) -> str | None:
    """What an item shows after the cursor: its insertText less the typed text its range
    starts with (VS Code's rule); None when it does not start with that text."""
    typed = line[start_col:cursor_col]
    return insert[len(typed) :] if insert.startswith(typed) else None


# ---------- choosing held-out files ----------


def choose_traces(root: Path, args: argparse.Namespace) -> list[Trace]:
    """`--n-files` files under `root` with typing sites, `--sites` traces each, seeded."""
    rng = random.Random(args.seed)
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    rng.shuffle(files)
    out: list[Trace] = []
    used = 0
    for path in files:
        if used == args.n_files:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        sites = typing_sites(text, args.lines)
        picks: list[int] = []
        for n in rng.sample(sites, len(sites)):  # far enough apart that traces do not overlap
            if all(abs(n - m) > args.lines + 2 for m in picks):
                picks.append(n)
            if len(picks) == args.sites:
                break
        if not picks:
            continue
        used += 1
        for n in sorted(picks):
            out.append(make_trace(str(path.resolve()), text, n, args.lines, rng, args.cps, args.line_pause))
    if not out:
        raise SystemExit(f"no Python file under {root} has function bodies to type")
    return out
