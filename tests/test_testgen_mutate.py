"""Tests of the mutation-testing mutator: which sites it finds and the sources it builds.

Pure Python on a hand-written sample module: no model, no sandbox. Executing
mutants with `exec` is safe here because we wrote every line they contain.
"""

from __future__ import annotations

import ast

import pytest

from codelm.testgen.mutate import Mutant, find_function, mutants

SAMPLE = '''\
"""A sample module: every mutation operator has a site below."""

import functools

SCALE = 3  # a module constant: never mutated


def add(a, b):
    """Return the sum of a and b."""
    return a + b


def kitchen(xs, flag=True):
    # This comment is lost in every mutant of kitchen.
    total = 0
    for x in xs:
        if x > 3 and not flag:
            break
        while x < 0:
            x += 1
        total = total * 2 ** x % 7 - x // 2 + (x & 1 | 2 ^ 3) + (x << 1 >> 1) + -x / 4
        if x in (None, "a", b"b", 1.5) or x is None:
            continue
    label = "big" if total >= 100 else ""
    return label, total <= 5, total == 6, total != 7, x not in xs, x is not None, total < 9, False, b""


class Account:
    """Holds money."""

    rate = 2

    @functools.lru_cache(maxsize=128)
    def interest(self, amount: int = 100) -> int:
        """Interest owed on `amount`.

        Multi-line, to check that its text survives re-indenting.
        """
        if amount <= 0:
            return 0
        return amount * self.rate // 100

    def outer(self, n):
        def inner(m):
            return m - 1

        return inner(n)


def noop(x, y=1):
    """Nothing to mutate here."""
    x = y
    return None
'''

ALL_OPERATORS = {"arith", "augassign", "compare", "boolop", "not", "neg", "constant", "return", "if", "break"}


def _span(source: str, qualname: str) -> tuple[int, int]:
    """The target's first line (its first decorator's) and last line, 1-based."""
    func = find_function(ast.parse(source), qualname)
    return min([d.lineno for d in func.decorator_list] + [func.lineno]), func.end_lineno


def _run(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<mutant>", "exec"), namespace)
    return namespace


def _assert_only_span_changed(original: str, mutant: Mutant, qualname: str) -> None:
    start, end = _span(original, qualname)
    before = original.splitlines(keepends=True)
    after = mutant.source.splitlines(keepends=True)
    tail = before[end:]
    assert after[: start - 1] == before[: start - 1]
    assert after[len(after) - len(tail) :] == tail
    assert start <= mutant.line <= end


def test_every_operator_kind_is_produced():
    found = mutants(SAMPLE, "kitchen", limit=1000) + mutants(SAMPLE, "Account.interest", limit=1000)
    assert {m.operator for m in found} == ALL_OPERATORS
    descriptions = {m.description.split(": ", 1)[1] for m in found}
    for expected in [
        "`x += 1` -> `x -= 1`",
        "`x > 3` -> `x >= 3`",
        "`x < 0` -> `x <= 0`",
        "`total >= 100` -> `total > 100`",
        "`total <= 5` -> `total < 5`",
        "`total == 6` -> `total != 6`",
        "`total != 7` -> `total == 7`",
        "`x not in xs` -> `x in xs`",
        "`x is not None` -> `x is None`",
        "`not flag` -> `flag`",
        "`-x` -> `x`",
        "`break` -> `continue`",
        "`continue` -> `break`",
        "`False` -> `True`",
        "`'a'` -> `''`",
        "`''` -> `'XX'`",
        "`b'b'` -> `b''`",
        "`b''` -> `b'XX'`",
        "`1.5` -> `2.5`",
        "`100` -> `101`",
        "`amount <= 0` -> `not amount <= 0`",
        "`return amount * self.rate // 100` -> `return changed(amount * self.rate // 100)`",
        # One per arithmetic operator, with its replacement.
        "`total * 2 ** x` -> `total / 2 ** x`",
        "`-x / 4` -> `-x * 4`",
        "`x // 2` -> `x * 2`",
        "`total * 2 ** x % 7` -> `total * 2 ** x // 7`",
        "`2 ** x` -> `2 * x`",
        "`total * 2 ** x % 7 - x // 2` -> `total * 2 ** x % 7 + x // 2`",
        "`x & 1` -> `x | 1`",
        "`x & 1 | 2 ^ 3` -> `x & 1 & (2 ^ 3)`",
        "`2 ^ 3` -> `2 & 3`",
        "`x << 1` -> `x >> 1`",
        "`x << 1 >> 1` -> `x << 1 << 1`",
    ]:
        assert expected in descriptions, expected
    assert "line 10: `a + b` -> `a - b`" in {m.description for m in mutants(SAMPLE, "add")}


@pytest.mark.parametrize("qualname", ["add", "kitchen", "Account.interest", "Account.outer"])
def test_mutant_sources_parse_and_differ_only_inside_the_target(qualname):
    found = mutants(SAMPLE, qualname, limit=1000)
    assert found
    assert [m.index for m in found] == sorted({m.index for m in found})
    for mutant in found:
        ast.parse(mutant.source)
        assert mutant.source != SAMPLE
        assert mutant.description.startswith(f"line {mutant.line}: ")
        _assert_only_span_changed(SAMPLE, mutant, qualname)


def test_method_keeps_indentation_and_the_class_intact():
    original = ast.parse(SAMPLE)
    account = next(n for n in original.body if isinstance(n, ast.ClassDef))
    for mutant in mutants(SAMPLE, "Account.interest", limit=1000):
        assert "\n    @functools.lru_cache(maxsize=128)\n    def interest(" in mutant.source
        tree = ast.parse(mutant.source)
        assert [ast.dump(n) for n in tree.body if not isinstance(n, ast.ClassDef)] == [
            ast.dump(n) for n in original.body if not isinstance(n, ast.ClassDef)
        ]
        mutated = next(n for n in tree.body if isinstance(n, ast.ClassDef))
        assert [type(n) for n in mutated.body] == [type(n) for n in account.body]
        untouched = [ast.dump(n) for n in mutated.body if getattr(n, "name", "") != "interest"]
        assert untouched == [ast.dump(n) for n in account.body if getattr(n, "name", "") != "interest"]
        assert _run(mutant.source)["Account"].rate == 2


def test_docstring_decorators_defaults_and_annotations_are_not_mutated():
    original = find_function(ast.parse(SAMPLE), "Account.interest")
    for mutant in mutants(SAMPLE, "Account.interest", limit=1000):
        func = find_function(ast.parse(mutant.source), "Account.interest")
        assert ast.get_docstring(func, clean=False) == ast.get_docstring(original, clean=False)
        assert [ast.dump(d) for d in func.decorator_list] == [ast.dump(d) for d in original.decorator_list]
        assert ast.dump(func.args) == ast.dump(original.args)
        assert ast.dump(func.returns) == ast.dump(original.returns)
        assert _run(mutant.source)["Account"].interest.__doc__ == _run(SAMPLE)["Account"].interest.__doc__
    docstring_end = original.body[0].end_lineno
    assert all(m.line > docstring_end for m in mutants(SAMPLE, "Account.interest"))


def test_nested_functions_are_mutated():
    found = mutants(SAMPLE, "Account.outer")
    results = {m.description: _run(m.source)["Account"]().outer(10) for m in found}
    assert results[next(d for d in results if "`m - 1` -> `m + 1`" in d)] == 11
    assert 10 in results.values()  # outer(10) is 9; the return mutant adds 1


def test_limit_picks_a_deterministic_subset():
    everything = {m.index: m for m in mutants(SAMPLE, "kitchen", limit=1000)}
    assert len(everything) > 10
    first = mutants(SAMPLE, "kitchen", limit=7, seed=3)
    assert first == mutants(SAMPLE, "kitchen", limit=7, seed=3)
    assert len(first) == 7
    assert [m.index for m in first] == sorted(m.index for m in first)
    assert all(everything[m.index] == m for m in first)
    assert len(mutants(SAMPLE, "kitchen", limit=len(everything) + 5)) == len(everything)


def test_mutants_change_behaviour():
    assert _run(SAMPLE)["add"](2, 3) == 5
    results = {m.operator: _run(m.source)["add"](2, 3) for m in mutants(SAMPLE, "add")}
    assert results == {"arith": -1, "return": 6}  # the return mutant adds 1 to a number
    interests = [_run(m.source)["Account"]().interest(250) for m in mutants(SAMPLE, "Account.interest")]
    assert _run(SAMPLE)["Account"]().interest(250) == 5
    assert any(value != 5 for value in interests)


def test_find_function():
    nested = "\n\nclass Outer:\n    class Inner:\n        def m(self):\n            return 1\n"
    tree = ast.parse(SAMPLE + nested)
    assert find_function(tree, "add").name == "add"
    assert find_function(tree, "Account.interest").name == "interest"
    assert find_function(tree, "Outer.Inner.m").name == "m"
    for missing in ["missing", "Account.missing", "Missing.interest", "SCALE", "Account", "add.inner"]:
        with pytest.raises(KeyError):
            find_function(tree, missing)
    with pytest.raises(KeyError):
        mutants(SAMPLE, "missing")


def test_no_sites_gives_no_mutants():
    assert mutants(SAMPLE, "noop") == []
    assert mutants("def f(x):\n    pass\n", "f") == []


def test_format_specs_are_not_mutated_and_crlf_is_kept():
    source = 'X = 1\r\n\r\nclass C:\r\n    def f(self, x):\r\n        return f"v={x:>10}"\r\n\r\nY = 2\r\n'
    found = mutants(source, "C.f")
    assert {m.description.split(": ", 1)[1] for m in found} == {
        "`return f'v={x:>10}'` -> `return changed(f'v={x:>10}')`",
        "`'v='` -> `''`",
    }
    for mutant in found:
        assert mutant.source.startswith("X = 1\r\n\r\nclass C:\r\n    def f(self, x):\r\n        return ")
        assert mutant.source.endswith("\r\n\r\nY = 2\r\n")
        assert "\n" not in mutant.source.replace("\r\n", "")
    assert {_run(m.source)["C"]().f(7) for m in found} == {"v=         ", "         7"}


def test_unchanged_mutants_are_dropped():
    # 1e300 + 1 == 1e300: that constant mutant unparses to the original.
    assert [m.description for m in mutants("def f():\n    return 1e300\n", "f")] == [
        "line 2: `return 1e+300` -> `return changed(1e+300)`"
    ]


def test_function_at_the_end_of_a_file_without_a_newline():
    source = "import os\n\n\ndef f(a):\n    return a + 1"
    found = mutants(source, "f")
    assert [m.source for m in found][1:] == [
        "import os\n\n\ndef f(a):\n    return a - 1",
        "import os\n\n\ndef f(a):\n    return a + 2",
    ]
    assert found[0].source.startswith("import os\n\n\ndef f(a):\n    return (lambda v:")
    assert not found[0].source.endswith("\n")
    assert _run(found[0].source)["f"](1) == 3  # 1 + 1, changed by one
