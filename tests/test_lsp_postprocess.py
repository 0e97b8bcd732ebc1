"""Golden cases of the editor's post-processing: raw completion -> ghost text and its range.

Each document marks the cursor with `█`. Expected: None (show nothing) or (text, start,
end), positions (line, character), end past start where the completion re-types text
after the cursor."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codelm.lsp.postprocess import InlineEdit, allows_multiline, opens_block, postprocess

CURSOR = "█"


def case(kind: str, doc: str, raw: str, expected, multiline: bool = True, language: str = "python"):
    return pytest.param(doc, raw, multiline, language, expected, id=kind)


GOLDEN = [
    # block opener: a Python body after `def ...:`
    case("opener-def", "def f(x):█\n", "\n    return x * 2\n", ("\n    return x * 2", (0, 9), (0, 9))),
    # block end: the next top-level def ends the body
    case(
        "block-end-toplevel",
        "def f(x):█\n",
        "\n    return x\n\n\ndef g():\n    pass\n",
        ("\n    return x", (0, 9), (0, 9)),
    ),
    # block end: a sibling method ends the method's body
    case(
        "block-end-method",
        "class A:\n    def f(self):█\n",
        "\n        return 1\n    def g(self):\n        pass",
        ("\n        return 1", (1, 16), (1, 16)),
    ),
    # indentation re-based: the model wrote the body from its own column 0
    case(
        "reindent-rebase",
        "class A:\n    def f(self):█\n",
        "\n    x = 1\n    return x",
        ("\n        x = 1\n        return x", (1, 16), (1, 16)),
    ),
    # indentation re-based: nested lines keep their depth relative to the body
    case(
        "reindent-nested",
        "class A:\n    def f(self):█\n",
        "\n    if self.ok:\n        return 1\n    return 0",
        ("\n        if self.ok:\n            return 1\n        return 0", (1, 16), (1, 16)),
    ),
    # indentation re-based on a two-space document
    case("reindent-two-spaces", "def f():\n  if x:█\n", "\n  return 1", ("\n    return 1", (1, 7), (1, 7))),
    # tabs: a tab-indented document gets tabs for the model's spaces
    case(
        "tabs-from-spaces",
        "class A:\n\tdef f(self):█\n",
        "\n        return 1",
        ("\n\t\treturn 1", (1, 13), (1, 13)),
    ),
    # tabs: re-based and converted at once
    case("tabs-rebase", "if x:\n\tfor y in z:█\n", "\n    print(y)", ("\n\t\tprint(y)", (1, 12), (1, 12))),
    # tabs: a space-indented document gets spaces for the model's tabs
    case(
        "spaces-from-tabs", "def f():\n    if x:█\n", "\n\t\treturn 1", ("\n        return 1", (1, 9), (1, 9))
    ),
    # indentation re-typed: the model repeated the blank line's indentation
    case("retyped-indent", "def f():\n    █\n", "    return 1", ("return 1", (1, 4), (1, 4))),
    # indentation re-based for a block the completion's first line opens
    case(
        "reindent-own-block",
        "def f():\n    █\n",
        "for i in range(3):\n    print(i)\nreturn 0",
        ("for i in range(3):\n        print(i)", (1, 4), (1, 4)),
    ),
    # mid-line: text after the cursor keeps the completion on one line
    case("mid-line-single", "x = foo(█, 2)\n", "a\nb = 3", ("a", (0, 8), (0, 8))),
    # mid-line: the completion re-types the rest of the line, which it replaces
    case("mid-line-retyped-rest", "x = foo(█, 2)\n", "a, 2)", ("a, 2)", (0, 8), (0, 12))),
    # mid-line: a completion that only looks like the rest (its own brackets) replaces nothing
    case("mid-line-own-brackets", "foo(█, 2)\n", "g(1, 2)", ("g(1, 2)", (0, 4), (0, 4))),
    # mid-line: a word finished
    case("mid-line-word", "retu█\n", "rn x", ("rn x", (0, 4), (0, 4))),
    # bracket already closed: the range covers the suffix's `)`
    case("bracket-closed", "foo(█)\n", "x, y)", ("x, y)", (0, 4), (0, 5))),
    # bracket already closed, the completion goes on after it
    case("bracket-closed-then-more", "x = foo(█)\n", "a).bar()", ("a).bar()", (0, 8), (0, 9))),
    # bracket already closed: two closers re-typed
    case("bracket-closed-nested", "print(foo(█))\n", "x))", ("x))", (0, 10), (0, 12))),
    # bracket already closed: only the inner one was closed in the document
    case("bracket-partly-closed", "print(foo(█)\n", "x))", ("x))", (0, 10), (0, 11))),
    # bracket pair of the completion's own: nothing of the suffix replaced
    case("bracket-own-pair", "foo(█)\n", "bar()", ("bar()", (0, 4), (0, 4))),
    # bracket already closed, and nothing else: nothing to show
    case("bracket-only-closer", "foo(█)\n", ")", None),
    # bracket already closed by a multi-line argument list
    case(
        "bracket-closed-multiline",
        "x = foo(█)\n",
        "\n    a,\n    b,\n)\ny = 2\n",
        ("\n    a,\n    b,\n)", (0, 8), (0, 9)),
    ),
    # bracket: a dict's `:` inside braces is no block opener, so one line
    case("bracket-dict-colon", 'd = {"a":█}\n', " 1}\nx = 2", (" 1}", (0, 9), (0, 10))),
    # bracket opener at the end of a line: the items, the closer, then stop
    case(
        "bracket-open-list",
        "x = [█\n",
        "\n    1,\n    2,\n]\nprint(x)",
        ("\n    1,\n    2,\n]", (0, 5), (0, 5)),
    ),
    # brace block in C: the body and its `}` replace the editor's auto-closed `}`
    case(
        "brace-block-c",
        "int f() {█}\n",
        "\n  return 1;\n}\n\nint g() {",
        ("\n  return 1;\n}", (0, 9), (0, 10)),
        language="c",
    ),
    # suffix duplication: the `}` on the next line is not typed again
    case(
        "suffix-dup-brace",
        "function f() {█\n}\n",
        "\n  return 1;\n}\n",
        ("\n  return 1;", (0, 14), (0, 14)),
        language="javascript",
    ),
    # suffix duplication: the tail re-types the next line
    case(
        "suffix-dup-tail",
        "def f():\n    █\n    return x\n",
        "y = 1\n    return x\n",
        ("y = 1", (1, 4), (1, 4)),
    ),
    # suffix duplication: the whole completion is the next line
    case("suffix-dup-whole", "def f():\n    █\n    return x\n", "return x", None),
    # suffix duplication across blank lines of the suffix
    case(
        "suffix-dup-after-blanks",
        "def f(a):█\n\n\n    return a\n",
        "\n    a += 1\n    return a",
        ("\n    a += 1", (0, 9), (0, 9)),
    ),
    # single line: after a finished statement, no new lines
    case("single-after-statement", "x = 1█\n", " + 2\ny = 3", (" + 2", (0, 5), (0, 5))),
    # single line: the caller asked for one line, so an opener's body is cut
    case("single-flag-opener", "def f(x):█\n", "\n    return x", None, multiline=False),
    # single line: the caller asked for one line on a blank line
    case(
        "single-flag-blank",
        "def f():\n    █\n",
        "a = 1\n    b = 2",
        ("a = 1", (1, 4), (1, 4)),
        multiline=False,
    ),
    # single line: `:` opens blocks in Python only
    case("single-colon-not-python", "case 1:█\n", "\n  break;", None, language="javascript"),
    # blank line: several lines at the cursor's level, then block end at a dedent
    case(
        "blank-line-block-end",
        "def f():\n    █\n",
        "a = 1\n    b = 2\n\nprint(f())",
        ("a = 1\n    b = 2", (1, 4), (1, 4)),
    ),
    # blank line at top level: the block the first line opens ends the completion
    case(
        "blank-line-toplevel-def",
        "import os\n█\n",
        "def f():\n    return 1\n\n\ndef g():\n    pass",
        ("def f():\n    return 1", (1, 0), (1, 0)),
    ),
    # block end: never inside a string, whatever its lines' indentation
    case(
        "block-end-string",
        "def f():█\n",
        '\n    s = """\nraw text\n"""\n    return s\nx = 1',
        ('\n    s = """\nraw text\n"""\n    return s', (0, 8), (0, 8)),
    ),
    # blank tail: trailing whitespace-only lines go
    case("blank-tail", "def f(x):█\n", "\n    return x\n\n   \n", ("\n    return x", (0, 9), (0, 9))),
    # empty result: only whitespace
    case("empty-whitespace", "x = █\n", "   \n  ", None),
    # empty result: nothing at all
    case("empty-raw", "x = █", "", None),
    # line endings: a CRLF document gets CRLF
    case("crlf", "def f(x):█\r\n", "\r\n    return x\r\n", ("\r\n    return x", (0, 9), (0, 9))),
]


@pytest.mark.parametrize(("doc", "raw", "multiline", "language", "expected"), GOLDEN)
def test_golden(doc: str, raw: str, multiline: bool, language: str, expected) -> None:
    prefix, suffix = doc.split(CURSOR)
    got = postprocess(prefix, suffix, raw, multiline=multiline, language=language)
    assert got == (None if expected is None else InlineEdit(*expected))


def test_golden_set_is_large() -> None:
    assert len(GOLDEN) >= 30


def apply(doc: str, edit: InlineEdit) -> str:
    """The document after the edit (edits here stay on the cursor line)."""
    lines = doc.replace(CURSOR, "").split("\n")
    (line, start), (_, end) = edit.start, edit.end
    lines[line] = lines[line][:start] + edit.text + lines[line][end:]
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("doc", "raw", "result"),
    [
        ("foo(█)\n", "x, y)", "foo(x, y)\n"),
        ("print(foo(█))\n", "x))", "print(foo(x))\n"),
        ("x = foo(█)\n", "\n    a,\n)", "x = foo(\n    a,\n)\n"),
    ],
)
def test_brackets_end_up_once(doc: str, raw: str, result: str) -> None:
    prefix, suffix = doc.split(CURSOR)
    assert apply(doc, postprocess(prefix, suffix, raw)) == result


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("def f():█\n", True),  # Python block opener
        ("foo(█\n", True),  # open bracket
        ("foo(█)\n", True),  # only closers after the cursor
        ("def f():\n    █\n", True),  # blank line
        ("x = 1█\n", False),  # a finished statement
        ("foo(█, 2)\n", False),  # code after the cursor
        ('d = {"a":█\n', False),  # a dict's colon
    ],
)
def test_allows_multiline(doc: str, expected: bool) -> None:
    prefix, suffix = doc.split(CURSOR)
    assert allows_multiline(prefix, suffix) is expected


def test_opens_block_colon_is_python_only() -> None:
    assert opens_block("if x:") and not opens_block("if x:", "javascript")
    assert opens_block("if (x) {", "javascript")


def test_cursor_inside_docstring_does_not_cut() -> None:
    # The cursor line begins inside a string: its dedented lines are text, not a block end.
    prefix = 'def f():\n    """Doc.\n    '
    raw = 'More.\nAt column zero.\n    """\n    return 1\nx = 2'
    got = postprocess(prefix, "\n", raw)
    assert got == InlineEdit('More.\nAt column zero.\n    """\n    return 1', (2, 4), (2, 4))


CODE = st.text(alphabet="ab :()[]{}\"'#\n\t    ", max_size=40)


@settings(max_examples=300, deadline=None)
@given(prefix=CODE, suffix=CODE, raw=CODE, multiline=st.booleans())
def test_any_input_gives_a_sane_edit(prefix: str, suffix: str, raw: str, multiline: bool) -> None:
    got = postprocess(prefix, suffix, raw, multiline=multiline)
    if got is None:
        return
    line, col = prefix.count("\n"), len(prefix) - prefix.rfind("\n") - 1
    rest = suffix.split("\n", 1)[0]
    assert got.start == (line, col) and got.end[0] == line and col <= got.end[1] <= col + len(rest)
    assert got.text.strip() and got.text == got.text.rstrip()
    assert multiline or "\n" not in got.text
