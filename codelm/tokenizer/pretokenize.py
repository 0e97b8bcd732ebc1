"""The code pre-tokenizer: one regular expression that cuts text into the pieces BPE may merge within.

BPE never merges across a piece boundary, so the pattern decides what can become
a token:

- a newline (or a run of blank lines) together with the indentation after it is
  one piece, and indentation is never joined to the code that follows it; a run
  of spaces or tabs inside a line (trailing whitespace, alignment) is a piece
  of its own, so whitespace is never merged into a word;
- an identifier is one piece, with underscores and mixed case inside it, so BPE
  merges across snake_case and camelCase boundaries exactly where the merge is
  frequent enough to pay for a vocabulary slot; a dotted name (`os.path.join`)
  is one piece too; the piece may start with one space, a `.`, a quote or `# `;
  a space between two names always starts a new piece (measured: letting two
  names joined by a space be one piece, `return self`, gave 11.1% fewer tokens
  than plain BPE at 16k instead of 8.7%, but the demo's 5-minute model at 4k
  then scored 1.671 bits per byte on unseen code instead of 1.588);
- brackets, commas, colons, semicolons and quotes form runs (`()`, `):`, `'),`)
  that never include a letter, digit or operator character, nor a newline
  (measured: joining a block opener's `):` with the newline and indentation after
  it, `):\n    `, gave 10.6% fewer tokens than plain BPE at 16k, but the demo's
  5-minute model scored 1.493 bits per byte on unseen code instead of 1.401);
- multi-character operators (`==`, `**=`, `->`, `...`) are pieces of their own
  (`codelm.tokenizer.units` then makes each a single token);
- numbers are split into groups of at most three digits, left to right (`123`,
  `456`, `7`), so at most 1,110 number tokens can enter the vocabulary, however
  many numbers the corpus holds;
- a backslash escape is one piece (`\\n`, `\\\\`, `\\x41`, `\\000`), where the backslash
  was a piece of its own and its letter joined the next word (`\\nThe` -> `\\`, `nThe`);
- a string prefix joins its quote (`b'Subject`, `f"Error`), as a quote joins a name.
  These three, together, on held-out standard-library files (bench/tokenizer.py):
  8.7% -> 10.2% fewer tokens than plain BPE at 16k (digit groups alone: 9.6%), and
  the demo's 5-minute model scored the same on unseen code (1.353 against 1.355
  bits per byte, docs/quality.md).

The same pattern string runs in two engines: Oniguruma inside HF `tokenizers`
(the saved `tokenizer.json`) and Python's `re` (the fast encoder in
`encoder.py`). It therefore uses only constructs both read the same way:
explicit ASCII classes, literal code-point ranges, `\\A`, non-capturing groups and
lookahead; no `\\p{..}`, `\\s`, `\\w` or `^`, whose meanings differ. Every non-ASCII
character counts as a word character (Python identifiers may contain them; emoji
and CJK text simply join the word they touch). The pattern matches every
character, so cutting is lossless; tests check the two engines agree.

What it does not do: parse code. `#` inside a string starts a "comment" piece here,
and that is harmless, because pieces only limit merges.
"""

from __future__ import annotations

import re

from tokenizers import Regex, pre_tokenizers

# Multi-character operators, longest first so the regex alternation prefers `**=` to `**`.
# Python's, plus the few C-family ones a user's other code brings (`&&`, `=>`).
_OPERATOR_LIST = (
    "**= //= >>= <<= ... !== -> := == != <= >= ** // << >> += -= *= /= %= &= |= ^= @= && || ++ -- =>"
)
OPERATORS: tuple[str, ...] = tuple(sorted(_OPERATOR_LIST.split(" "), key=lambda op: (-len(op), op)))

_WORD = "A-Za-z_\u0080-\U0010ffff"  # word characters: ASCII letters, `_`, every non-ASCII char
_ID = f"[{_WORD}][0-9{_WORD}]*"
_NAME = rf"{_ID}(?:\.{_ID})*"  # a dotted name: `self.items.append` is one piece
_SPACE = r" \t\n\r\x0b\x0c"  # ASCII whitespace, spelled out: `\s` differs between the engines
# Runs of one repeated symbol (`-----`, `=====`, `>>>`) are rulers and prompts, not operators:
# as operators `========` would cost four `==` tokens.
_RULERS = r"-{3,}|={3,}|\*{3,}|#{3,}|~{3,}|\+{3,}|\^{3,}|<{3,}|>{3,}|/{3,}|!{3,}|\.{4,}"
_OPS = "|".join(re.escape(op) for op in OPERATORS)
# Brackets and delimiters may merge with each other (`()`, `):`, `'),`), but a run stops
# before `...` and `:=`, which are operators.
_RUN = r"(?:[()\[\]{},;'\"`]|\.(?!\.\.)|:(?!=))+"
_SYMBOL = rf"[^{_WORD}0-9{_SPACE}]"
# A backslash escape: octal, \x and \u escapes whole, else the backslash and the next character
# (`\n`, `\\`, `\.`); never a backslash before a line break, which continues a line.
_ESCAPE = r"\\[0-7]{1,3}|\\x[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\[^\n\r]"
# String prefixes (b r f u rb br fr rf), spelled as one class and an optional second letter:
# an alternative that starts with a class costs Python's `re` far less than a group does.
_PREFIX = "[bBrRfFuU][bBrRfF]?"


def _spaced(alt: str) -> list[str]:
    """`alt` and `alt` after one space. Written as two alternatives rather than ` ?(?:alt)`
    because Python's `re` skips an alternative quickly only when it starts with a literal
    or a class: this spelling makes `split` 35% faster (23 -> 31 MB/s), same pieces."""
    return [alt, " " + alt]


# Alternatives in order; the first that matches at a position wins. Identifiers come
# first, as they are the most common piece.
PATTERN = "|".join(
    [
        r"\A[ \t]+",  # indentation at the very start of the text
        # a string's prefix, its quote and the name it starts with: `b'utf`, `f"Error`
        *_spaced(rf"{_PREFIX}['\"]{_NAME}"),
        # identifiers and dotted names, bare or after one space, a quote, a `.` or `# `
        rf"{_NAME}",
        rf" {_NAME}",
        *_spaced(rf"['\"]{_NAME}"),
        rf"\.{_NAME}",
        *_spaced(rf"# ?{_NAME}"),
        _ESCAPE,
        # newline(s) plus the next line's indentation
        r"\n(?:\r?\n)*[ \t]*",
        r"\r\n(?:\r?\n)*[ \t]*",
        *_spaced(_RUN),
        *_spaced(f"(?:{_RULERS})"),
        *_spaced(f"(?:{_OPS})"),
        *_spaced("[0-9]{1,3}"),  # digits in groups of at most three
        *_spaced(_SYMBOL),  # any other symbol
        r"[ \t]+",  # whitespace inside a line, trailing whitespace included
        r"[\s\S]",  # anything else (a lone \r, a form feed), one char at a time
    ]
)

COMPILED = re.compile(PATTERN)


def hf_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The pattern as an HF pre-tokenizer, followed by the byte-level mapping (no regex of its own)."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def split(text: str) -> list[str]:
    """The pieces of `text`, in order; `"".join(split(text)) == text` always."""
    return COMPILED.findall(text)


def _byte_to_char() -> list[str]:
    """GPT-2's byte-level alphabet, as HF's ByteLevel uses it: byte value -> printable char."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_TO_CHAR: list[str] = _byte_to_char()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_TRANSLATE = {b: c for b, c in enumerate(BYTE_TO_CHAR)}


_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_surrogates(text: str) -> str:
    """`text` with each lone surrogate (a Python `str` may hold one; it is not Unicode and has
    no UTF-8 form) replaced by U+FFFD, the replacement character."""
    return _SURROGATE.sub("\ufffd", text)


def to_byte_level(piece: str) -> str:
    """The byte-level spelling of a piece, as BPE sees it (a lone surrogate counts as U+FFFD)."""
    try:
        data = piece.encode("utf-8")
    except UnicodeEncodeError:
        data = replace_surrogates(piece).encode("utf-8")
    return data.decode("latin-1").translate(_TRANSLATE)
