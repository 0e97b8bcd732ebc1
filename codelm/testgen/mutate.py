"""Mutants of one function, for judging generated unit tests.

The unit-test writer keeps a generated test only if it fails on at least one
mutant of the function under test. `mutants` parses a module, finds the target
function by qualified name and returns one `Mutant` per mutation site in the
target's body: the whole module source with only the target's lines replaced.
Running the mutants is the caller's job, in our own sandbox.

Why not mutmut or cosmic-ray: they mutate files on disk and drive their own
test runner, whereas every mutant here must run in our sandbox, and we only
ever need mutants of one function at a time.

    operator   site                               mutation
    ---------  ---------------------------------  ------------------------------------------
    arith      binary operator                    + <-> -   * -> /   / -> *   // -> *
                                                  % -> //   ** -> *   & <-> |
                                                  ^ -> &   << <-> >>
    augassign  augmented assignment               as arith: `x += 1` -> `x -= 1`
    compare    each operator of a comparison      < -> <=   <= -> <   > -> >=   >= -> >
               (a chain has one site per op)      == <-> !=   in <-> not in   is <-> is not
    boolop     `and` / `or`                       and <-> or
    not        `not x`                            `x`
    neg        `-x`                               `x`
    constant   int, float, bool, str, bytes       n -> n + 1   True <-> False
                                                  non-empty -> empty   empty -> "XX" (b"XX")
    return     `return value`, value not None     the value changed, its type kept (below)
    if         test of `if`, `while`, `a if c`    `not (test)`
    break      `break` / `continue`               break <-> continue

The return mutant passes the value through a lambda that changes it: a bool is
negated, a number gets 1 added, a string, bytes, list or tuple loses its last
item (an empty one gains one), a set or dict is emptied (or gains an item), None
becomes 0, and any other object becomes None. Not `return None` for every value: a
test that asserts only `f(x) is not None` would kill that mutant, and such a test
is the one that catches nothing the chain exists to drop.

What it does not do: it mutates nothing outside the target's body, so not its
decorators, default values, annotations or docstring (nested functions and
classes inside the target are part of its behaviour and are mutated, except
their annotations and docstrings); it skips constants in f-string format
specs, `None`, `...` and complex numbers, and the `@` operator; it does not
try to detect equivalent mutants beyond dropping those that unparse to the
original. The target is rewritten with `ast.unparse`, so its comments and
blank lines are lost in every mutant; lines outside it stay byte-identical.
"""

from __future__ import annotations

import ast
import copy
import io
import random
import re
import tokenize
import warnings
from dataclasses import dataclass


def _swaps(pairs: str) -> dict[type[ast.AST], type[ast.AST]]:
    """{ast.Add: ast.Sub, ...} from "Add>Sub ..."."""
    return {getattr(ast, a): getattr(ast, b) for a, b in (pair.split(">") for pair in pairs.split())}


_BINOPS = _swaps(
    "Add>Sub Sub>Add Mult>Div Div>Mult FloorDiv>Mult Mod>FloorDiv Pow>Mult"
    " BitAnd>BitOr BitOr>BitAnd BitXor>BitAnd LShift>RShift RShift>LShift"
)
_CMPOPS = _swaps("Lt>LtE LtE>Lt Gt>GtE GtE>Gt Eq>NotEq NotEq>Eq In>NotIn NotIn>In Is>IsNot IsNot>Is")
# Python counts only these as line breaks; str.splitlines also splits on \f,
# \x1c, \u2028 and others, which may sit inside a line.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Mutant:
    index: int  # position among all mutation sites of the target, in traversal order
    operator: str  # a name from the table in the module docstring
    line: int  # 1-based line in the module of the mutated node
    description: str  # e.g. "line 12: `a + b` -> `a - b`"
    source: str  # the whole module source with only the target function replaced


@dataclass(frozen=True)
class _Site:
    node: ast.AST
    operator: str
    new: ast.AST  # what takes the node's place; it shares children with the original


def find_function(tree: ast.Module, qualname: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    """The function `qualname` ("f", "Cls.meth", "A.B.meth") defined directly in module or class bodies.

    Where a name is defined twice, the last definition wins, as it does when the
    module runs. Raises KeyError if there is none.
    """
    *classes, name = qualname.split(".")
    steps = [(part, ast.ClassDef) for part in classes] + [(name, ast.FunctionDef | ast.AsyncFunctionDef)]
    scope = tree
    for part, kind in steps:
        found = [n for n in scope.body if isinstance(n, kind) and n.name == part]
        if not found:
            raise KeyError(qualname)
        scope = found[-1]
    return scope


def _body(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> list[ast.stmt]:
    """The body without its docstring: mutating a docstring changes only `__doc__`."""
    return node.body[1:] if ast.get_docstring(node, clean=False) is not None else node.body


def _children(node: ast.AST) -> list[ast.AST]:
    """The nodes below `node` whose mutation can change what the target computes."""
    # Nested definitions run as part of the target, but their annotations and
    # docstrings do not; nor does a local variable's annotation.
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return [*node.decorator_list, node.args, *_body(node)]
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *node.keywords, *_body(node)]
    if isinstance(node, ast.arg):
        return []
    if isinstance(node, ast.AnnAssign):
        return [node.target] + ([node.value] if node.value else [])
    if isinstance(node, ast.FormattedValue):
        return [node.value]  # not the format spec
    return list(ast.iter_child_nodes(node))


def _sites(node: ast.AST) -> list[_Site]:
    """The mutation sites at and below `node`, a node before its children."""
    found = _sites_at(node)
    for child in _children(node):
        found += _sites(child)
    return found


def _sites_at(node: ast.AST) -> list[_Site]:
    if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in _BINOPS:
        operator = "arith" if isinstance(node, ast.BinOp) else "augassign"
        return [_Site(node, operator, _with(node, op=_BINOPS[type(node.op)]()))]
    if isinstance(node, ast.Compare):
        return [
            _Site(node, "compare", _with(node, ops=[*node.ops[:i], _CMPOPS[type(op)](), *node.ops[i + 1 :]]))
            for i, op in enumerate(node.ops)
        ]
    if isinstance(node, ast.BoolOp):
        return [
            _Site(node, "boolop", _with(node, op=ast.Or() if isinstance(node.op, ast.And) else ast.And()))
        ]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        return [_Site(node, "not" if isinstance(node.op, ast.Not) else "neg", node.operand)]
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bytes):  # bool is an int
        return [_Site(node, "constant", ast.Constant(_mutated_constant(node.value)))]
    if isinstance(node, ast.Return) and node.value is not None:
        if isinstance(node.value, ast.Constant) and node.value.value is None:
            return []  # already `return None`
        return [_Site(node, "return", ast.Return(ast.Call(_CHANGED, [node.value], [])))]
    if isinstance(node, ast.If | ast.While | ast.IfExp):
        return [_Site(node, "if", _with(node, test=ast.UnaryOp(ast.Not(), node.test)))]
    if isinstance(node, ast.Break | ast.Continue):
        return [_Site(node, "break", ast.Continue() if isinstance(node, ast.Break) else ast.Break())]
    return []


# The returned value, changed but of its type (see the docstring); a lambda, so that the
# mutant changes the target's lines only and needs no helper beside it.
_CHANGED = ast.parse(
    "lambda v: (not v) if isinstance(v, bool)"
    " else v + 1 if isinstance(v, (int, float, complex))"
    " else (v[:-1] if v else type(v)('X' if isinstance(v, str) else b'X'))"
    " if isinstance(v, (str, bytes, list, tuple))"
    " else (type(v)() if v else {None: None}) if isinstance(v, (set, frozenset, dict))"
    " else 0 if v is None else None",
    mode="eval",
).body


def _mutated_constant(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return "" if value else "XX"
    return b"" if value else b"XX"


def _with(node: ast.AST, **fields: object) -> ast.AST:
    new = copy.copy(node)
    for name, value in fields.items():
        setattr(new, name, value)
    return new


def _describe(site: _Site) -> str:
    old, new = site.node, site.new
    if site.operator == "if":  # the whole statement would include its block
        old, new = old.test, new.test
    if site.operator == "return":
        return f"line {old.lineno}: `{_short(old)}` -> `return changed({_short(old.value)})`"
    return f"line {site.node.lineno}: `{_short(old)}` -> `{_short(new)}`"


def _short(node: ast.AST, width: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True)
class _Span:
    """The target's lines in the module, and how to put other text in their place."""

    head: str  # the module before the target's first line
    tail: str  # the module after the target's last line, from that line's break on
    indent: str
    newline: str

    @classmethod
    def of(cls, source: str, func: ast.FunctionDef | ast.AsyncFunctionDef) -> _Span:
        lines = _LINE.findall(source)
        start = min([d.lineno for d in func.decorator_list] + [func.lineno])
        end = func.end_lineno
        first, last = _EOL.search(lines[start - 1]), _EOL.search(lines[end - 1])
        return cls(
            head="".join(lines[: start - 1]),
            tail=(last.group() if last else "") + "".join(lines[end:]),
            indent=re.match(r"[ \t\f]*", lines[start - 1]).group(),
            newline=first.group() if first else "\n",
        )

    def splice(self, text: str) -> str:
        # Rows that start inside a string literal (a multi-line docstring) keep
        # their text exactly: indenting them would change the string.
        in_string: set[int] = set()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            in_string.update(range(tok.start[0] + 1, tok.end[0] + 1))
        rows = [
            row if i in in_string or not row else self.indent + row
            for i, row in enumerate(text.split("\n"), start=1)
        ]
        return self.head + self.newline.join(rows) + self.tail


def _compiles(source: str) -> bool:
    # A mutant such as `x is not 1` compiles with a SyntaxWarning; ignoring it
    # keeps the output quiet and stops a "warnings as errors" filter from
    # turning it into a SyntaxError.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(source, "<mutant>", "exec", dont_inherit=True)
        except SyntaxError:
            return False
    return True


def mutants(source: str, qualname: str, limit: int = 40, seed: int = 0) -> list[Mutant]:
    """Up to `limit` mutants of the function `qualname` in the module `source`, sorted by site index.

    With more sites than `limit`, sites are taken in a seeded random order, so
    the choice is deterministic and spreads over the whole function; a mutant
    that unparses to the original or fails to compile is dropped and the next
    site in that order takes its place. Raises KeyError if there is no such
    function, SyntaxError if `source` does not parse.
    """
    func = find_function(ast.parse(source), qualname)
    sites = [site for stmt in _body(func) for site in _sites(stmt)]
    order = list(range(len(sites)))
    if len(sites) > limit:
        random.Random(seed).shuffle(order)
    span = _Span.of(source, func)
    original = ast.unparse(func)
    found: list[Mutant] = []
    for index in order:
        if len(found) == limit:
            break
        site = sites[index]
        # deepcopy returns what its memo holds for an object it meets: this
        # swaps in the one mutated node and leaves the parsed tree untouched.
        text = ast.unparse(copy.deepcopy(func, {id(site.node): site.new}))
        if text == original:
            continue
        mutated = span.splice(text)
        if _compiles(mutated):
            found.append(Mutant(index, site.operator, site.node.lineno, _describe(site), mutated))
    return sorted(found, key=lambda m: m.index)
