"""The filter chain's first two steps, read from the test's syntax alone (`ast`, never run).

1. The candidate parses, and it calls the target: `f(...)`, `mod.f(...)`, or, for a
   method, `anything.meth(...)`.
2. It asserts on what the target did: an `assert` whose expression calls the target
   or reads a name that holds its result, or a `pytest.raises` block around a call.
   A name "holds its result" when it is assigned from an expression that calls the
   target or reads such a name; a method call `obj.meth(...)` also marks `obj`, since
   a method's effect is often on its object (`s.push(1); assert s.size() == 1`).

`split_candidates` cuts a file of tests (the `--candidates` form) into its shared
header (imports, helpers, fixtures) and its top-level `test_*` functions.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass

from codelm.testgen.targets import Target


@dataclass(frozen=True)
class Parsed:
    node: ast.FunctionDef | None  # None when it does not parse as one function
    error: str = ""


def parse_test(source: str) -> Parsed:
    """One test function's source -> its node, or why it is not one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError) as e:
        where = f"line {e.lineno}: {e.msg}" if isinstance(e, SyntaxError) else str(e)
        return Parsed(None, f"does not parse ({where})")
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(tree.body) != 1 or len(fns) != 1:
        return Parsed(None, "is not one test function")
    if not fns[0].name.startswith("test"):
        return Parsed(None, f"{fns[0].name} is not a test name (test_...)")
    return Parsed(fns[0])


def _calls(node: ast.AST, target: Target) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if target.cls is None and isinstance(f, ast.Name) and f.id == target.name:
                return True
            if isinstance(f, ast.Attribute) and f.attr == target.name:
                return True
    return False


def calls_target(fn: ast.FunctionDef, target: Target) -> bool:
    return any(_calls(stmt, target) for stmt in fn.body)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _targets_of(stmt: ast.stmt) -> list[ast.expr]:
    if isinstance(stmt, ast.Assign):
        return stmt.targets
    if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
        return [stmt.target]
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return [stmt.target]
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return [i.optional_vars for i in stmt.items if i.optional_vars is not None]
    return []


def _tainted(fn: ast.FunctionDef, target: Target) -> set[str]:
    """Names that hold the target's result (or, for methods, the object it acted on)."""
    tainted: set[str] = set()
    for _ in range(3):  # a few passes reach names derived from derived names
        for stmt in ast.walk(fn):
            if not isinstance(stmt, ast.stmt):
                continue
            value = getattr(stmt, "value", None) or getattr(stmt, "iter", None)
            if isinstance(stmt, (ast.With, ast.AsyncWith)):
                value = ast.Tuple([i.context_expr for i in stmt.items])
            if value is not None and (_calls(value, target) or _names(value) & tainted):
                for t in _targets_of(stmt):
                    tainted |= _names(t)
        for call in ast.walk(fn):  # obj.meth(...) marks obj
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == target.name
            ):
                tainted |= _names(call.func.value)
    return tainted


def _is_raises(item: ast.withitem) -> bool:
    expr = item.context_expr
    return (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, (ast.Attribute, ast.Name))
        and (getattr(expr.func, "attr", None) == "raises" or getattr(expr.func, "id", None) == "raises")
    )


def asserts_on_target(fn: ast.FunctionDef, target: Target) -> bool:
    tainted = _tainted(fn, target)
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert) and (_calls(node.test, target) or _names(node.test) & tainted):
            return True
        raises = isinstance(node, (ast.With, ast.AsyncWith)) and any(_is_raises(i) for i in node.items)
        if raises and any(_calls(stmt, target) for stmt in node.body):
            return True
    return False


def attribute(fn: ast.FunctionDef, targets: list[Target]) -> Target | None:
    """The target a test is about: the first called inside an `assert`, else the first it
    asserts on, else the first it calls (`s.push(1); assert s.pop() == 1` is about pop)."""
    asserted = [n.test for n in ast.walk(fn) if isinstance(n, ast.Assert)]
    for test in (
        lambda t: any(_calls(a, t) for a in asserted),
        lambda t: asserts_on_target(fn, t),
        lambda t: calls_target(fn, t),
    ):
        hit = next((t for t in targets if test(t)), None)
        if hit is not None:
            return hit
    return None


def dedup_key(fn: ast.FunctionDef) -> str:
    """The test's meaning up to its name: two candidates with one key are duplicates."""
    body = ast.Module(body=fn.body, type_ignores=[])
    return ast.dump(body, annotate_fields=False)


def split_candidates(source: str) -> tuple[str, list[str]]:
    """A test file -> (its header: every top-level statement that is not a test, in order;
    the source of each top-level `test_*` function, decorators included)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    header, tests, last = [], [], 0
    for node in tree.body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        text = "".join(lines[first - 1 : node.end_lineno])
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            tests.append(text)
            continue
        if header and first > last + 1:  # the blank lines between groups, as written
            header.append("\n" * min(first - last - 1, 2))
        header.append(text if text.endswith("\n") else text + "\n")
        last = node.end_lineno or first
    return "".join(header), tests
